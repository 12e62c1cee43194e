"""Shared pieces of the benchmarks: synthetic CQA-like data, packing, the HF twin, timing.

Nothing here downloads anything: data are random token ids with the length profile of the
CQA task (inputs ~60-150 tokens, labels 2-6, rationales 20-120), weights are random.
"""

from __future__ import annotations

import dataclasses
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence

import numpy as np

from distill_jax.data import packing
from distill_jax.model import hf_io
from distill_jax.model.config import T5Config, config_to_hf

# Stand-ins for the sentencepiece pieces of "predict:" / "explain:" (3 tokens each in T5's
# vocabulary); content tokens are drawn from [FIRST_CONTENT_ID, vocab).
PREFIX_IDS = {"predict": (3, 4, 5), "explain": (6, 7, 5)}
FIRST_CONTENT_ID = 8
EOS = 1


@dataclasses.dataclass(frozen=True)
class Pair:
    """One (encoder, decoder) sequence pair; both end with EOS."""

    encoder: np.ndarray  # int32 [enc_len]
    decoder: np.ndarray  # int32 [dec_len]
    is_rationale: bool


def add_length_args(parser) -> None:
    """The --input_len/--label_len/--rationale_len ranges (inclusive, in tokens, with EOS)."""
    parser.add_argument("--input_len", default="60,150", help="min,max encoder tokens")
    parser.add_argument("--label_len", default="2,6", help="min,max label tokens")
    parser.add_argument("--rationale_len", default="20,120", help="min,max rationale tokens")


def parse_range(text: str) -> tuple[int, int]:
    """'60,150' -> (60, 150); one number means a fixed length."""
    parts = [int(p) for p in text.split(",")]
    lo, hi = (parts[0], parts[0]) if len(parts) == 1 else (parts[0], parts[1])
    if not 1 <= lo <= hi:
        raise SystemExit(f"bad length range {text!r}: expected min,max with 1 <= min <= max")
    return lo, hi


def _tokens(rng: np.random.Generator, n: int, vocab: int) -> np.ndarray:
    return rng.integers(FIRST_CONTENT_ID, vocab, size=n, dtype=np.int32)


def synthetic_pairs(
    num_examples: int,
    vocab_size: int,
    seed: int,
    input_len: tuple[int, int] = (60, 150),
    label_len: tuple[int, int] = (2, 6),
    rationale_len: tuple[int, int] = (20, 120),
) -> list[Pair]:
    """Two pairs per example, as task_prefix training sees them: [predict_0, explain_0, ...].

    Both pairs of an example share the input body; lengths include the 3 prefix tokens and EOS.
    """
    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(num_examples):
        n_in = int(rng.integers(input_len[0], input_len[1] + 1))
        body = _tokens(rng, max(n_in - 4, 0), vocab_size)
        label = np.append(
            _tokens(rng, int(rng.integers(*label_len, endpoint=True)) - 1, vocab_size), EOS
        )
        ratio = np.append(
            _tokens(rng, int(rng.integers(*rationale_len, endpoint=True)) - 1, vocab_size), EOS
        )
        for task, target in (("predict", label), ("explain", ratio)):
            enc = np.concatenate([PREFIX_IDS[task], body, [EOS]]).astype(np.int32)
            pairs.append(Pair(enc, target.astype(np.int32), task == "explain"))
    return pairs


def pack_lengths(
    length_pool: Sequence[Pair],
    batch_size: int,
    grad_steps: int,
    row_multiple: int,
    attention_length: float = 4096.0,
) -> tuple[int, int]:
    """(pack_input_length, pack_target_length) as training would pick them from this data.

    Uses the pipeline's chooser (`packing.choose_pack_spec`, simulated padding and attention
    cost) on the lengths of `length_pool` (a few hundred examples' pairs); falls back to ~4
    average inputs per row if that function is not available.
    """
    enc = np.array([len(p.encoder) for p in length_pool])
    dec = np.array([len(p.decoder) for p in length_pool])
    choose = getattr(packing, "choose_pack_spec", None)
    if choose is not None:
        spec = choose(
            enc,
            dec,
            pairs_per_example=2,
            examples_per_micro_batch=batch_size // grad_steps,
            grad_steps=grad_steps,
            row_multiple=row_multiple,
            attention_length=attention_length,
        )
        return spec.input_length, spec.target_length
    pack_in = packing.round_up(max(enc.max(), 4 * enc.mean()), 64)
    pack_tgt = packing.round_up(max(dec.max(), pack_in * dec.sum() / enc.sum()), 16)
    return int(pack_in), int(pack_tgt)


def pack_batch(
    pairs: Sequence[Pair], grad_steps: int, pack_in: int, pack_tgt: int, row_multiple: int
) -> dict[str, np.ndarray]:
    """A packed train batch in the layout of the spec: leaves [grad_steps, rows, length].

    Uses the pipeline's row planner (`packing.pack_rows`); rows are padded to a multiple of
    `row_multiple` (data * fsdp devices) and to the same count in every micro-batch.
    """
    if len(pairs) % (2 * grad_steps):
        raise SystemExit(f"{len(pairs) // 2} examples do not split into {grad_steps} micro-batches")
    chunks = np.array_split(np.arange(len(pairs)), grad_steps)
    plans = []
    for ids in chunks:
        enc = np.array([len(pairs[i].encoder) for i in ids])
        dec = np.array([len(pairs[i].decoder) for i in ids])
        if enc.max() > pack_in or dec.max() > pack_tgt:
            raise SystemExit(f"a pair is longer than the pack lengths {pack_in}/{pack_tgt}")
        plans.append((ids, packing.pack_rows(enc, dec, pack_in, pack_tgt)))
    rows = packing.round_up(max(n for _, (_, n) in plans), row_multiple)
    b = packing.empty_batch(grad_steps, rows, pack_in, pack_tgt)
    for m, (ids, (row_of, _)) in enumerate(plans):
        fill_in, fill_tgt = np.zeros(rows, np.int64), np.zeros(rows, np.int64)
        segments = np.zeros(rows, np.int32)
        for i, r in zip(ids, row_of, strict=True):
            p = pairs[i]
            segments[r] += 1
            s, e, d = segments[r], fill_in[r], fill_tgt[r]
            b["encoder_input_tokens"][m, r, e : e + len(p.encoder)] = p.encoder
            b["encoder_segment_ids"][m, r, e : e + len(p.encoder)] = s
            n = len(p.decoder)
            b["decoder_target_tokens"][m, r, d : d + n] = p.decoder
            b["decoder_input_tokens"][m, r, d + 1 : d + n] = p.decoder[:-1]  # shifted right
            b["decoder_segment_ids"][m, r, d : d + n] = s
            weights = "rationale_weights" if p.is_rationale else "label_weights"
            b[weights][m, r, d : d + n] = 1.0
            fill_in[r] += len(p.encoder)
            fill_tgt[r] += n
    return b


def padded_task_batches(pairs: Sequence[Pair]) -> dict[str, dict[str, np.ndarray]]:
    """The reference's batches: per task, padded to that batch's own longest sequence.

    Like HF's DataCollatorForSeq2Seq: inputs padded with 0 and an attention mask, labels
    padded with -100 (ignored by the loss); the model shifts labels right itself.
    """
    out = {}
    for task, is_rat in (("predict", False), ("explain", True)):
        sel = [p for p in pairs if p.is_rationale == is_rat]
        n_in, n_tgt = max(len(p.encoder) for p in sel), max(len(p.decoder) for p in sel)
        ids = np.zeros((len(sel), n_in), np.int64)
        labels = np.full((len(sel), n_tgt), -100, np.int64)
        for j, p in enumerate(sel):
            ids[j, : len(p.encoder)] = p.encoder
            labels[j, : len(p.decoder)] = p.decoder
        out[task] = {
            "input_ids": ids,
            "attention_mask": (ids != 0).astype(np.int64),
            "labels": labels,
        }
    return out


def real_tokens(pairs: Sequence[Pair]) -> int:
    """Non-padding encoder + decoder tokens of these pairs (what both implementations process)."""
    return sum(len(p.encoder) + len(p.decoder) for p in pairs)


def hf_twin(cfg: T5Config, seed: int):
    """(transformers T5ForConditionalGeneration, our unscanned numpy params) with equal weights.

    The HF model is randomly initialised the HF way, saved as safetensors and read back with
    `hf_io.load_pretrained`, the same conversion a user's checkpoint goes through.
    """
    import torch
    import transformers

    torch.manual_seed(seed)
    hf_cfg = transformers.T5Config(**config_to_hf(cfg))
    model = transformers.T5ForConditionalGeneration(hf_cfg)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        _, params = hf_io.load_pretrained(tmp, scan_layers=cfg.scan_layers)
    return model, params


@dataclasses.dataclass
class Timing:
    wall: list[float]  # seconds per call
    cpu: list[float]  # process CPU seconds (all threads) per call


def time_blocks(fns: dict[str, Callable[[], object]], warmup: int, steps: int):
    """Times several blocking callables one after the other: warm-up then `steps` calls each.

    Returns {name: Timing}. Blocks, not interleaving: alternating XLA's and PyTorch's thread
    pools call by call makes each one's spin-waiting threads steal cores from the other (HF
    generate ran 3x slower interleaved with our decode on 2 cores). Wall-clock time is what is
    reported; process CPU time (user+sys, all threads) is a second view of the work done,
    inflated by spin-waits when the machine is oversubscribed.
    """
    out = {}
    for name, fn in fns.items():
        time.sleep(1.0)  # let the previous runtime's worker threads go idle
        for _ in range(warmup):
            fn()
        out[name] = Timing([], [])
        for _ in range(steps):
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            out[name].wall.append(time.perf_counter() - t0)
            out[name].cpu.append(time.process_time() - c0)
    return out


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def machine() -> str:
    """One line describing the host and the JAX backend."""
    import jax

    dev = jax.devices()[0]
    return (
        f"{platform.machine()} {platform.processor() or ''} {_cpus()} CPUs; jax {jax.__version__} "
        f"{jax.default_backend()} ({dev.device_kind}) x{jax.device_count()}"
    ).replace("  ", " ")


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def table(rows: Sequence[Sequence[object]], header: Sequence[str]) -> str:
    """A GitHub markdown table."""
    cells = [[str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(header)]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), sep, *(line(r) for r in cells)])
