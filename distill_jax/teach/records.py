"""The records a teacher is asked about: `--input` (any layout the generic reader takes) or,
without it, the dataset's own split files; and the JSON Lines files teach writes."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from distill_jax.data import generic, sources
from distill_jax.data.json_records import SyntaxProblem, read_utf8, scan_json, type_name
from distill_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class Record:
    """One input; `label` (gold) and `rationale` (usable as a shot) when the record has them."""

    input: str
    label: str | None = None
    rationale: str | None = None


def _check(value: Any) -> Record | str:
    if not isinstance(value, dict):
        return f"the record is a JSON {type_name(value)}, expected an object with 'input'"
    fields = {}
    for name in ("input", "label", "rationale"):
        text = value.get(name)
        if text is None and name != "input":
            continue
        if not isinstance(text, str):
            got = "nothing" if text is None else f"a JSON {type_name(text)}"
            return f"field '{name}' must be a string, got {got}"
        if not text.strip():
            return f"field '{name}' is empty"
        fields[name] = text
    return Record(**fields)


def read_records(path: str | Path) -> list[Record]:
    """Records of a JSON array, JSON Lines or concatenated objects file; UserError naming the
    file, line and field of the first bad one."""
    path = Path(path)
    records = []
    for item in scan_json(read_utf8(path)):
        if isinstance(item, SyntaxProblem):
            raise UserError(f"{path}, line {item.line}: {item.message}")
        checked = _check(item.value)
        if isinstance(checked, str):
            raise UserError(f"{path}, line {item.line} (record {len(records) + 1}): {checked}")
        records.append(checked)
    if not records:
        raise UserError(f"{path}: no records (expected objects with a field 'input')")
    return records


def dataset_records(data_cfg: Any, split: str) -> tuple[list[Record], str]:
    """(records, where they came from) of `data.name`'s `split` when --input is omitted."""
    if data_cfg.name == "generic":
        path = generic.generic_paths(data_cfg, check=False)[split]
        if path is None:
            raise UserError(f"generic data has no {split} file: set data.{split}_file or --input")
        return read_records(path), str(path)
    rows = sources.gold_rows(data_cfg, split)
    where = f"{Path(data_cfg.dir) / data_cfg.name} ({split})"
    return [Record(r["input"], r["label"]) for r in rows], where
