"""Packing (encoder, decoder) pairs into fixed-size rows: lengths, row plan, bucketing.

A pair fits a row of `pack_input_length` encoder and `pack_target_length` decoder slots when
both its sequences fit (2-D vector bin packing). `predict:` pairs have long inputs and short
labels, `explain:` pairs long rationales, so first-fit-decreasing leaves ~20% padding on
CQA-like data. `pack_rows` instead fixes the row count, from the lower bound max(sum enc / Le,
sum dec / Ld), and places pairs, largest first, into the row with the most room in the pair's
own direction (largest dot product of normalised sizes): both sides of every row fill together
(~9% padding); when a pair fits nowhere a larger count is tried (grow, then binary search).
Everything here is a pure function of token lengths, so every process computes the same plan.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import numpy as np


def round_up(x: int, multiple: int) -> int:
    """Smallest multiple of `multiple` that is >= x."""
    return -(-int(x) // multiple) * multiple


def _place(
    enc: np.ndarray, dec: np.ndarray, order: np.ndarray, pack_in: int, pack_tgt: int, rows: int
) -> np.ndarray | None:
    """Row of each pair with exactly `rows` rows, or None when some pair fits nowhere."""
    rem_enc = np.full(rows, pack_in, np.int64)
    rem_dec = np.full(rows, pack_tgt, np.int64)
    # Scores in normalised units: pair size (e/Le, d/Ld) dot row room (re/Le, rd/Ld).
    w_enc, w_dec = 1.0 / pack_in**2, 1.0 / pack_tgt**2
    row_of = np.empty(len(enc), np.int64)
    for i in order:
        e, d = enc[i], dec[i]
        score = np.where(
            (rem_enc >= e) & (rem_dec >= d), (e * w_enc) * rem_enc + (d * w_dec) * rem_dec, -1.0
        )
        r = int(score.argmax())
        if score[r] < 0:
            return None
        rem_enc[r] -= e
        rem_dec[r] -= d
        row_of[i] = r
    return row_of


def pack_rows(
    enc_lengths: np.ndarray,
    dec_lengths: np.ndarray,
    pack_in: int,
    pack_tgt: int,
    granularity: int = 1,
    min_rows: int = 0,
) -> tuple[np.ndarray, int]:
    """Assign pairs to rows: (row index per pair [num_pairs], number of rows).

    The row count is the smallest feasible multiple of `granularity` (the caller rounds to it
    anyway; packing into all of them spreads the pairs), at least `min_rows` (a floor keeps
    the batch shape, so the compiled step, the same). Every pair must fit an empty row.
    """
    enc = np.asarray(enc_lengths, np.int64)
    dec = np.asarray(dec_lengths, np.int64)
    if len(enc) == 0:
        return np.zeros(0, np.int64), 0
    size = np.maximum(enc / pack_in, dec / pack_tgt)
    order = np.argsort(-size, kind="stable")  # largest first
    place = lambda k: _place(enc, dec, order, pack_in, pack_tgt, k * granularity)
    # Counts in units of `granularity`, from the lower bound; one pair per row always fits.
    lower = max(enc.sum() / pack_in, dec.sum() / pack_tgt) / granularity
    lo = hi = max(1, math.ceil(lower - 1e-9), math.ceil(min_rows / granularity))
    most = math.ceil(len(enc) / granularity)
    while (best := place(hi)) is None:  # grow ~3% at a time, then binary search back
        lo, hi = hi + 1, min(most, max(hi + 1, math.ceil(hi * 1.03)))
    best_k = hi
    while lo < best_k:
        mid = (lo + best_k) // 2
        if (placed := place(mid)) is None:
            lo = mid + 1
        else:
            best, best_k = placed, mid
    return best, best_k * granularity


@dataclasses.dataclass(frozen=True)
class PackSpec:
    """Row shape and row-count bucket of packed train batches."""

    input_length: int
    target_length: int
    row_bucket: int
    expected_rows: float  # rows per micro-batch, on average
    estimated_padding: float  # pad share of all slots, from a simulation
    min_rows: int = 0  # rows per micro-batch never go below this (one shape for most steps)


def choose_pack_spec(
    enc_lengths: np.ndarray,
    dec_lengths: np.ndarray,
    *,
    pairs_per_example: int,
    examples_per_micro_batch: int,
    grad_steps: int,
    row_multiple: int = 1,
    input_length: int = 0,
    target_length: int = 0,
    row_bucket: int = 0,
    attention_length: float = 4096.0,
) -> PackSpec:
    """Pick row lengths (those given as 0) that minimise padding, by simulating a few steps.

    Candidates: encoder rows from the longest pair up to ~16 average pairs, in steps of 64; the
    target side keeps the data's encoder:decoder ratio (or 10% more) so both sides fill
    together. Each packs the same few random steps (fixed seed: identical on every process)
    and the least compute wins: slots weighted by 1 + attended length / `attention_length`
    (the trainer's cost model), so longer rows must save real padding.
    """
    mean_enc, mean_dec = float(np.mean(enc_lengths)), float(np.mean(dec_lengths))
    longest_enc, longest_dec = int(enc_lengths.max()), int(dec_lengths.max())
    per_step = examples_per_micro_batch * grad_steps
    num_examples = len(enc_lengths) // pairs_per_example

    def sample(seed: int, num_steps: int) -> tuple[list[np.ndarray], int]:
        """Pair ids of random steps (examples with replacement) and their real tokens."""
        rng = np.random.default_rng(seed)
        steps = [
            pair_ids_of(rng.integers(0, num_examples, per_step), pairs_per_example)
            for _ in range(num_steps)
        ]
        return steps, sum(int(enc_lengths[ids].sum() + dec_lengths[ids].sum()) for ids in steps)

    def rows_of(steps: list[np.ndarray], enc_len: int, tgt_len: int, bucket: int) -> list[int]:
        """Rows per micro-batch of each step, all its pairs packed together (as the pipeline)."""
        return [
            pack_rows(enc_lengths[ids], dec_lengths[ids], enc_len, tgt_len, grad_steps * bucket)[1]
            // grad_steps
            for ids in steps
        ]

    if input_length:
        candidates = [input_length]
    else:
        top = round_up(max(longest_enc, 16 * mean_enc), 64)
        candidates = list(range(round_up(longest_enc, 64), top + 1, 64))
        candidates = candidates[:: max(1, len(candidates) // 24)]  # at most ~24
    # A few random steps (fixed seed), fewer for big batches.
    steps, real = sample(0, int(np.clip(2048 // (per_step * pairs_per_example), 2, 8)))
    pairs_per_micro = examples_per_micro_batch * pairs_per_example
    results = []
    for enc_len in candidates:
        # Decoder side a bit roomier too: rows then close on the encoder side more often.
        for dec_scale in (1.0, 1.1) if not target_length else (1.0,):
            tgt_len = target_length or round_up(
                max(longest_dec, math.ceil(dec_scale * enc_len * mean_dec / mean_enc)), 16
            )
            expected = 1.05 * pairs_per_micro * max(mean_enc / enc_len, mean_dec / tgt_len)
            # Row counts round up to ~5% of the rows (a multiple of row_multiple): few shapes
            # (compilations) for ~2.5% padding on average.
            bucket = row_bucket or max(1, round(expected * 0.05 / row_multiple)) * row_multiple
            rows = sum(rows_of(steps, enc_len, tgt_len, bucket))
            padding = 1.0 - real / (grad_steps * rows * (enc_len + tgt_len))
            # Compute per row: dense layers ~ slots, attention ~ slots x attended length.
            cost = rows * (
                enc_len * (1 + enc_len / attention_length)
                + tgt_len * (1 + (tgt_len + enc_len) / attention_length)
            )
            results.append((cost, PackSpec(enc_len, tgt_len, bucket, expected, padding)))
    spec = min(results, key=lambda r: r[0])[1]
    if row_bucket:  # the caller fixed the granularity; no floor
        return spec
    # A floor at the rows that 3 in 4 of 32 sampled steps fit in: most steps then share one
    # shape (one compilation) and the rest round up by the small bucket (a few more).
    steps, real = sample(1, 32)
    needed = rows_of(steps, spec.input_length, spec.target_length, spec.row_bucket)
    floor = int(np.quantile(needed, 0.75, method="higher"))
    rows = sum(max(n, floor) for n in needed)
    slots = grad_steps * rows * (spec.input_length + spec.target_length)
    return dataclasses.replace(spec, min_rows=floor, estimated_padding=1.0 - real / slots)


def choose_row_counts(needed: Mapping[int, int], compile_steps: float) -> tuple[int, ...]:
    """The row counts to compile, given how many steps need each: {rows: steps}.

    Every step runs at the smallest chosen count that holds it (the largest is always chosen).
    Minimises padding rows plus compilations, one priced at `compile_steps` steps of the
    largest shape (the trainer's cost model), by an exact dynamic programme over the counts.
    """
    counts = sorted(needed)
    if not counts:
        return ()
    price = compile_steps * counts[-1]  # in row-steps
    steps = np.cumsum([0] + [needed[c] for c in counts])
    # best[j]: cost of counts[:j] with counts[j - 1] chosen; cut[j]: where its group starts.
    best, cut = [0.0], [0]
    for j in range(1, len(counts) + 1):
        options = [best[i] + (steps[j] - steps[i]) * counts[j - 1] + price for i in range(j)]
        cut.append(int(np.argmin(options)))
        best.append(min(options))
    chosen, j = [], len(counts)
    while j:
        chosen.append(counts[j - 1])
        j = cut[j]
    return tuple(sorted(chosen))


def pair_ids_of(example_ids: np.ndarray, pairs_per_example: int) -> np.ndarray:
    """Pair indices of examples (pair k of example i is i * pairs_per_example + k)."""
    example_ids = np.asarray(example_ids, np.int64)
    return (example_ids[:, None] * pairs_per_example + np.arange(pairs_per_example)).reshape(-1)


def empty_batch(
    grad_steps: int, rows: int, input_length: int, target_length: int
) -> dict[str, np.ndarray]:
    """All-padding arrays of a packed train batch (distill_jax.data.pipeline lists the fields)."""
    shape_in, shape_tgt = (grad_steps, rows, input_length), (grad_steps, rows, target_length)
    return {
        "encoder_input_tokens": np.zeros(shape_in, np.int32),
        "encoder_segment_ids": np.zeros(shape_in, np.int32),
        "decoder_input_tokens": np.zeros(shape_tgt, np.int32),
        "decoder_target_tokens": np.zeros(shape_tgt, np.int32),
        "decoder_segment_ids": np.zeros(shape_tgt, np.int32),
        "label_weights": np.zeros(shape_tgt, np.float32),
        "rationale_weights": np.zeros(shape_tgt, np.float32),
    }
