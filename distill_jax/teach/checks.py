"""Validation of the `config.teacher` block: one function, every problem named by its field."""

from __future__ import annotations

from typing import Any

from distill_jax.errors import UserError

BACKENDS = ("openai", "hf", "batch_export", "batch_import")
APIS = ("chat", "completions")
FILTERS = ("parsed", "gold", "majority", "none")
SPLITS = ("train", "valid", "test")


def _field(name: str, value: Any, why: str) -> UserError:
    return UserError(f"config field teacher.{name}={value!r}: {why}")


def validate_teacher_config(t: Any) -> None:
    """Raises UserError naming the first impossible `config.teacher` field."""
    if t.backend not in BACKENDS:
        raise _field("backend", t.backend, f"use one of {', '.join(map(repr, BACKENDS))}")
    if t.api not in APIS:
        raise _field("api", t.api, "use 'chat' or 'completions'")
    if t.filter not in FILTERS:
        raise _field("filter", t.filter, f"use one of {', '.join(map(repr, FILTERS))}")
    if t.split not in SPLITS:
        raise _field("split", t.split, "use 'train', 'valid' or 'test'")
    if not str(t.model).strip():  # it is part of every cache key (and custom_id)
        hint = "the local model directory" if t.backend == "hf" else "the name the server serves"
        raise _field("model", t.model, f"set it to {hint}")
    if t.backend == "openai" and not str(t.base_url).startswith(("http://", "https://")):
        raise _field("base_url", t.base_url, "must start with http:// or https://")
    if not str(t.api_key_env).strip():
        raise _field("api_key_env", t.api_key_env, "name an environment variable")
    for name in ("num_samples", "concurrency", "max_tokens"):
        if int(t[name]) < 1:
            raise _field(name, t[name], "must be at least 1")
    for name in ("num_shots", "max_retries"):
        if int(t[name]) < 0:
            raise _field(name, t[name], "must be >= 0")
    if float(t.timeout_s) <= 0:
        raise _field("timeout_s", t.timeout_s, "must be positive")
    if float(t.backoff_s) < 0 or float(t.backoff_max_s) < float(t.backoff_s):
        raise _field("backoff_s", t.backoff_s, "must be >= 0 and <= teacher.backoff_max_s")
    if not 0.0 <= float(t.temperature) <= 2.0:
        raise _field("temperature", t.temperature, "must lie in [0, 2]")
    if t.filter == "majority" and int(t.num_samples) < 2:
        raise _field("filter", t.filter, "needs teacher.num_samples >= 2 to vote")
