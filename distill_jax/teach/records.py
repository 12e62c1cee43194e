"""The records a teacher is asked about: `--input` (any layout the generic reader takes), the
dataset's own split files, or those a batch export saved."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from distill_jax.data import generic, sources
from distill_jax.data.json_records import iter_records
from distill_jax.errors import UserError

INPUTS_FILE = "batch_inputs.jsonl"  # the records of a batch export, read again by its import


@dataclasses.dataclass(frozen=True)
class Record:
    """One input; `label` (gold) and `rationale` (usable as a shot) when the record has them."""

    input: str
    label: str | None = None
    rationale: str | None = None


def _check(value: Any) -> Record | str:
    if isinstance(value, dict):  # batch_inputs.jsonl holds a record's missing fields as null
        value = {k: v for k, v in value.items() if v is not None}
        if "input" not in value:
            return "field 'input' must be a string, got nothing"
    checked = generic.check_record(value, ("input",), ("label", "rationale"))
    return checked if isinstance(checked, str) else Record(**checked)


def read_records(path: str | Path) -> list[Record]:
    """Records of a JSON array, JSON Lines or concatenated objects file; UserError naming the
    file, line and field of the first bad one."""
    path = Path(path)
    records = [r for _, _, r in iter_records(path, _check)]
    if not records:
        raise UserError(f"{path}: no records (expected objects with a field 'input')")
    return records


def teach_records(config: Any, teacher_dir: Path, input_path: str) -> tuple[list[Record], str]:
    """(records, where they came from): the batch export's for `batch_import`, else --input,
    else the `teacher.split` of `data.name`."""
    data, split = config.data, config.teacher.split
    if config.teacher.backend == "batch_import":
        if not input_path:
            raise UserError("teacher.backend=batch_import needs --input=<batch results.jsonl>")
        path = teacher_dir / INPUTS_FILE
        if not path.is_file():
            raise UserError(
                f"{path}: not found; run teacher.backend=batch_export with the same --workdir first"
            )
        return read_records(path), str(path)
    if input_path:
        return read_records(input_path), input_path
    if data.name == "generic":
        path = generic.generic_paths(data, check=False)[split]
        if path is None:
            raise UserError(f"generic data has no {split} file: set data.{split}_file or --input")
        return read_records(path), str(path)
    rows = sources.gold_rows(data, split)
    return [Record(r["input"], r["label"]) for r in rows], f"{Path(data.dir) / data.name} ({split})"
