"""`--mode=teach` end to end: records, prompts, cached answers, decisions, OUT and the summary.

OUT and rejected.jsonl are written whole, at the end; after a crash the cache holds every answer
that had arrived, so the rerun asks only for the rest.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

import ml_collections
from absl import logging
from tqdm import tqdm

from distill_jax import config_check
from distill_jax.errors import UserError
from distill_jax.files import atomic_write, write_jsonl
from distill_jax.teach import answers, backends, batch, cache, prompts
from distill_jax.teach.records import Record, teach_records

TEACHER_DIR = "teacher"


def _shots_for(records: list[Record], t, builtin: tuple) -> list[list[prompts.Shot] | tuple]:
    """The shots of each record's prompt: built-in, or `num_shots` records with a rationale
    (never the record itself)."""
    n = int(t.num_shots)
    if n == 0:
        return [builtin] * len(records)
    pool = [(i, r) for i, r in enumerate(records) if r.rationale and r.label][: n + 1]
    if len(pool) < n:
        raise UserError(
            f"config field teacher.num_shots={n}: the input has only {len(pool)} record(s) "
            "with both a 'label' and a 'rationale' to use as shots"
        )
    shots = [(j, prompts.Shot(r.input, r.rationale, r.label)) for j, r in pool]
    return [[s for j, s in shots if j != i][:n] for i in range(len(records))]


def _plan(config, records: list[Record]) -> tuple[list[list[str]], dict[str, str]]:
    """(cache keys per record, one per sample; prompt per key)."""
    t = config.teacher
    unlabeled = [k for k, r in enumerate(records, 1) if not r.label]
    if t.rationalize and unlabeled:
        raise UserError(
            f"config field teacher.rationalize=True needs a gold label: input record "
            f"{unlabeled[0]} has no 'label'"
        )
    prompter, builtin = prompts.make_prompter(config.data.name, t.prompt_file, bool(t.rationalize))
    if int(t.num_samples) > 1 and float(t.temperature) == 0:
        logging.warning(
            "teacher.num_samples=%d with teacher.temperature=0: greedy samples are identical, "
            "so the vote decides nothing; set a temperature above 0",
            int(t.num_samples),
        )
    keys, prompt_of = [], {}
    for r, shots in zip(records, _shots_for(records, t, builtin), strict=True):
        prompt = prompter.render(r.input, r.label, shots)
        row = [cache.request_key(t, prompt, prompter.version, s) for s in range(int(t.num_samples))]
        prompt_of.update(dict.fromkeys(row, prompt))
        keys.append(row)
    return keys, prompt_of


def _ask(config, store: cache.AnswerCache, missing: list[backends.Request], input_path: str):
    """Fills the cache with the missing answers; returns (errors by key, stats)."""
    t = config.teacher
    errors: dict[str, str] = {}
    stats = collections.Counter()

    def on_answer(a: backends.Answer) -> None:
        if a.text is None:
            errors[a.key] = a.error or "no answer"
            stats["failed"] += 1
        else:
            store.put(a.key, a.text, a.prompt_tokens, a.completion_tokens)
            errors.pop(a.key, None)
            stats["answered"] += 1
            stats["prompt_tokens"] += a.prompt_tokens
            stats["completion_tokens"] += a.completion_tokens
        bar.update(1)
        bar.set_postfix(answered=stats["answered"], cached=len(store), failed=stats["failed"])

    with tqdm(
        total=len(missing),
        desc="teacher",
        unit="req",
        disable=not config.logging.progress_bar,
        dynamic_ncols=True,
    ) as bar:
        if t.backend == "batch_import":
            wanted = {r.key for r in missing}
            for a in batch.read_results(input_path, t.api):
                if a.key in wanted:
                    on_answer(a)
                else:
                    stats["unknown_custom_ids"] += 1
            for key in wanted - set(errors) - {k for k in wanted if k in store}:
                errors[key] = f"no result for this custom_id in {input_path}"
            if stats["unknown_custom_ids"]:
                logging.warning(
                    "%s: %d result(s) with a custom_id this run does not ask for: import with "
                    "the teacher settings (model, prompt, sampling) of the export",
                    input_path,
                    stats["unknown_custom_ids"],
                )
        elif missing:
            # The key lives only in this process's memory and in the Authorization header.
            key = os.environ.get(str(t.api_key_env)) or None
            backend = backends.HFBackend(t) if t.backend == "hf" else backends.OpenAIBackend(t, key)
            backend.run(missing, on_answer)
            stats["attempts"] = backend.attempts
    return errors, stats


def run_teach(
    config: ml_collections.ConfigDict, workdir: Path, input_path: str, output_path: str
) -> dict[str, Any]:
    """Runs the teacher over the records and writes OUT; returns the summary."""
    start = time.time()
    t = config.teacher
    config_check.validate_teacher(t)
    config_check.check_dataset(config.data.name)
    if t.backend != "batch_export" and not output_path:
        raise UserError("--mode=teach needs --output=FILE (JSON Lines of the kept records)")
    teacher_dir = Path(workdir) / TEACHER_DIR  # made by AnswerCache
    records, source = teach_records(config, teacher_dir, input_path)
    keys, prompt_of = _plan(config, records)
    with contextlib.closing(cache.AnswerCache(teacher_dir / "cache.jsonl")) as store:
        cached = sum(k in store for k in prompt_of)
        missing = [backends.Request(k, p) for k, p in prompt_of.items() if k not in store]
        if t.backend == "batch_export":
            path = batch.export(teacher_dir, t, records, missing)
            print(f"wrote {len(missing)} requests ({cached} already cached) to {path}")
            return {"exported": len(missing), "cached": cached, "requests_file": str(path)}
        errors, stats = _ask(config, store, missing, input_path)
        if t.backend == "openai" and missing and not stats["answered"] and not cached:
            last = next(reversed(errors.values()), "no answer")  # a server that only fails
            raise UserError(
                f"teacher at {t.base_url} answered none of {len(missing)} request(s): "
                f"last error: {last}"
            )
        kept, rejected, graded = _decide(config, records, keys, store, errors)
    write_jsonl(Path(output_path), kept)
    write_jsonl(teacher_dir / "rejected.jsonl", rejected)
    summary = _summary(config, records, kept, rejected, graded, keys, store, stats, cached, missing)
    summary.update(input=source, output=str(output_path), wall_time_s=round(time.time() - start, 3))
    atomic_write(teacher_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def _decide(config, records, keys, store, errors):
    """(kept rows, rejected rows, (gold, teacher label) of every answered input with gold)."""
    kept, rejected, graded = [], [], []
    for r, row_keys in zip(records, keys, strict=True):
        base = {"input": r.input} | ({"label": r.label} if r.label else {})
        failed = [k for k in row_keys if store.get(k) is None]
        if failed:
            why = errors.get(failed[0], "no answer (not asked in this run)")
            rejected.append({**base, "reason": f"request_failed: {why}", "text": None})
            continue
        texts = [store.get(k)["text"] for k in row_keys]
        rationale, llm_label, reason = answers.decide(
            config.data.name, texts, r.input, r.label, config.teacher.filter
        )
        if r.label:  # an unparseable answer counts as wrong
            graded.append((r.label, llm_label))
        if reason:
            extra = {"samples": texts} if len(texts) > 1 else {}
            rejected.append({**base, "reason": reason, "text": texts[0], **extra})
            continue
        label = r.label or llm_label  # gold where the input has it
        kept.append(
            {"input": r.input, "label": label, "rationale": rationale, "llm_label": llm_label}
        )
    return kept, rejected, graded


def _summary(config, records, kept, rejected, graded, keys, store, stats, cached, missing):
    t = config.teacher
    used = [store.get(k) for row in keys for k in row if store.get(k) is not None]
    reasons = collections.Counter(row["reason"].split(":")[0] for row in rejected)
    return {
        "backend": t.backend,
        "model": str(t.model),
        "filter": t.filter,
        "num_samples": int(t.num_samples),
        "inputs": len(records),
        "kept": len(kept),
        "rejected": dict(sorted(reasons.items())),
        "inputs_with_gold": sum(bool(r.label) for r in records),
        "teacher_accuracy": answers.accuracy(config.data.name, graded),
        "teacher_accuracy_per_label": answers.per_label_accuracy(config.data.name, graded),
        "requests": {
            "needed": sum(len(row) for row in keys),
            "from_cache": cached,
            "sent": len(missing),
            "answered": stats["answered"],
            "failed": stats["failed"],
            "http_attempts": stats["attempts"],
        },
        "tokens": {
            "prompt": sum(a["prompt_tokens"] for a in used),
            "completion": sum(a["completion_tokens"] for a in used),
            "prompt_this_run": stats["prompt_tokens"],
            "completion_this_run": stats["completion_tokens"],
        },
    }


def format_summary(s: dict[str, Any]) -> str:
    """The printed summary."""
    req, tok = s["requests"], s["tokens"]
    rejected = ", ".join(f"{k} {v}" for k, v in s["rejected"].items()) or "none"
    lines = [
        f"teacher {s['model']} ({s['backend']}, filter={s['filter']}, "
        f"samples={s['num_samples']}): {s['inputs']} inputs, {s['kept']} kept; rejected: "
        f"{rejected}",
        f"requests: {req['needed']} needed, {req['from_cache']} from the cache, {req['sent']} "
        f"sent ({req['answered']} answered, {req['failed']} failed, {req['http_attempts']} "
        f"HTTP attempts); tokens: {tok['prompt']} prompt + {tok['completion']} completion",
    ]
    if s["teacher_accuracy"] is not None:
        lines.append(
            f"teacher accuracy vs gold: {s['teacher_accuracy']:.4f} over "
            f"{s['inputs_with_gold']} inputs with a label"
        )
    for label, acc in (s["teacher_accuracy_per_label"] or {}).items():
        lines.append(f"  {label}: {acc:.4f}")
    lines.append(f"wrote {s['kept']} records to {s['output']} in {s['wall_time_s']:.1f}s")
    return "\n".join(lines)
