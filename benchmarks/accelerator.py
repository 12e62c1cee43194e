"""One command for a GPU or TPU machine: how fast, how close to the chip, and how much faster
than the PyTorch reference on the same device. About 8 minutes on one H100/H200.

    python benchmarks/accelerator.py --out accelerator.json             # the full run
    python benchmarks/accelerator.py --smoke --out /tmp/smoke.json      # tiny preset, CPU, seconds

Sections (each runs the existing scripts' `main()`: benchmarks/train_step.py and
benchmarks/decode.py, so there is one code path for every figure):

1. Train step, bf16 compute, CQA-like lengths packed as training packs them (task_prefix: a
   `predict:` and an `explain:` pair per example), scan_layers, for t5-v1_1-base and
   t5-v1_1-large with the remat policy benchmarks/memory_plan.md picks for them (base: none,
   large: minimal), at batch 64 and at the largest batch that fits. The largest batch is
   extrapolated from the batch-64 compile (XLA's memory analysis: temporaries assumed to grow
   in proportion to the batch, which errs on the small side) to 90% of the device's memory
   limit, rounded down to a multiple of 32, at most --max_batch. Reported: median step time,
   non-padding tokens/s, examples/s, MFU, HFU, XLA's planned peak (arguments + outputs +
   temporaries) and the device's peak_bytes_in_use (a process-wide high-water mark, so it only
   grows from row to row).
   MFU = model FLOPs / step time / bf16 peak (distill_jax.train.perf.PEAK_FLOPS), where model
   FLOPs = 6 * N * tokens (N: the matmul parameters a token passes through, counted per
   non-padding encoder/decoder token: `train_step.analytic_train_flops`) plus attention,
   12 * q_len * k_len * heads * d_kv per layer and packed row (QK^T and AV, forward and
   backward, full squares: `train_step.attention_train_flops`). HFU uses the FLOPs of XLA's
   cost analysis of the compiled step instead.
   With `--attention xla,dot_product` (the default) the base batch-64 step also runs with
   `model.attention='dot_product'` (cuDNN flash attention where it applies).
2. The PyTorch reference step (transformers T5ForConditionalGeneration with the same random
   weights, same examples padded per task as its collator does, bf16 autocast, fused AdamW) at
   batch 64 for both presets, and the ratio ours / reference.
3. Greedy decoding, t5-v1_1-base, batch 256, 64 new tokens, CQA-like inputs: ours (KV cache,
   one while_loop) against HF `generate` on the same weights, inputs and device.

Needs: jax with the accelerator's plugin (jax[cuda12] or jax[tpu]), flax, optax, transformers,
torch (CUDA build for the reference on GPU), sentencepiece, numpy, and ml_collections (pure
Python; configs/base.py holds the optimizer defaults), plus what those pull in (safetensors,
tqdm, absl). Not grain, TFDS or tensorboard: tests/test_benchmarks.py runs `--smoke` with those
imports blocked. Nothing is downloaded: weights are random, data synthetic.
Writes one JSON file (--out) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

# JAX would otherwise take 75% of GPU memory at start and leave too little for torch.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402

from benchmarks import common, decode, train_step  # noqa: E402

GIB = 2**30
FIT_FRACTION = 0.9
# (preset, remat) as benchmarks/memory_plan.md picks them.
FULL_PRESETS = [("t5-v1_1-base", "none"), ("t5-v1_1-large", "minimal")]
SMOKE_LENGTHS = ["--input_len", "20,40", "--label_len", "2,4", "--rationale_len", "5,16"]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="accelerator.json", help="the JSON file written")
    p.add_argument("--smoke", action="store_true", help="tiny preset, 1 step: checks the path")
    p.add_argument("--attention", default="xla,dot_product", help="first: all runs; rest: base@64")
    p.add_argument(
        "--presets",
        default=",".join(f"{p}:{r}" for p, r in FULL_PRESETS),
        help="preset:remat pairs of the train rows (not with --smoke)",
    )
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--max_batch", type=int, default=512)
    p.add_argument("--steps", type=int, default=10, help="timed train steps (median)")
    p.add_argument("--decode_batch", type=int, default=256)
    p.add_argument("--decode_len", type=int, default=64)
    return p.parse_args(argv)


def _guarded(name: str, fn):
    """Runs one section; an error (e.g. out of memory) is recorded and the next one runs."""
    t0 = time.perf_counter()
    try:
        res = fn()
    except Exception as e:  # keep the other figures of a scarce GPU session
        traceback.print_exc()
        res = {"error": f"{type(e).__name__}: {e}"[:2000]}
    res["section"], res["wall_s"] = name, round(time.perf_counter() - t0, 1)
    print(f"[{name}] done in {res['wall_s']} s", flush=True)
    return res


def largest_batch(res: dict, batch: int, max_batch: int) -> int | None:
    """The largest multiple of 32 (<= max_batch) whose extrapolated peak fits, from a run at
    `batch`; None where the device reports no memory limit (CPU)."""
    mem = res.get("ours", {}).get("memory")
    try:
        limit = jax.devices()[0].memory_stats()["bytes_limit"]
    except Exception:
        return None
    if not mem or not limit:
        return None
    fixed = mem["planned_peak_bytes"] - mem["temp_size_in_bytes"]
    per_example = mem["temp_size_in_bytes"] / batch
    fit = int((FIT_FRACTION * limit - fixed) // max(per_example, 1.0))
    return min(max_batch, fit // 32 * 32)


def train_runs(args) -> list[dict]:
    """The train-step rows: per preset batch 64 (+ reference) and the largest batch."""
    attentions = args.attention.split(",")
    common_argv = ["--scan_layers", "--steps", str(args.steps), "--warmup", "2"]
    if args.smoke:
        presets = [("t5-v1_1-tiny", "none")]
        common_argv = ["--steps", "1", "--warmup", "1", "--vocab_size", "256", *SMOKE_LENGTHS]
    else:
        presets = [tuple(x.split(":")) for x in args.presets.split(",")]
        if any(len(p) != 2 for p in presets):
            raise SystemExit(f"--presets {args.presets!r}: expected preset:remat[,preset:remat]")
    rows = []
    for preset, remat in presets:
        base = ["--preset", preset, "--remat", remat, "--dtype", "bfloat16", *common_argv]
        if args.smoke:
            base[base.index("bfloat16")] = "float32"  # what dtype='auto' picks on CPU
        argv = [*base, "--batch_size", str(args.batch_size), "--attention", attentions[0]]
        name = f"train {preset} batch {args.batch_size} {attentions[0]}"
        first = _guarded(name, lambda a=argv: train_step.main([*a, "--reference"]))
        rows.append(first)
        if preset == presets[0][0]:
            for att in attentions[1:]:
                a = [*base, "--batch_size", str(args.batch_size), "--attention", att]
                rows.append(_guarded(f"train {preset} batch {args.batch_size} {att}", lambda a=a: (
                    train_step.main(a)
                )))  # fmt: skip
        big = largest_batch(first, args.batch_size, args.max_batch)
        if big is None or big <= args.batch_size:
            why = "no device memory limit (CPU)" if big is None else f"only {big} fits"
            rows.append({"section": f"train {preset} largest batch", "skipped": why})
            continue
        a = [*base, "--batch_size", str(big), "--attention", attentions[0]]
        rows.append(_guarded(f"train {preset} batch {big} {attentions[0]}", lambda a=a: (
            train_step.main(a)
        )))  # fmt: skip
        _free_torch()
    return rows


def decode_run(args) -> dict:
    """Greedy decoding, ours vs HF generate."""
    argv = ["--batch_size", str(args.decode_batch), "--max_len", str(args.decode_len)]
    argv += ["--attention", args.attention.split(",")[0], "--reference", "--steps", "3"]
    if args.smoke:
        argv += ["--preset", "t5-v1_1-tiny", "--input_len", "20,40", "--steps", "1"]
    else:
        argv += ["--preset", "t5-v1_1-base"]
    return _guarded("decode", lambda: decode.main(argv))


def _free_torch() -> None:
    try:
        import gc

        import torch

        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


def _gib(x) -> str:
    return "-" if not x else f"{x / GIB:.1f}"


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def summary(train: list[dict], dec: dict) -> str:
    """The markdown table of the run."""
    rows = []
    for r in train:
        if "ours" not in r:
            rows.append((r["section"], r.get("error") or r.get("skipped"), *["-"] * 7))
            continue
        o, ref = r["ours"], r.get("reference")
        ratio = f"{ref['step_s_median'] / o['step_s_median']:.2f}x" if ref else "-"
        rows.append(
            (
                r["section"],
                f"{o['step_s_median']:.4f}",
                f"{o['tokens_per_s']:.0f}",
                _pct(o.get("mfu_model_with_attention")),
                _pct(o.get("hfu_xla")),
                _gib((o.get("memory") or {}).get("planned_peak_bytes")),
                _gib(o.get("device_peak_bytes")),
                f"{ref['step_s_median']:.4f}" if ref else "-",
                ratio,
            )
        )
    header = [
        "run", "step s", "tokens/s", "MFU (6ND+attn)", "HFU (XLA)", "XLA peak GiB",
        "device peak GiB", "reference step s", "ours vs reference",
    ]  # fmt: skip
    out = [common.table(rows, header)]
    if "ours" in dec:
        o, ref = dec["ours"], dec.get("reference")
        drows = [("ours (JAX)", f"{o['call_s_median']:.3f}", f"{o['tokens_per_s']:.0f}", "-")]
        if ref:
            drows.append(
                (
                    "HF generate",
                    f"{ref['call_s_median']:.3f}",
                    f"{ref['tokens_per_s']:.0f}",
                    f"{100 * ref['same_tokens_fraction']:.1f}%",
                )
            )
        out.append(f"greedy decoding, {dec['preset']}, batch {dec['batch_size']}:")
        out.append(common.table(drows, ["", "call s", "tokens/s", "same tokens as ours"]))
        if ref:
            out.append(f"decoding ours vs HF: {ref['call_s_median'] / o['call_s_median']:.2f}x")
    else:
        out.append(f"decode: {dec.get('error')}")
    return "\n".join(out)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.smoke:
        args.batch_size, args.decode_batch, args.decode_len = 4, 4, 8
    t0 = time.perf_counter()
    print(f"machine: {common.machine()}", flush=True)
    train = train_runs(args)
    dec = decode_run(args)
    res = {
        "machine": common.machine(),
        "backend": jax.default_backend(),
        "device_kind": jax.devices()[0].device_kind,
        "argv": sys.argv[1:] if argv is None else list(argv),
        "smoke": args.smoke,
        "train": train,
        "decode": dec,
        "total_s": round(time.perf_counter() - t0, 1),
    }
    table = summary(train, dec)
    res["table"] = table
    print(table)
    print(f"total {res['total_s']} s")
    out = Path(args.out)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(res, indent=1, default=str) + "\n")
    tmp.replace(out)  # never a half-written file
    print(f"wrote {out}")
    return res


if __name__ == "__main__":
    main()
