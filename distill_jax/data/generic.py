"""The `generic` dataset: `{"input", "label", "rationale"}` records, as the healthcare fork of the
reference (`distillm`) defines them.

A file may be a JSON array, JSON Lines, or JSON objects one after another (the fork's own files
are pretty-printed objects back to back). The three fields must be non-empty strings; an
optional `llm_label` (the teacher's answer, as `--mode=teach` writes it) is kept, on every
record of a file or on none; other fields are ignored. A malformed record is a UserError naming
the file, line and field or, with `skip_bad_records`, skipped and counted in a warning.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from absl import logging

from distill_jax.data.json_records import iter_records, type_name
from distill_jax.errors import UserError

FIELDS = ("input", "label", "rationale")
OPTIONAL = ("llm_label",)  # the teacher's label, where the records carry it


def check_record(
    value: Any, required: tuple[str, ...] = FIELDS, optional: tuple[str, ...] = OPTIONAL
) -> dict[str, str] | str:
    """The record of `value`'s `required` and (where present) `optional` fields, each a
    non-empty string, or what is wrong with it."""
    if not isinstance(value, dict):
        want = f"the fields {', '.join(required)}" if len(required) > 1 else f"'{required[0]}'"
        return f"the record is a JSON {type_name(value)}, expected an object with {want}"
    record = {}
    for field in required + optional:
        if field not in value:
            if field in optional:
                continue
            return f"missing field '{field}'"
        text = value[field]
        if not isinstance(text, str):
            hint = ' (write numbers as text, e.g. "5")' if type_name(text) == "number" else ""
            return f"field '{field}' must be a string, got a JSON {type_name(text)}{hint}"
        if not text.strip():
            return f"field '{field}' is empty"
        record[field] = text
    return record


def read_generic_file(path: str | Path, skip_bad_records: bool = False) -> tuple[list[dict], int]:
    """Records of one generic file and the number of bad records skipped; UserError for a
    missing or non-UTF-8 file, one without valid records, and (unless `skip_bad_records`)
    the first bad record: invalid JSON, not an object, a missing, non-string or empty field."""
    path = Path(path)
    records: list[dict] = []
    problems: list[str] = []
    first: dict[bool, tuple[int, int]] = {}  # has llm_label -> (line, record) of the first
    hint = " (set data.skip_bad_records=True to skip bad records)"
    skipped = problems if skip_bad_records else None
    for line, number, record in iter_records(path, check_record, hint, skipped):
        records.append(record)
        first.setdefault("llm_label" in record, (line, number))
    if len(first) == 2:
        (line, record), (with_line, with_record) = first[False], first[True]
        raise UserError(
            f"{path}, line {line} (record {record}): no field 'llm_label', but record "
            f"{with_record} (line {with_line}) has one: give every record of the file the "
            "teacher's label in 'llm_label' (as --mode=teach writes them), or none"
        )
    if problems:
        logging.warning(
            "%s: skipped %d bad record(s); the first: %s", path, len(problems), problems[0]
        )
    if not records:
        raise UserError(
            f"{path}: no valid records (expected objects with fields {', '.join(FIELDS)})"
        )
    return records, len(problems)


def generic_paths(data_cfg: Any, check: bool = True) -> dict[str, Path | None]:
    """Files per split: `data.<split>_file`, else `<data.dir>/generic/generic_<split>.json`;
    the default valid file only if it exists and no custom train file is set (custom data is
    never mixed with the default's), else None (split 10% off). `check`: missing is an error."""
    default_dir = Path(data_cfg.dir) / "generic"
    paths: dict[str, Path | None] = {}
    for split in ("train", "test", "valid"):
        path = default_dir / f"generic_{split}.json"
        if custom := getattr(data_cfg, f"{split}_file"):
            path = Path(custom)
        elif split == "valid" and (data_cfg.train_file or not path.exists()):
            path = None
        paths[split] = path
        if check and path is not None and not path.is_file():
            raise UserError(
                f"{path}: {split} file not found. Put the generic records (objects with fields "
                f"{', '.join(FIELDS)}) there or set data.{split}_file to their path."
            )
    return paths
