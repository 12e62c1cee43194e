"""Times greedy decoding (distill_jax.decode, KV cache, while_loop with early exit).

Inputs are synthetic `predict:` inputs with CQA-like lengths, padded to the pipeline's length
bucket (eval batches are not packed). Reports generated tokens/s (tokens up to and including
EOS) and ms per sequence; `--reference` also times transformers' `model.generate(
max_new_tokens=..., do_sample=False, num_beams=1)` on the same weights and inputs (padded to
the batch's longest, as the reference's collator does) and checks that both emit the same
tokens. `--ctranslate2` also times CTranslate2 greedy decoding in float32 and int8 (a model
converted by `ctranslate2.converters.TransformersConverter` from our HF export of the same
weights, `intra_threads=--ct2_threads`, one batch of the same unpadded inputs).

    python benchmarks/decode.py --preset t5-v1_1-small --batch_size 64 --max_len 64 \
        --reference --ctranslate2
"""

from __future__ import annotations

import argparse
import contextlib
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

from benchmarks import common  # noqa: E402
from distill_jax.decode import greedy_decode_with_steps  # noqa: E402
from distill_jax.model.config import get_preset  # noqa: E402
from distill_jax.model.t5 import T5  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="t5-v1_1-small")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--max_len", type=int, default=64, help="decoded tokens (eval.gen_max_len)")
    p.add_argument("--input_len", default="60,150", help="min,max encoder tokens")
    p.add_argument(
        "--input_width", type=int, default=0, help="pad ours to this (0: the eval bucket)"
    )
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    p.add_argument("--attention", default="xla", choices=["xla", "dot_product"])
    p.add_argument("--steps", type=int, default=5, help="timed calls (median reported)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reference", action="store_true", help="also time HF model.generate")
    p.add_argument("--torch_threads", type=int, default=os.cpu_count())
    p.add_argument(
        "--ctranslate2", action="store_true", help="also time CTranslate2 float32 and int8"
    )
    p.add_argument("--ct2_threads", type=int, default=os.cpu_count(), help="intra_threads")
    p.add_argument(
        "--profile", default="", help="trace one more call of ours into this dir; print op shares"
    )
    p.add_argument("--json", default="", help="append the results as one JSON line here")
    return p.parse_args(argv)


def bucket(n: int) -> int:
    """The eval pipeline's padded length for a batch whose longest input is n."""
    from distill_jax.data.eval_data import bucket_length

    return int(bucket_length(n))


def generated_lengths(tokens: np.ndarray, eos: int) -> np.ndarray:
    """Tokens emitted per row, up to and including the first EOS."""
    is_eos = tokens == eos
    first = np.where(is_eos.any(1), is_eos.argmax(1) + 1, tokens.shape[1])
    return first


def main(argv=None) -> dict:
    args = parse_args(argv)
    dtype = args.dtype
    if dtype == "auto":
        dtype = "float32" if jax.default_backend() == "cpu" else "bfloat16"
    cfg = dataclasses.replace(get_preset(args.preset), dtype=dtype, attention=args.attention)
    rng = np.random.default_rng(args.seed)
    lo, hi = common.parse_range(args.input_len)
    lengths = rng.integers(lo, hi + 1, args.batch_size)
    inputs = [
        np.concatenate(
            [
                common.PREFIX_IDS["predict"],
                rng.integers(common.FIRST_CONTENT_ID, cfg.vocab_size, n - 4),
                [common.EOS],
            ]
        ).astype(np.int32)
        for n in lengths
    ]
    width = args.input_width or bucket(int(lengths.max()))
    if width < lengths.max():
        raise SystemExit(f"--input_width {width} is shorter than the longest input {lengths.max()}")
    tokens = np.zeros((args.batch_size, width), np.int32)
    for i, x in enumerate(inputs):
        tokens[i, : len(x)] = x

    print(f"machine: {common.machine()}; load average {os.getloadavg()[0]:.2f}")
    print(
        f"{args.preset} ({dtype}), batch {args.batch_size}, inputs {lo}-{hi} tokens padded to "
        f"{width}, max_len {args.max_len}"
    )
    hf_model = None
    if args.reference or args.ctranslate2:
        hf_model, params = common.hf_twin(cfg, args.seed)
        params = jax.device_put(params)
    else:
        model = T5(cfg)
        init = jax.jit(
            lambda r: model.init(
                {"params": r}, jnp.ones((1, 8), jnp.int32), jnp.ones((1, 8), jnp.int32)
            )
        )
        params = init(jax.random.key(args.seed))["params"]
    dev_tokens = jnp.asarray(tokens)

    t0 = time.perf_counter()
    out, steps = greedy_decode_with_steps(params, cfg, dev_tokens, args.max_len)
    jax.block_until_ready(out)
    first_call_s = time.perf_counter() - t0
    holder = {}

    def run_ours():
        holder["out"], holder["steps"] = greedy_decode_with_steps(
            params, cfg, dev_tokens, args.max_len
        )
        jax.block_until_ready(holder["out"])

    fns = {"ours": run_ours}
    ref_holder: dict = {}
    if args.reference:
        fns["reference"] = reference_runner(args, hf_model, inputs, dtype, ref_holder)
    ct2_holders: dict = {}
    tmp_dirs = []
    if args.ctranslate2:
        import tempfile

        tmp_dirs.append(tempfile.TemporaryDirectory())
        for compute_type in ("float32", "int8"):
            ct2_holders[compute_type] = {}
            fns[f"ct2_{compute_type}"] = ct2_runner(
                args, cfg, params, inputs, compute_type, tmp_dirs[0].name,
                ct2_holders[compute_type],
            )  # fmt: skip
    timings = common.time_blocks(fns, args.warmup, args.steps)
    ours_out = np.asarray(holder["out"])
    res = {
        "preset": args.preset,
        "dtype": dtype,
        "attention": args.attention,
        "batch_size": args.batch_size,
        "max_len": args.max_len,
        "input_width": width,
        "machine": common.machine(),
        "ours": {
            **rates(timings["ours"], ours_out, cfg.eos_token_id),
            "compile_plus_first_call_s": first_call_s,
            "decoder_steps": int(holder["steps"]),
        },
    }
    if args.reference:
        out = ref_holder["out"].cpu().numpy()[:, 1:]  # drop the decoder start token
        full = np.zeros_like(ours_out)
        full[:, : out.shape[1]] = out[:, : ours_out.shape[1]]
        res["reference"] = {
            **rates(timings["reference"], full, cfg.eos_token_id),
            "decoder_steps": int(out.shape[1]),
            "same_tokens_fraction": float((full == ours_out).mean()),
            "torch_threads": ref_holder["threads"],
        }
    for compute_type, h in ct2_holders.items():
        full = h["out"][:, : ours_out.shape[1]]
        res[f"ct2_{compute_type}"] = {
            **rates(timings[f"ct2_{compute_type}"], full, cfg.eos_token_id),
            "decoder_steps": int(h["steps"]),
            "same_tokens_fraction": float((full == ours_out).mean()),
            "intra_threads": args.ct2_threads,
        }
    for d in tmp_dirs:
        d.cleanup()
    if args.profile:
        from benchmarks import xla_profile

        hlo = greedy_decode_with_steps.lower(params, cfg, dev_tokens, args.max_len).compile()
        res["profile"] = xla_profile.profile(run_ours, hlo.as_text(), args.profile)
        print(xla_profile.format_profile(res["profile"]))
    res["load_average_end"] = os.getloadavg()[0]
    report(res)
    if args.json:
        with open(args.json, "a", encoding="utf-8") as f:
            f.write(json.dumps({"argv": sys.argv[1:], **res}) + "\n")
    return res


def rates(t: common.Timing, out: np.ndarray, eos: int) -> dict:
    """Call-time statistics and generation throughput."""
    med, gen = common.median(t.wall), int(generated_lengths(out, eos).sum())
    return {
        "call_s_median": med,
        "call_s_min": min(t.wall),
        "cpu_s_median": common.median(t.cpu),
        "generated_tokens": gen,
        "tokens_per_s": gen / med,
        "ms_per_sequence": 1000 * med / out.shape[0],
    }


def reference_runner(args, hf_model, inputs, dtype, holder: dict):
    """A callable doing HF greedy generation on the same inputs (padded to the batch's longest);
    it leaves its output tokens in holder['out']."""
    import torch

    torch.set_num_threads(args.torch_threads)
    holder["threads"] = torch.get_num_threads()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = hf_model.to(device).eval()
    width = max(len(x) for x in inputs)
    ids = np.zeros((len(inputs), width), np.int64)
    for i, x in enumerate(inputs):
        ids[i, : len(x)] = x
    ids_t = torch.from_numpy(ids).to(device)
    mask_t = (ids_t != 0).long()
    if dtype == "float32":
        autocast = contextlib.nullcontext
    else:
        autocast = lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)

    def run():
        with torch.no_grad(), autocast():
            holder["out"] = model.generate(
                input_ids=ids_t,
                attention_mask=mask_t,
                max_new_tokens=args.max_len,
                do_sample=False,
                num_beams=1,
            )
        if device.type == "cuda":
            torch.cuda.synchronize()

    return run


def ct2_runner(args, cfg, params, inputs, compute_type: str, tmp: str, holder: dict):
    """A callable doing CTranslate2 greedy decoding of `inputs` (one batch, unpadded) with a
    model converted from our HF export; it leaves int32 [batch, max_len] tokens (EOS kept, 0
    after it, as ours) and the longest output length in `holder`."""
    import ctranslate2

    from distill_jax.model import hf_io
    from distill_jax.tokenizer import Tokenizer

    hf_dir, ct2_dir = Path(tmp) / "hf", Path(tmp) / f"ct2_{compute_type}"
    if not hf_dir.exists():
        # Any tokenizer will do: CT2 pads the vocabulary to the model's size; the token strings
        # are replaced by unique names below, so ids map 1:1 to strings.
        tok = Tokenizer.train(["a b c d e f g h i j"] * 20, 16, Path(tmp) / "tok")
        hf_io.export_pretrained(hf_dir, cfg, params, tok)
    converter = ctranslate2.converters.TransformersConverter(str(hf_dir))
    converter.convert(str(ct2_dir), quantization=compute_type, force=True)
    vocab_file = ct2_dir / "shared_vocabulary.json"
    special = {cfg.pad_token_id: "<pad>", cfg.eos_token_id: "</s>", 2: "<unk>"}
    vocab = [special.get(i, f"t{i}") for i in range(cfg.vocab_size)]
    vocab_file.write_text(json.dumps(vocab))
    index = {t: i for i, t in enumerate(vocab)}
    translator = ctranslate2.Translator(
        str(ct2_dir), device="cpu", compute_type=compute_type, intra_threads=args.ct2_threads
    )
    source = [[vocab[int(t)] for t in x] for x in inputs]

    def run():
        results = translator.translate_batch(
            source,
            beam_size=1,
            max_decoding_length=args.max_len,
            max_batch_size=len(source),
            return_end_token=True,
        )
        out = np.zeros((len(source), args.max_len), np.int32)
        for i, r in enumerate(results):
            ids = [index[t] for t in r.hypotheses[0]][: args.max_len]
            out[i, : len(ids)] = ids
        holder["out"] = out
        holder["steps"] = max(len(r.hypotheses[0]) for r in results)

    return run


COLUMNS = [
    ("ours", "ours (JAX)"),
    ("reference", "HF generate"),
    ("ct2_float32", "CTranslate2 float32"),
    ("ct2_int8", "CTranslate2 int8"),
]


def report(res: dict) -> None:
    """Prints one column per timed implementation and the speed-ups of ours."""
    cols = [(k, name) for k, name in COLUMNS if k in res]
    keys = [
        ("call time, median (s)", "call_s_median", 3),
        ("call time, min (s)", "call_s_min", 3),
        ("process CPU s / call, median", "cpu_s_median", 3),
        ("decoder steps run", "decoder_steps", 0),
        ("generated tokens", "generated_tokens", 0),
        ("tokens/s", "tokens_per_s", 1),
        ("ms per sequence", "ms_per_sequence", 2),
        ("same tokens as ours", "same_tokens_fraction", -1),
    ]

    def fmt(d: dict, k: str, p: int) -> str:
        if k not in d:
            return "-"
        return f"{100 * d[k]:.1f}%" if p < 0 else (f"{d[k]:.{p}f}" if p else str(d[k]))

    rows = [(name, *(fmt(res[c], k, p) for c, _ in cols)) for name, k, p in keys]
    rows.append(
        (
            "compile + first call (s)",
            f"{res['ours']['compile_plus_first_call_s']:.1f}",
            *("-" for _ in cols[1:]),
        )
    )
    print(common.table(rows, ["", *(name for _, name in cols)]))
    ours_t = res["ours"]["call_s_median"]
    for c, name in cols[1:]:
        print(f"speed-up ours / {name}: {res[c]['call_s_median'] / ours_t:.2f}x")


if __name__ == "__main__":
    main()
