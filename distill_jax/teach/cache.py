"""`<workdir>/teacher/cache.jsonl`: every teacher answer, appended and flushed as it arrives.

One JSON object per line: `{"key", "text", "prompt_tokens", "completion_tokens"}`. The key is
a hash of everything the answer depends on (`request_key`), so a rerun after a crash, or with
another filter or output file, asks only for what is missing. A process killed mid-write
leaves at most one torn last line: it is dropped (and cut off the file) when the cache opens.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from distill_jax.errors import UserError
from distill_jax.teach.prompts import STOP

KEY_VERSION = 1  # bump when the key's recipe changes


def request_key(t: Any, prompt: str, prompt_version: str, sample: int) -> str:
    """Hex sha256 of what one answer to `prompt` from teacher settings `t` depends on (also the
    Batch API's custom_id)."""
    payload = {
        "v": KEY_VERSION,
        "model": str(t.model),
        # 'openai' for the HTTP and batch backends (batch files hold the same requests), 'hf'
        "backend": "hf" if t.backend == "hf" else "openai",
        "api": t.api,
        "prompt": prompt,
        "prompt_version": prompt_version,
        "sampling": {
            "temperature": float(t.temperature),
            "max_tokens": int(t.max_tokens),
            "stop": STOP,
        },
        "sample": sample,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


class AnswerCache(dict[str, dict[str, Any]]):
    """Key -> `{key, text, prompt_tokens, completion_tokens}` of every cached answer, and an
    append-only writer for new ones (`put`)."""

    def __init__(self, path: str | os.PathLike):
        super().__init__()
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._load()
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())

    def _load(self) -> None:
        data = self.path.read_bytes() if self.path.exists() else b""
        keep = data.rfind(b"\n") + 1  # a torn write has no newline yet: drop that tail
        lines = data[:keep].split(b"\n")[:-1]
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                self[row["key"]] = row
            except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
                if number < len(lines):  # only the last line can be a torn write
                    raise UserError(
                        f"{self.path}, line {number}: not a cache entry; delete that line (its "
                        "answer is asked again) or the whole file"
                    ) from None
                keep -= len(line) + 1
        if keep < len(data):  # cut the torn tail so that new lines start cleanly
            os.truncate(self.path, keep)

    def put(self, key: str, text: str, prompt_tokens: int = 0, completion_tokens: int = 0) -> None:
        """Stores one answer and flushes it to the file at once."""
        row = {
            "key": key,
            "text": text,
            "prompt_tokens": int(prompt_tokens),
            "completion_tokens": int(completion_tokens),
        }
        self[key] = row
        self._file.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._file.flush()

    def close(self) -> None:
        """Flushes to disk and closes the file."""
        if not self._file.closed:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
