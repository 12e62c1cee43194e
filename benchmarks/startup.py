"""Start-up time of a large run: fresh start and resume to the first train step, with and
without the token-id cache (`distill_jax/data/token_cache.py`).

    python benchmarks/startup.py --records 550000      # e-SNLI's size (the issue's case)

Writes synthetic generic records shaped like e-SNLI (premise </s> hypothesis, a one-word
label, a one-sentence rationale) and a SentencePiece vocabulary trained on a sample of them
(standing in for a pretrained model's tokenizer, so no run trains one), then runs launch.py
(configs/generic.py, t5-v1_1-tiny from scratch, CPU) four times in one workdir:

1. fresh: prepares the records, tokenizes the training split (writing the token cache),
   compiles (writing `<workdir>/compile_cache`), step 1;
2. resume, both caches hit: restores step 1, memory-maps the cached ids, loads the compiled
   step, step 2;
3. resume, compile cache removed: as 2 but compiles the train step again, step 3;
4. resume, token cache removed: restores step 3, re-tokenizes every record (what every start
   did before the cache; this run also writes the cache again), step 4.

Each row is the wall time from starting the process to its first train row in metrics.jsonl
(log_every=1), and the seconds the log shows between the prepared records being opened and
the packed-row report (reading + tokenizing, or the cache hit). Evaluation is capped at 8
examples so the runs end quickly after their step.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LABELS = ("entailment", "neutral", "contradiction")


def synthetic_records(n: int, seed: int) -> list[dict[str, str]]:
    """e-SNLI-shaped records: ~14 + 8 word premise/hypothesis, label, ~16-word rationale."""
    rng = np.random.default_rng(seed)
    # 3000 letter-only words (digits would be split one per token), Zipf-like frequencies.
    letters = np.array(list("abcdefghijklmnoprstuvy"))
    spell = np.random.default_rng(99).integers(0, len(letters), size=(3000, 7))
    sizes = np.random.default_rng(98).integers(2, 8, size=3000)
    words = np.array(["".join(letters[s[:k]]) for s, k in zip(spell, sizes, strict=True)])
    p = 1.0 / np.arange(1, len(words) + 1)
    lengths = rng.integers([8, 4, 8], [20, 12, 24], size=(n, 3))  # premise, hypothesis, rationale
    drawn = words[rng.choice(len(words), int(lengths.sum()), p=p / p.sum())].tolist()
    labels = rng.integers(0, 3, size=n)
    out, pos = [], 0
    for i in range(n):
        prem, hyp, rat = (lengths[i, j] for j in range(3))
        texts = []
        for k in (prem, hyp, rat):
            texts.append(" ".join(drawn[pos : pos + k]))
            pos += k
        out.append(
            {
                "input": f"{texts[0]} </s> {texts[1]}",
                "label": LABELS[labels[i]],
                "rationale": texts[2],
            }
        )
    return out


def write_jsonl(path: pathlib.Path, records) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


def run(flags: list[str], workdir: pathlib.Path, after_step: int, log: pathlib.Path) -> dict:
    """Runs launch.py; seconds to the first train row after `after_step` and in total."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    env.pop("JAX_COMPILATION_CACHE_DIR", None)  # so the run uses <workdir>/compile_cache
    metrics = workdir / "metrics.jsonl"
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "launch.py"), *flags], cwd=ROOT, env=env, stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        first = None
        while proc.poll() is None:
            if first is None and _train_steps(metrics, after_step):
                first = time.perf_counter() - start
            time.sleep(0.05)
    total = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"launch.py exited {proc.returncode}; see {log}")
    if first is None:
        first = total
    return {"first_step_s": first, "total_s": total, "tokens_s": _tokenize_seconds(log)}


def _train_steps(metrics: pathlib.Path, after_step: int) -> bool:
    if not metrics.exists():
        return False
    for line in metrics.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "loss" in row and "split" not in row and row["step"] > after_step:
            return True
    return False


_STAMP = re.compile(r"^I\d{4} (\d\d):(\d\d):(\d\d\.\d+)")


def _tokenize_seconds(log: pathlib.Path) -> float | None:
    """Log time from the tokenizer being loaded ('model:' line) to the packed-row report."""
    times = {}
    for line in log.read_text().splitlines():
        m = _STAMP.match(line)
        if not m:
            continue
        t = int(m[1]) * 3600 + int(m[2]) * 60 + float(m[3])
        if "model: T5Config" in line:
            times["model"] = t
        elif "Packed train batches:" in line:
            times["packed"] = t
    if {"model", "packed"} <= set(times):
        return (times["packed"] - times["model"]) % 86400  # a run across midnight
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=550_000, help="training records")
    parser.add_argument("--dir", default="", help="scratch directory (default: a temp dir)")
    args = parser.parse_args()
    from distill_jax.tokenizer import Tokenizer

    root = pathlib.Path(args.dir or tempfile.mkdtemp(prefix="startup_bench_"))
    data = root / "data" / "generic"
    t0 = time.perf_counter()
    train = synthetic_records(args.records, 0)
    write_jsonl(data / "generic_train.json", train)
    for split, seed in (("valid", 1), ("test", 2)):
        write_jsonl(data / f"generic_{split}.json", synthetic_records(1000, seed))
    workdir = root / "work"
    shutil.rmtree(workdir, ignore_errors=True)
    sample = [r[k] for r in train[:20_000] for k in ("input", "label", "rationale")]
    Tokenizer.train(sample, 2000, workdir / "tokenizer")  # the "pretrained" vocabulary
    print(f"wrote {args.records} records and a vocabulary in {time.perf_counter() - t0:.0f}s")

    base = [
        "--config=configs/generic.py",
        f"--workdir={workdir}",
        f"--config.data.dir={root / 'data'}",
        "--config.data.max_input_length=128",
        "--config.data.max_target_length=64",
        "--config.train.batch_size=32",
        "--config.train.log_every=1",
        "--config.train.eval_steps=1000",
        "--config.checkpoint.every_steps=1",
        "--config.checkpoint.async_save=False",
        "--config.eval.max_examples=8",
        "--config.eval.gen_max_len=4",
        "--config.logging.tensorboard=False",
        "--config.logging.progress_bar=False",
    ]
    rows = []
    for i, (name, steps, after) in enumerate(
        (
            ("fresh (prepare + tokenize + write both caches)", 1, 0),
            ("resume, token and compile caches hit", 2, 1),
            ("resume, compile cache removed (compile again)", 3, 2),
            ("resume, token cache removed (re-tokenize, as before)", 4, 3),
        )
    ):
        if "compile cache removed" in name:
            shutil.rmtree(workdir / "compile_cache")
        if "token cache removed" in name:
            for tokens in (workdir / "prepared").glob("*/tokens"):
                shutil.rmtree(tokens)
        log = root / f"run{i + 1}.log"
        result = run([*base, f"--config.train.max_steps={steps}"], workdir, after, log)
        rows.append((name, result))
        print(f"{name}: {result}", flush=True)
    print(f"\n{args.records} records, t5-v1_1-tiny, CPU\n")
    print("| run | to first step (s) | tokenizer loaded -> rows packed (s) | whole run (s) |")
    print("|---|---|---|---|")
    for name, r in rows:
        tok = "n/a" if r["tokens_s"] is None else f"{r['tokens_s']:.1f}"
        print(f"| {name} | {r['first_step_s']:.1f} | {tok} | {r['total_s']:.1f} |")


if __name__ == "__main__":
    main()
