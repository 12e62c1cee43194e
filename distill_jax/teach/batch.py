"""OpenAI Batch JSONL files, for jobs too large to run online.

`batch_export` writes `<workdir>/teacher/batch_requests.jsonl`, a line `{"custom_id": <cache
key>, "method": "POST", "url": "/v1/chat/completions", "body": {...}}` per answer not yet cached
(what `vllm run-batch` and hosted batch APIs take), and the records to `batch_inputs.jsonl`.
`batch_import --input=<results.jsonl>` caches each result (`{"custom_id", "response":
{"status_code", "body"}, "error"}`) under its custom_id; the run goes on with those records.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from distill_jax.data.json_records import iter_records
from distill_jax.errors import UserError
from distill_jax.files import write_jsonl
from distill_jax.teach.backends import ENDPOINTS, Answer, Request, completion_answer, request_body
from distill_jax.teach.records import INPUTS_FILE, Record

REQUESTS_FILE = "batch_requests.jsonl"


def export(teacher_dir: Path, t: Any, records: list[Record], requests: list[Request]) -> Path:
    """Writes the Batch requests and the records they came from; returns the requests file."""
    url = "/v1" + ENDPOINTS[t.api]
    out = teacher_dir / REQUESTS_FILE
    lines = [
        {"custom_id": r.key, "method": "POST", "url": url, "body": request_body(t, r.prompt)}
        for r in requests
    ]
    write_jsonl(out, lines)
    write_jsonl(teacher_dir / INPUTS_FILE, map(dataclasses.asdict, records))
    return out


def read_results(path: str | Path, api: str) -> list[Answer]:
    """One Answer per result line (`error` set for a failed request); UserError naming the
    file and line of a line that is not a Batch result."""
    path = Path(path)
    answers = []
    for line, _, row in iter_records(path):
        key = row.get("custom_id") if isinstance(row, dict) else None
        if not isinstance(key, str):
            raise UserError(f"{path}, line {line}: not a Batch result (no 'custom_id')")
        resp = row.get("response") or {}
        status = resp.get("status_code")
        if status == 200:
            try:
                answers.append(completion_answer(key, api, resp.get("body")))
            except ValueError as e:
                raise UserError(f"{path}, line {line}: {e}") from None
        else:
            err = row.get("error") or (resp.get("body") or {}).get("error") or {}
            msg = err.get("message", err) if isinstance(err, dict) else err
            answers.append(Answer(key, None, error=f"{status or 'batch'} {msg}".strip()))
    return answers
