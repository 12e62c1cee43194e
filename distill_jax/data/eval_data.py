"""Eval batches: unpacked, sorted by length, length-bucketed, split across processes.

Inputs are tokenized once per `EvalSet` (task prefix, truncated, ending with EOS); each batch is
padded to `bucket_length` of its longest input so that few shapes (decoder compilations) occur.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from distill_jax.data import packing
from distill_jax.data.features import PREFIXES, TokenizerLike, encode_truncated, text_field
from distill_jax.errors import UserError


def bucket_length(n: int) -> int:
    """Padded eval length for n tokens: 32, 64, 96, 128, 192, 256, 384, 512, 768, 1024, ...:
    few shapes (decoding compiles once per length), at most a third of the slots padding."""
    size = 32
    while size < n:
        if size >= 64 and size * 3 // 2 >= n:
            return size * 3 // 2
        size *= 2
    return size


class EvalSet:
    """Eval inputs tokenized once, for `batches`: `records` (dicts, their 'input' used, or the
    input strings) with the prefix of `task` ('predict', 'explain' or 'standard': none)."""

    def __init__(
        self,
        records: Sequence[Mapping[str, Any] | str],
        tokenizer: TokenizerLike,
        *,
        task: str = "standard",
        max_input_length: int,
    ):
        if task not in PREFIXES:
            raise UserError(f"eval task must be one of {list(PREFIXES)}, got {task!r}")
        strings = all(isinstance(r, str) for r in records)
        inputs = list(records) if strings else text_field(records, "input")
        texts = [PREFIXES[task] + x for x in inputs]
        self.inputs = encode_truncated(tokenizer, texts, max_input_length, f"tokenize {task}")
        self.eos_id = tokenizer.eos_id

    def __len__(self) -> int:
        return len(self.inputs)

    def batches(
        self,
        batch_size: int,
        *,
        row_multiple: int = 1,
        process_index: int = 0,
        process_count: int = 1,
    ) -> Iterator[dict[str, np.ndarray]]:
        """This process's contiguous share of each global batch (same shapes everywhere).

        Global batches take `batch_size` rows rounded up to a multiple of `row_multiple`,
        longest inputs first (memory problems show at once): 'encoder_input_tokens' int32
        [local, length]; 'indices' int64 [local] (record index, -1 for filler rows); 'mask'
        bool [local] (indices >= 0); 'global_indices' int64 [global_batch], the indices of all
        processes' rows in order, to map all-gathered outputs back. Filler rows hold a lone EOS
        (never an all-padding row, which some attention masks turn into NaN).
        """
        if row_multiple % process_count:
            raise ValueError(f"{row_multiple=} must be a multiple of {process_count=}")
        global_batch = packing.round_up(max(batch_size, 1), row_multiple)
        lengths = self.inputs.lengths
        order = np.argsort(-lengths, kind="stable")
        local = global_batch // process_count
        for start in range(0, len(order), global_batch):
            indices = order[start : start + global_batch]
            length = bucket_length(int(lengths[indices].max()))
            indices = np.pad(indices, (0, global_batch - len(indices)), constant_values=-1)
            idx = indices[process_index * local : (process_index + 1) * local]
            tokens = np.zeros((local, length), np.int32)  # [local, length]
            for j, k in enumerate(idx):
                seq = self.inputs[k] if k >= 0 else [self.eos_id]
                tokens[j, : len(seq)] = seq
            yield {
                "encoder_input_tokens": tokens,
                "indices": idx,
                "mask": idx >= 0,
                "global_indices": indices,
            }


def eval_batches(
    records: Sequence[Mapping[str, Any] | str],
    tokenizer: TokenizerLike,
    *,
    batch_size: int,
    max_input_length: int,
    task: str = "standard",
    **placement: int,
) -> Iterator[dict[str, np.ndarray]]:
    """One-shot `EvalSet(...).batches(batch_size, **placement)` (`row_multiple`,
    `process_index`, `process_count`); keep an EvalSet to avoid re-tokenizing."""
    evalset = EvalSet(records, tokenizer, task=task, max_input_length=max_input_length)
    return evalset.batches(batch_size, **placement)
