"""Reading JSON record files with line numbers: a JSON array, JSON Lines, or JSON objects one
after another (pretty-printed, as the healthcare fork's generic files are).

Every value comes with the line it starts on (`file, line N` in messages). `scan_json` returns
syntax errors, not raises them, so `iter_records` can fail on the first or skip it: the scanner
resumes at the next line starting with `{`, where the next record starts in all three layouts.
"""

from __future__ import annotations

import bisect
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from distill_jax.errors import UserError

_DECODER = json.JSONDecoder()
_WHITESPACE = re.compile(r"[ \t\n\r]*")
_NEXT_RECORD = re.compile(r"\n[ \t\r]*\{")  # a line starting (after blanks) with '{'


def read_utf8(path: Path) -> str:
    """The file's text; UserError naming the file and line if it is missing or not UTF-8."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read the file ({e.strerror})") from None
    try:
        return data.decode("utf-8-sig")  # a leading byte-order mark is harmless; drop it
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise UserError(
            f"{path}, line {line}: not valid UTF-8 (byte 0x{data[e.start]:02x} at offset "
            f"{e.start}); save the file as UTF-8"
        ) from None


def _decode(text: str, pos: int) -> tuple[Any, int] | json.JSONDecodeError:
    try:
        return _DECODER.raw_decode(text, pos)
    except json.JSONDecodeError as e:
        return e
    except RecursionError:  # absurdly deep nesting
        return json.JSONDecodeError("nesting too deep", text, pos)


def scan_json(text: str) -> Iterator[tuple[int, Any, str | None]]:
    """(line, value, None) for each top-level value of `text` in order, (line, None, problem)
    for each syntax problem: the elements of a JSON array (`[` first), else a stream of values
    separated by whitespace."""
    newlines = [m.start() for m in re.finditer("\n", text)]
    line_of = lambda pos: bisect.bisect_left(newlines, pos) + 1
    skip_ws = lambda pos: _WHITESPACE.match(text, pos).end()

    def resync(start: int) -> int | None:  # where the record after a syntax error starts
        match = _NEXT_RECORD.search(text, start)
        return None if match is None else match.end() - 1

    pos = skip_ws(0)
    in_array = text.startswith("[", pos)
    if in_array:
        pos = skip_ws(pos + 1)
        if text.startswith("]", pos):  # an empty array
            pos = skip_ws(pos + 1)
            in_array = False
    while pos < len(text):
        result = _decode(text, pos)
        if isinstance(result, json.JSONDecodeError):
            nxt = resync(pos)
            # json's messages read "Expecting ',' delimiter" or "Unterminated string starting at".
            where = f"column {result.colno}"
            if not result.msg.endswith(" at"):
                where = f"({where})"
            problem = f"invalid JSON: {result.msg} {where}"
            if nxt is None and (not in_array or not text.rstrip().endswith("]")):
                problem += " (the file ends inside this record: is it truncated?)"
            yield line_of(result.pos), None, problem
        else:
            value, end = result
            yield line_of(pos), value, None
            pos = skip_ws(end)
            if not in_array:
                continue
            if text.startswith(",", pos):
                pos = skip_ws(pos + 1)
                continue
            if text.startswith("]", pos):
                pos = skip_ws(pos + 1)
                if pos < len(text):
                    yield line_of(pos), None, "extra data after the JSON array"
                break
            if pos >= len(text):
                problem = "the JSON array is not closed with ']' (is the file truncated?)"
            else:
                problem = "expected ',' or ']' after a record in the JSON array"
            yield line_of(pos), None, problem
            nxt = resync(pos)
        if nxt is None:
            break
        pos = nxt


def iter_records(
    path: Path,
    check: Callable[[Any], Any] | None = None,
    hint: str = "",
    skipped: list[str] | None = None,
) -> Iterator[tuple[int, int, Any]]:
    """(line, record number, record) of each top-level value of `path`: the value, or what
    `check` makes of it. A syntax problem, or a bad value (`check` returns what is wrong, a str),
    is a UserError `{path}, line N[ (record K)]: ...{hint}` or, given `skipped`, appended to it."""
    number = 0
    for line, value, syntax in scan_json(read_utf8(path)):
        if syntax is not None:
            problem = f"{path}, line {line}: {syntax}"
        else:
            number += 1
            record = value if check is None else check(value)
            if check is None or not isinstance(record, str):
                yield line, number, record
                continue
            problem = f"{path}, line {line} (record {number}): {record}"
        if skipped is None:
            raise UserError(problem + hint)
        skipped.append(problem)


def type_name(value: Any) -> str:
    """JSON's name for a Python value's type (for messages)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object" if isinstance(value, dict) else type(value).__name__
