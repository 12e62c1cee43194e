"""Records -> token ids: task prefixes, truncation with EOS, flat sequence storage.

`task_prefix` records give two (encoder, decoder) pairs, ("predict: " + input -> label) and
("explain: " + input -> rationale); `standard` ones (input -> label). Every sequence is
truncated and ends with EOS, as the HF T5 tokenizer does with `truncation=True`. Tokens are
stored flat with offsets: a few arrays instead of millions of small Python lists.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import tqdm

from distill_jax.errors import UserError

PREFIXES = {"predict": "predict: ", "explain": "explain: ", "standard": ""}
MODEL_TYPES = ("task_prefix", "standard")
_TOKENIZE_CHUNK = 4096


class TokenizerLike(Protocol):
    pad_id: int
    eos_id: int

    def encode_batch(self, texts: list[str]) -> list[list[int]]: ...


@dataclasses.dataclass(frozen=True)
class Sequences:
    """Variable-length token sequences, flat: sequence k is tokens[offsets[k] : offsets[k + 1]]."""

    tokens: np.ndarray  # [total_tokens] int32
    offsets: np.ndarray  # [num_sequences + 1] int64

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, k: int) -> np.ndarray:
        return self.tokens[self.offsets[k] : self.offsets[k + 1]]

    @property
    def lengths(self) -> np.ndarray:  # [num_sequences] int64
        return np.diff(self.offsets)


def encode_truncated(
    tokenizer: TokenizerLike, texts: Sequence[str], max_length: int, desc: str = "tokenize"
) -> Sequences:
    """Tokenize texts; keep at most max_length - 1 tokens and append EOS (HF T5 truncation)."""
    if max_length < 1:
        raise ValueError(f"max length for {desc} must be >= 1, got {max_length}")
    eos = tokenizer.eos_id
    chunks = []
    with tqdm.tqdm(total=len(texts), desc=desc, disable=len(texts) < 50_000, leave=False) as bar:
        for start in range(0, len(texts), _TOKENIZE_CHUNK):
            ids = tokenizer.encode_batch(list(texts[start : start + _TOKENIZE_CHUNK]))
            chunks += [np.asarray([*seq[: max_length - 1], eos], np.int32) for seq in ids]
            bar.update(len(ids))
    lengths = np.array([len(c) for c in chunks], np.int64)
    tokens = np.concatenate(chunks) if chunks else np.zeros(0, np.int32)
    return Sequences(tokens, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))


@dataclasses.dataclass(frozen=True)
class TokenizedPairs:
    """Tokenized (encoder, decoder) pairs; pair k of example i has index i * pairs_per_example + k
    (task_prefix: k=0 the predict/label pair, k=1 the explain/rationale pair)."""

    encoder: Sequences
    decoder: Sequences
    is_rationale: np.ndarray  # [num_pairs] bool
    pairs_per_example: int


def text_field(records: Sequence[Mapping[str, Any]], key: str) -> list[str]:
    """The string field `key` of every record; UserError naming the record otherwise."""
    out = []
    for i, r in enumerate(records):
        value = r.get(key)
        if not isinstance(value, str):
            raise UserError(f"record {i}: field {key!r} must be a string, got {value!r:.80}")
        out.append(value)
    return out


def tokenize_pairs(
    records: Sequence[Mapping[str, Any]],
    tokenizer: TokenizerLike,
    *,
    model_type: str,
    max_input_length: int,
    max_target_length: int,
    label_key: str = "label",
) -> TokenizedPairs:
    """Tokenize records into the model's (encoder, decoder) pairs (see module docstring)."""
    if model_type not in MODEL_TYPES:
        raise ValueError(f"model_type must be one of {MODEL_TYPES}, got {model_type!r}")
    inputs = text_field(records, "input")
    labels = text_field(records, label_key)
    if model_type == "standard":
        enc = encode_truncated(tokenizer, inputs, max_input_length, "tokenize inputs")
        dec = encode_truncated(tokenizer, labels, max_target_length, "tokenize labels")
        return TokenizedPairs(enc, dec, np.zeros(len(records), bool), 1)
    rationales = text_field(records, "rationale")
    # Interleave so that pair 2i is example i's predict pair and 2i+1 its explain pair.
    enc_texts = [p + x for x in inputs for p in (PREFIXES["predict"], PREFIXES["explain"])]
    dec_texts = [t for pair in zip(labels, rationales, strict=True) for t in pair]
    enc = encode_truncated(tokenizer, enc_texts, max_input_length, "tokenize inputs")
    dec = encode_truncated(tokenizer, dec_texts, max_target_length, "tokenize targets")
    return TokenizedPairs(enc, dec, np.tile([False, True], len(records)), 2)
