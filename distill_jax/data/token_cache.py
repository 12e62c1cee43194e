"""Token ids cached next to the prepared records, so a start or resume does not re-tokenize.

`tokenize_pairs_cached(records, tokenizer, ...)` returns what `features.tokenize_pairs` would.
For records prepared by the builder (`RecordSource.cache_dir` set) it keeps the arrays in

    <cache_dir>/<split>-<key>/{encoder,decoder}_{tokens,offsets}.npy, is_rationale.npy, meta.json

where `<key>` hashes everything the ids depend on: the tokenizer (`tokenizer_fingerprint`: a
hash of the files it saves), model_type, the length limits, the label field, the task
prefixes and `CACHE_VERSION`. The records themselves are fixed by the prepared directory
(keyed on the raw files' contents). A hit memory-maps the arrays and never reads the records.

Multi-host: process 0 looks for the cache and writes it if missing, the others wait and read it
(`distill_jax/multihost.py`). Writes are atomic: a temporary directory renamed into place.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pathlib
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from distill_jax import multihost
from distill_jax.data import features
from distill_jax.data.features import Sequences, TokenizedPairs, TokenizerLike

# Bump when the ids a tokenizer gives for the same files may change (e.g. a new backend).
CACHE_VERSION = 1
_ARRAYS = ("encoder_tokens", "encoder_offsets", "decoder_tokens", "decoder_offsets")

log = logging.getLogger(__name__)


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """sha256 of the files `tokenizer.save(dir)` writes: equal files, equal ids."""
    digest = hashlib.sha256()
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save(tmp)
        for path in sorted(pathlib.Path(tmp).rglob("*")):
            if path.is_file():
                digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def cache_key(tokenizer: Any, split: str, **settings: Any) -> str:
    """Directory name of the cached ids of `split` under these tokenisation settings."""
    blob = json.dumps(
        {
            "tokenizer": tokenizer_fingerprint(tokenizer),
            "settings": settings,
            "prefixes": features.PREFIXES,
            "version": CACHE_VERSION,
        },
        sort_keys=True,
    )
    return f"{split}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


def tokenize_pairs_cached(
    records: Sequence[Mapping[str, Any]],
    tokenizer: TokenizerLike,
    *,
    model_type: str,
    max_input_length: int,
    max_target_length: int,
    label_key: str = "label",
) -> TokenizedPairs:
    """`features.tokenize_pairs`, cached when `records` has a `cache_dir` (module docstring)."""
    settings = dict(
        model_type=model_type,
        max_input_length=max_input_length,
        max_target_length=max_target_length,
        label_key=label_key,
    )
    cache_dir = getattr(records, "cache_dir", None)
    if cache_dir is None:  # records in memory: nothing to key a cache on
        return features.tokenize_pairs(records, tokenizer, **settings)
    path = pathlib.Path(cache_dir) / cache_key(tokenizer, records.split, **settings)
    if multihost.process0_says((path / "meta.json").is_file()):
        log.info("Reusing the token ids cached in %s", path)
    else:

        def write() -> None:
            pairs = features.tokenize_pairs(records, tokenizer, **settings)
            save(pairs, path, num_records=len(records), **settings)

        multihost.on_process0(write, f"tokenizing the records into {path}")
    pairs = load(path)
    if pairs.num_examples != len(records):  # a cache of other records: never expected
        raise ValueError(f"{path}: {pairs.num_examples} examples cached, {len(records)} records")
    return pairs


def save(pairs: TokenizedPairs, path: pathlib.Path, **meta: Any) -> None:
    """Writes `pairs` to `path` atomically (a temporary directory, then a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
    try:
        arrays = {
            "encoder_tokens": pairs.encoder.tokens,
            "encoder_offsets": pairs.encoder.offsets,
            "decoder_tokens": pairs.decoder.tokens,
            "decoder_offsets": pairs.decoder.offsets,
            "is_rationale": pairs.is_rationale,
        }
        for name, array in arrays.items():
            np.save(tmp / f"{name}.npy", array)
        meta = {**meta, "pairs_per_example": pairs.pairs_per_example}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
        os.rename(tmp, path)
    except OSError:
        if not (path / "meta.json").is_file():  # not a concurrent job that got there first
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load(path: pathlib.Path) -> TokenizedPairs:
    """The pairs `save` wrote, memory-mapped (read-only)."""
    meta = json.loads((path / "meta.json").read_text())
    arr = {name: np.load(path / f"{name}.npy", mmap_mode="r") for name in _ARRAYS}
    return TokenizedPairs(
        Sequences(arr["encoder_tokens"], arr["encoder_offsets"]),
        Sequences(arr["decoder_tokens"], arr["decoder_offsets"]),
        np.load(path / "is_rationale.npy"),
        int(meta["pairs_per_example"]),
    )
