"""Input pipeline: packed train batches (`TrainIterator`); eval batches from `eval_data.py`.

Step s's examples come from a grain `MapDataset.range(n).shuffle(seed).repeat().batch(...)`
(a new permutation each epoch), a pure function of (seed, s). All their token pairs are packed
together into rows (`packing.py`) and row g goes to micro-batch g // rows, so the train step
must sum CE * weights and weights over all micro-batches before dividing (docs/architecture.md,
section 4). Every process plans the whole global batch from token lengths and keeps its block
of each micro-batch's rows: shapes agree on all hosts without communication. Batch (per
process), numpy:

    encoder_input_tokens   int32   [grad_steps, rows // process_count, pack_input_length]
    encoder_segment_ids    int32   [grad_steps, rows // process_count, pack_input_length]
    decoder_input_tokens   int32   [grad_steps, rows // process_count, pack_target_length]
    decoder_target_tokens  int32   [grad_steps, rows // process_count, pack_target_length]
    decoder_segment_ids    int32   [grad_steps, rows // process_count, pack_target_length]
    label_weights          float32 [grad_steps, rows // process_count, pack_target_length]
    rationale_weights      float32 [grad_steps, rows // process_count, pack_target_length]

Segment ids count 1, 2, ... from each row's start (0 = padding); decoder inputs are the
targets shifted right within each segment (0 first); label/rationale weights are 1.0 exactly
on the target tokens (EOS included) of label/rationale pairs. `rows` is a multiple of the row
bucket (a multiple of `row_multiple`, itself of `process_count`), so few shapes compile.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import grain
import numpy as np

from distill_jax.data import packing, token_cache
from distill_jax.data.eval_data import EvalSet, bucket_length, eval_batches
from distill_jax.data.features import Sequences, TokenizerLike, tokenize_pairs
from distill_jax.data.packing import empty_batch
from distill_jax.errors import UserError

__all__ = ["EvalSet", "TrainIterator", "bucket_length", "eval_batches", "tokenize_pairs"]

log = logging.getLogger(__name__)
_SAME_ON_RESUME = ("seed", "num_examples", "batch_size")  # checked by set_state


class TrainIterator:
    """Infinite iterator of packed train batches (module docstring), a pure function of
    (seed, step). Pack lengths and `row_bucket` given as 0 are chosen from the data
    (`packing.choose_pack_spec`, attention priced by the trainer's `attention_length`);
    `row_multiple`: devices on the batch axes; `prefetch`: batches built ahead on a grain
    thread (0 = on `next`)."""

    def __init__(
        self,
        records: Sequence[Mapping[str, Any]],
        tokenizer: TokenizerLike,
        *,
        model_type: str,
        batch_size: int,
        grad_steps: int,
        max_input_length: int,
        max_target_length: int,
        seed: int,
        pack_input_length: int = 0,
        pack_target_length: int = 0,
        row_multiple: int = 1,
        row_bucket: int = 0,
        process_index: int = 0,
        process_count: int = 1,
        prefetch: int = 2,
        attention_length: float = 4096.0,
    ):
        if not records:
            raise UserError("the training split has no records")
        if batch_size < 1 or grad_steps < 1 or batch_size % grad_steps:
            raise ValueError(f"{batch_size=} must be a positive multiple of {grad_steps=}")
        if row_multiple < 1 or row_multiple % process_count:
            raise ValueError(f"{row_multiple=} must be a positive multiple of {process_count=}")
        if not 0 <= process_index < process_count:
            raise ValueError(f"{process_index=} out of range for {process_count=}")
        self.pairs = token_cache.tokenize_pairs_cached(
            records,
            tokenizer,
            model_type=model_type,
            max_input_length=max_input_length,
            max_target_length=max_target_length,
        )
        self.seed, self.batch_size, self.grad_steps = seed, batch_size, grad_steps
        self.process_index, self.process_count = process_index, process_count
        self.num_examples = len(records)
        self._enc_len = self.pairs.encoder.lengths
        self._dec_len = self.pairs.decoder.lengths
        for name, value, longest, limit in [
            ("pack_input_length", pack_input_length, self._enc_len.max(), "max_input_length"),
            ("pack_target_length", pack_target_length, self._dec_len.max(), "max_target_length"),
        ]:
            if 0 < value < longest:
                raise UserError(
                    f"data.{name}={value} is shorter than the longest tokenized sequence "
                    f"({longest}); raise it, set 0 (automatic) or lower data.{limit}"
                )
        if row_bucket % row_multiple:
            raise ValueError(f"{row_bucket=} must be a multiple of {row_multiple=}")
        self.spec = packing.choose_pack_spec(
            self._enc_len,
            self._dec_len,
            pairs_per_example=self.pairs.pairs_per_example,
            examples_per_micro_batch=batch_size // grad_steps,
            grad_steps=grad_steps,
            row_multiple=row_multiple,
            input_length=pack_input_length,
            target_length=pack_target_length,
            row_bucket=row_bucket,
            attention_length=attention_length,
        )
        self.pack_input_length = self.spec.input_length
        self.pack_target_length = self.spec.target_length
        self.row_bucket = self.spec.row_bucket

        # uint32 shuffle seed derived from any int seed; grain reshuffles each epoch.
        shuffle_seed = int(np.random.SeedSequence(seed & (2**64 - 1)).generate_state(1)[0])
        self._example_ids = (
            grain.MapDataset.range(self.num_examples)
            .shuffle(seed=shuffle_seed)
            .repeat()
            .batch(batch_size)
        )
        self._batches = self._example_ids.map(self._build)  # step -> (batch, stats)
        self._prefetch = prefetch
        self._iter: Iterator | None = None
        self.step = 0  # index of the next batch
        self._real_tokens = 0
        self._slots = 0
        self.row_counts: set[int] = set()  # rows per micro-batch of the batches returned
        self.shapes: tuple[int, ...] = ()  # () = each step at the rows it needs
        log.info(
            "Packed train batches: pack lengths %d/%d, ~%.1f rows per micro-batch (bucket %d), "
            "estimated padding %.1f%%",
            self.pack_input_length,
            self.pack_target_length,
            self.spec.expected_rows,
            self.row_bucket,
            100 * self.spec.estimated_padding,
        )

    # ---- planning (identical on every process) ----

    def examples_at(self, step: int) -> np.ndarray:
        """Record indices of the `batch_size` examples of `step` (micro-batches share them)."""
        return np.asarray(self._example_ids[step], np.int64)

    def _plan(
        self, example_ids: np.ndarray, fit: bool = True
    ) -> tuple[np.ndarray, np.ndarray, int]:
        """The step's pair ids, their global rows, and rows per micro-batch (all processes),
        fitted to `shapes` unless `fit` is False."""
        pair_ids = packing.pair_ids_of(example_ids, self.pairs.pairs_per_example)
        # All the step's pairs in one pool; row g goes to micro-batch g // rows_per_micro.
        rows, total = packing.pack_rows(
            self._enc_len[pair_ids],
            self._dec_len[pair_ids],
            self.pack_input_length,
            self.pack_target_length,
            granularity=self.grad_steps * self.row_bucket,
            min_rows=self.grad_steps * self.spec.min_rows,
        )
        rows_per_micro = total // self.grad_steps
        if not fit:
            return pair_ids, rows, rows_per_micro
        shape = next((r for r in self.shapes if r >= rows_per_micro), rows_per_micro)
        # Same rows; the shape's extra rows stay empty at the end of each micro-batch.
        rows = rows // rows_per_micro * shape + rows % rows_per_micro
        return pair_ids, rows, shape

    def needed_row_counts(self, stop: int) -> dict[int, int]:
        """{rows per micro-batch: number of steps} that steps [0, stop) need (plans only)."""
        plans = (self._plan(self.examples_at(s), fit=False) for s in range(stop))
        return dict(sorted(collections.Counter(rows for _, _, rows in plans).items()))

    def fix_row_counts(self, shapes) -> None:
        """Pads every step's rows up to the smallest of `shapes` that holds them (the row
        counts compiled ahead, e.g. `packing.choose_row_counts`); the plan is unchanged."""
        self.shapes = tuple(sorted(int(r) for r in shapes))

    def _stats(self, pair_ids: np.ndarray, rows_per_micro: int) -> tuple[int, int]:
        real = int(self._enc_len[pair_ids].sum() + self._dec_len[pair_ids].sum())
        width = self.pack_input_length + self.pack_target_length
        return real, self.grad_steps * rows_per_micro * width

    def estimate_padding(self, num_steps: int = 16) -> float:
        """Padding fraction over the first `num_steps` steps, from plans alone (cheap)."""
        plans = [self._plan(self.examples_at(step)) for step in range(num_steps)]
        real, slots = np.sum([self._stats(ids, rows) for ids, _, rows in plans], axis=0)
        return 1.0 - real / slots

    # ---- building this process's rows ----

    def _build(self, example_ids: np.ndarray) -> tuple[dict[str, np.ndarray], tuple]:
        pair_ids, rows, rows_per_micro = self._plan(example_ids)
        local = rows_per_micro // self.process_count
        lo = self.process_index * local
        batch = empty_batch(self.grad_steps, local, self.pack_input_length, self.pack_target_length)
        micro, row_in_micro = np.divmod(rows, rows_per_micro)
        keep = np.nonzero((row_in_micro >= lo) & (row_in_micro < lo + local))[0]
        keep = keep[np.argsort(rows[keep], kind="stable")]  # by row, then batch order
        # Row of each kept pair in this process's [grad_steps * local] rows.
        ids, row = pair_ids[keep], micro[keep] * local + row_in_micro[keep] - lo
        first = np.searchsorted(row, row, side="left")  # index of the row's first pair
        seg = (np.arange(len(row)) - first + 1).astype(np.int32)  # 1, 2, ... per row
        for side, seqs in (("encoder", self.pairs.encoder), ("decoder", self.pairs.decoder)):
            _scatter(batch, side, seqs, ids, row, seg, self.pairs.is_rationale)
        return batch, (*self._stats(pair_ids, rows_per_micro), rows_per_micro)

    # ---- iterator protocol and state ----

    def batch_at(self, step: int) -> dict[str, np.ndarray]:
        """The batch of `step` (0-based) for this process; a pure function of (seed, step)."""
        return self._batches[step][0]

    def __iter__(self) -> TrainIterator:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._iter is None:
            options = grain.ReadOptions(
                num_threads=1 if self._prefetch else 0, prefetch_buffer_size=self._prefetch
            )
            self._iter = iter(self._batches.to_iter_dataset(options))
            if self.step:
                self._iter.set_state({"next_index": self.step})
        batch, (real, slots, num_rows) = next(self._iter)
        self.step += 1
        self._real_tokens += real
        self._slots += slots
        self.row_counts.add(num_rows)
        return batch

    @property
    def padding_fraction(self) -> float:
        """Pad share of encoder+decoder slots in the global batches returned so far."""
        return 1.0 - self._real_tokens / self._slots if self._slots else float("nan")

    def get_state(self) -> dict[str, int]:
        """JSON-serialisable position; `set_state` on a same-data iterator resumes exactly."""
        return {"step": self.step, **{key: getattr(self, key) for key in _SAME_ON_RESUME}}

    def set_state(self, state: Mapping[str, int]) -> None:
        """Continue from `state` (from `get_state`): the next batch is batch `state['step']`."""
        for key in _SAME_ON_RESUME:
            if key in state and state[key] != getattr(self, key):
                raise UserError(
                    f"data iterator checkpoint has {key}={state[key]} but this run has "
                    f"{getattr(self, key)}; resume with the same data and batch size"
                )
        self.step = int(state["step"])
        self._iter = None  # reopened lazily at the new position


def _scatter(batch, side, seqs: Sequences, ids, row, seg, is_rationale) -> None:
    """Write the pairs `ids` (sorted by row, counted over all micro-batches) into their rows,
    vectorised."""
    lengths = seqs.lengths[ids]  # [n]
    width = batch[f"{side}_segment_ids"].shape[-1]
    # Start of each sequence within its row: exclusive cumulative length within the row.
    before = np.cumsum(lengths) - lengths  # tokens of earlier pairs (all rows)
    starts = before - before[np.searchsorted(row, row, side="left")]
    item = np.repeat(np.arange(len(ids)), lengths)  # [tokens] which pair each token is of
    within = np.arange(int(lengths.sum())) - before[item]  # position within its sequence
    src = seqs.offsets[ids][item] + within
    dst = row[item] * width + starts[item] + within
    flat = lambda name: batch[name].reshape(-1)  # views into the batch arrays
    flat(f"{side}_segment_ids")[dst] = seg[item]
    if side == "encoder":
        flat("encoder_input_tokens")[dst] = seqs.tokens[src]
        return
    flat("decoder_target_tokens")[dst] = seqs.tokens[src]
    # Shift right within each segment: position 0 of a segment gets 0 (decoder start).
    flat("decoder_input_tokens")[dst] = np.where(within > 0, seqs.tokens[src - 1], 0)
    rationale = is_rationale[ids][item]  # [tokens] bool
    flat("label_weights")[dst] = ~rationale
    flat("rationale_weights")[dst] = rationale
