"""Times the compiled train step (optionally side by side with the PyTorch reference step).

Ours: `distill_jax.train.step.jit_train_step` on a sharded TrainState over a mesh of all
local devices, on a packed batch of synthetic CQA-like examples (task_prefix: a `predict:` and
an `explain:` pair per example). Warm-up steps, then the median of `--steps` steps
(each ends with block_until_ready). Prints examples/s, non-padding tokens/s, and on GPU/TPU
the utilisation from XLA's FLOP count (cost_analysis) and from an analytic 6*N*tokens count.

`--reference` also builds the transformers T5ForConditionalGeneration with the same random
weights (converted by distill_jax.model.hf_io) and times the reference's step on the same
examples (two forward passes, each padded to its own longest sequence, loss mix, backward,
clip 1.0, AdamW), then prints both side by side.

    python benchmarks/train_step.py --preset t5-v1_1-small --batch_size 16 --reference
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from benchmarks import common  # noqa: E402
from configs.base import get_base_config  # noqa: E402
from distill_jax import sharding  # noqa: E402
from distill_jax.model.config import T5Config, get_preset  # noqa: E402
from distill_jax.model.t5 import T5  # noqa: E402
from distill_jax.train import perf  # noqa: E402
from distill_jax.train.state import (  # noqa: E402
    abstract_train_state,
    init_train_state,
    learning_rate_schedule,
    make_optimizer,
    state_from_params,
)
from distill_jax.train.step import jit_train_step, mix_losses, token_cross_entropy  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="t5-v1_1-small")
    p.add_argument("--batch_size", type=int, default=16, help="examples per optimizer step")
    p.add_argument("--grad_steps", type=int, default=1, help="micro-batches per step")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    p.add_argument("--optimizer", default="adamw", choices=["adamw", "adafactor"])
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--steps", type=int, default=10, help="timed steps (median reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps after compilation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mesh", default="-1,1,1", help="data,fsdp,tensor device counts")
    p.add_argument("--scan_layers", action="store_true")
    p.add_argument("--remat", default="none", choices=["none", "minimal", "full"])
    p.add_argument("--attention", default="xla", choices=["xla", "dot_product"])
    p.add_argument("--dropout_rate", type=float, default=None, help="default: the preset's")
    p.add_argument(
        "--prng_impl",
        default="threefry2x32",
        choices=["threefry2x32", "rbg", "unsafe_rbg"],
        help="PRNG of the dropout key passed to the step (the trainer uses the default)",
    )
    p.add_argument("--vocab_size", type=int, default=0, help="0 = the preset's (demo: 1152)")
    p.add_argument("--pack_input_length", type=int, default=0, help="0 = automatic")
    p.add_argument("--pack_target_length", type=int, default=0, help="0 = automatic")
    common.add_length_args(p)
    p.add_argument("--reference", action="store_true", help="also time the PyTorch reference")
    p.add_argument("--torch_threads", type=int, default=os.cpu_count())
    p.add_argument(
        "--profile", default="", help="trace one more step of ours into this dir; print op shares"
    )
    p.add_argument("--json", default="", help="append the results as one JSON line here")
    return p.parse_args(argv)


def analytic_train_flops(cfg: T5Config, enc_tokens: int, dec_tokens: int) -> float:
    """6 * (matmul params used per token) * tokens: forward 2, backward 4 FLOPs per MAC.

    Encoder weights see encoder tokens; decoder weights (and the lm head) see decoder tokens,
    except the cross-attention keys/values, which see encoder tokens. Attention score and
    softmax FLOPs are left out (the usual 6*N*D convention).
    """
    d, inner, f, v = cfg.d_model, cfg.num_heads * cfg.d_kv, cfg.d_ff, cfg.vocab_size
    n_ff = 3 if cfg.feed_forward_proj == "gated-gelu" else 2
    enc = cfg.num_encoder_layers * (4 * d * inner + n_ff * d * f) + 2 * cfg.num_decoder_layers * (
        d * inner
    )
    dec = cfg.num_decoder_layers * (6 * d * inner + n_ff * d * f) + d * v
    return 6.0 * (enc * enc_tokens + dec * dec_tokens)


def attention_train_flops(cfg: T5Config, rows: int, enc_len: int, dec_len: int) -> float:
    """Attention score and value FLOPs of a train step over packed rows as they are computed.

    Per layer and row: QK^T and AV are 2 * q_len * k_len * heads * d_kv MACs each way; x2 FLOPs
    per MAC and x3 for forward plus backward: 12 * q_len * k_len * inner. Encoder self (L_enc^2),
    decoder self (L_dec^2, full square: causal halves are not skipped) and cross (L_dec*L_enc).
    """
    inner = cfg.num_heads * cfg.d_kv
    enc = cfg.num_encoder_layers * enc_len * enc_len
    dec = cfg.num_decoder_layers * (dec_len * dec_len + dec_len * enc_len)
    return 12.0 * inner * rows * (enc + dec)


def memory_bytes(compiled) -> dict | None:
    """Arguments, outputs and temporaries of a compiled step (XLA's memory analysis)."""
    try:
        m = compiled.memory_analysis()
    except Exception:
        return None
    if m is None:
        return None
    fields = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes")
    out = {f: int(getattr(m, f, 0) or 0) for f in fields}
    out["alias_size_in_bytes"] = int(getattr(m, "alias_size_in_bytes", 0) or 0)
    out["planned_peak_bytes"] = (
        out["argument_size_in_bytes"]
        + out["output_size_in_bytes"]
        + out["temp_size_in_bytes"]
        - out["alias_size_in_bytes"]
    )
    return out


def device_peak_bytes() -> int | None:
    """Peak device memory in use so far by this process (GPU/TPU), or None (CPU)."""
    try:
        stats = jax.devices()[0].memory_stats() or {}
    except Exception:
        return None
    peak = stats.get("peak_bytes_in_use")
    return int(peak) if peak is not None else None


def eval_objective(model, params, batch):
    """(loss, label_loss, rationale_loss) of the packed batch without dropout."""

    def micro(m):
        ce = token_cross_entropy(model, params, m, None, False)  # [rows, dec_len]
        return (ce * m["label_weights"]).sum(), (ce * m["rationale_weights"]).sum()

    label_sum, rationale_sum = jax.lax.map(micro, batch)
    n_label, n_rationale = batch["label_weights"].sum(), batch["rationale_weights"].sum()
    return mix_losses(
        label_sum.sum(), rationale_sum.sum(), n_label, n_rationale, 0.5, "task_prefix"
    )


def main(argv=None) -> dict:
    args = parse_args(argv)
    dtype = args.dtype
    if dtype == "auto":
        dtype = "float32" if jax.default_backend() == "cpu" else "bfloat16"
    cfg = dataclasses.replace(
        get_preset(args.preset),
        dtype=dtype,
        scan_layers=args.scan_layers,
        remat_policy=args.remat,
        attention=args.attention,
    )
    if args.dropout_rate is not None:
        cfg = dataclasses.replace(cfg, dropout_rate=args.dropout_rate)
    if args.vocab_size:
        cfg = dataclasses.replace(cfg, vocab_size=args.vocab_size)
    mesh = sharding.create_mesh(*(int(x) for x in args.mesh.split(",")))
    row_multiple = sharding.batch_axis_size(mesh)
    lengths = dict(
        input_len=common.parse_range(args.input_len),
        label_len=common.parse_range(args.label_len),
        rationale_len=common.parse_range(args.rationale_len),
    )
    pairs = common.synthetic_pairs(args.batch_size, cfg.vocab_size, args.seed, **lengths)
    pool = common.synthetic_pairs(512, cfg.vocab_size, args.seed + 1, **lengths)
    attention_length = perf.cost_model(cfg, jax.default_backend()).attention_length
    pack_in, pack_tgt = common.pack_lengths(
        pool, args.batch_size, args.grad_steps, row_multiple, attention_length
    )
    pack_in = args.pack_input_length or pack_in
    pack_tgt = args.pack_target_length or pack_tgt
    batch = common.pack_batch(pairs, args.grad_steps, pack_in, pack_tgt, row_multiple)
    rows = batch["encoder_input_tokens"].shape[1]
    real = common.real_tokens(pairs)
    slots = args.grad_steps * rows * (pack_in + pack_tgt)

    tc = get_base_config().train
    tc.optimizer, tc.alpha, tc.batch_size = args.optimizer, args.alpha, args.batch_size
    tx, schedule = make_optimizer(tc), learning_rate_schedule(tc)
    model = T5(cfg)

    def init_params_fn(rng):
        tokens = jnp.ones((1, 8), jnp.int32)
        return model.init({"params": rng}, tokens, tokens)["params"]

    print(f"machine: {common.machine()}; load average {os.getloadavg()[0]:.2f}")
    print(
        f"{args.preset} ({dtype}, dropout {cfg.dropout_rate}, {args.prng_impl} key), "
        f"batch {args.batch_size} examples = {len(pairs)} pairs, "
        f"packed into {args.grad_steps} x {rows} rows of {pack_in}/{pack_tgt} tokens "
        f"({100 * (1 - real / slots):.1f}% padding), mesh {dict(mesh.shape)}"
    )
    rng = jax.random.key(args.seed)
    step_rng = jax.random.key(args.seed, impl=args.prng_impl)
    hf_model = None
    with sharding.activate(mesh):
        _, shardings = abstract_train_state(init_params_fn, tx, mesh, rng)
        if args.reference:
            hf_model, params = common.hf_twin(cfg, args.seed)
            state = state_from_params(params, tx, shardings)
        else:
            state = init_train_state(init_params_fn, tx, shardings, rng)
        batch_sharding = NamedSharding(mesh, P(None, sharding.BATCH_AXES, None))
        dev_batch = jax.device_put(batch, batch_sharding)
        ours_eval = None
        if args.reference:
            ours_eval = jax.jit(lambda p, b: eval_objective(model, p, b))(state.params, dev_batch)
            ours_eval = [float(x) for x in ours_eval]
        step_fn = jit_train_step(
            model,
            tx,
            schedule,
            alpha=args.alpha,
            model_type="task_prefix",
            state_shardings=shardings,
            batch_sharding=batch_sharding,
        )
        t0 = time.perf_counter()
        compiled = step_fn.lower(state, dev_batch, step_rng).compile()
        compile_s = time.perf_counter() - t0
        hw_flops = perf.compiled_flops(compiled)
        holder = {"state": state}

        def run_ours():
            holder["state"], metrics = compiled(holder["state"], dev_batch, step_rng)
            jax.block_until_ready(metrics["loss"])
            jax.block_until_ready(holder["state"])

        fns = {"ours": run_ours}
        ref_info = None
        if args.reference:
            fns["reference"], ref_info = reference_runner(args, hf_model, pairs, dtype)
        timings = common.time_blocks(fns, args.warmup, args.steps)
        prof = None
        if args.profile:
            from benchmarks import xla_profile

            prof = xla_profile.profile(run_ours, compiled.as_text(), args.profile)
    enc_real = sum(len(p.encoder) for p in pairs)
    model_flops = analytic_train_flops(cfg, enc_real, real - enc_real)
    attn_flops = attention_train_flops(cfg, args.grad_steps * rows, pack_in, pack_tgt)
    res = {
        "preset": args.preset,
        "dropout_rate": cfg.dropout_rate,
        "prng_impl": args.prng_impl,
        "dtype": dtype,
        "attention": args.attention,
        "remat": args.remat,
        "batch_size": args.batch_size,
        "machine": common.machine(),
        "ours": {
            **rates(timings["ours"], args.batch_size, real),
            "compile_s": compile_s,
            "padding": 1 - real / slots,
            "slots": slots,
            "xla_flops": hw_flops,
            "model_flops": model_flops,
            "attention_flops": attn_flops,
            "memory": memory_bytes(compiled),
            "device_peak_bytes": device_peak_bytes(),
            "eval_loss": ours_eval,
            "rows": rows,
            "pack": [pack_in, pack_tgt],
        },
    }
    ours_t = res["ours"]["step_s_median"]
    peak = perf.peak_flops_per_device()
    if peak:
        res["ours"]["mfu_model"] = model_flops / ours_t / (peak * jax.device_count())
        res["ours"]["mfu_model_with_attention"] = (
            (model_flops + attn_flops) / ours_t / (peak * jax.device_count())
        )
        if hw_flops:
            res["ours"]["hfu_xla"] = hw_flops / ours_t / (peak * jax.device_count())
    if args.reference:
        res["reference"] = {**rates(timings["reference"], args.batch_size, real), **ref_info}
        res["reference"]["padding"] = 1 - real / res["reference"]["slots"]
    res["load_average_end"] = os.getloadavg()[0]
    report(res, args)
    if prof is not None:
        from benchmarks import xla_profile

        res["profile"] = prof
        print(xla_profile.format_profile(prof))
    if args.json:
        with open(args.json, "a", encoding="utf-8") as f:
            f.write(json.dumps({"argv": sys.argv[1:], **res}) + "\n")
    return res


def rates(t: common.Timing, batch_size: int, real: int) -> dict:
    """Step-time statistics and throughput from a Timing."""
    med = common.median(t.wall)
    return {
        "step_s_median": med,
        "step_s_min": min(t.wall),
        "step_s_all": [round(x, 4) for x in t.wall],
        "cpu_s_median": common.median(t.cpu),
        "examples_per_s": batch_size / med,
        "tokens_per_s": real / med,
    }


def reference_runner(args, hf_model, pairs, dtype: str):
    """(callable doing one PyTorch reference step, info) on the same examples and weights."""
    import torch

    from benchmarks.reference_step import ReferenceStep

    torch.set_num_threads(args.torch_threads)
    ref = ReferenceStep(hf_model, alpha=args.alpha, dtype=dtype)
    tasks = common.padded_task_batches(pairs)
    pred, expl = ref.to_device(tasks["predict"]), ref.to_device(tasks["explain"])
    slots = sum(
        int(np.prod(t["input_ids"].shape) + np.prod(t["labels"].shape)) for t in tasks.values()
    )
    info = {
        "slots": slots,
        "eval_loss": list(ref.eval_loss(pred, expl)),
        "torch_threads": torch.get_num_threads(),
        "shapes": {
            k: [list(v["input_ids"].shape), list(v["labels"].shape)] for k, v in tasks.items()
        },
    }
    return (lambda: ref(pred, expl)), info


def report(res: dict, args) -> None:
    ours, ref = res["ours"], res.get("reference")
    fmt = lambda x, p=3: "-" if x is None else (f"{x:.{p}f}" if isinstance(x, float) else str(x))
    rows = [
        ("step time, median (s)", fmt(ours["step_s_median"]), fmt(ref and ref["step_s_median"])),
        ("step time, min (s)", fmt(ours["step_s_min"]), fmt(ref and ref["step_s_min"])),
        (
            "process CPU s / step, median",
            fmt(ours["cpu_s_median"]),
            fmt(ref and ref["cpu_s_median"]),
        ),
        ("examples/s", fmt(ours["examples_per_s"], 2), fmt(ref and ref["examples_per_s"], 2)),
        ("tokens/s (non-pad)", fmt(ours["tokens_per_s"], 0), fmt(ref and ref["tokens_per_s"], 0)),
        ("token slots / step", ours["slots"], ref["slots"] if ref else "-"),
        (
            "padding",
            f"{100 * ours['padding']:.1f}%",
            f"{100 * ref['padding']:.1f}%" if ref else "-",
        ),
        ("compile (s)", fmt(ours["compile_s"], 1), "-"),
    ]
    if ref:
        rows.append(
            (
                "loss at init, no dropout (total/label/rationale)",
                "/".join(f"{x:.4f}" for x in ours["eval_loss"]),
                "/".join(f"{x:.4f}" for x in ref["eval_loss"]),
            )
        )
    if ours["xla_flops"]:
        rows.append(("XLA FLOPs / step (cost_analysis)", f"{ours['xla_flops']:.3e}", "-"))
    rows.append(("model FLOPs / step (6*N*tokens)", f"{ours['model_flops']:.3e}", "-"))
    rows.append(
        ("achieved model TFLOP/s", fmt(ours["model_flops"] / ours["step_s_median"] / 1e12), "-")
    )
    rows.append(("attention FLOPs / step (packed rows)", f"{ours['attention_flops']:.3e}", "-"))
    if "mfu_model" in ours:
        rows.append(("MFU (6*N*tokens / peak)", f"{100 * ours['mfu_model']:.1f}%", "-"))
        mfu_att = ours["mfu_model_with_attention"]
        rows.append(("MFU (6*N*tokens + attention / peak)", f"{100 * mfu_att:.1f}%", "-"))
    if "hfu_xla" in ours:
        rows.append(("HFU (XLA FLOPs / peak)", f"{100 * ours['hfu_xla']:.1f}%", "-"))
    print(
        common.table(rows, ["", "ours (JAX)", "reference (PyTorch)" if ref else "reference: off"])
    )
    if ref:
        print(
            f"speed-up ours / reference: {ref['step_s_median'] / ours['step_s_median']:.2f}x "
            f"(median step time; {args.steps} steps after {args.warmup} warm-up)"
        )


if __name__ == "__main__":
    main()
