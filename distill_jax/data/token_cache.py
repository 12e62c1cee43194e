"""Token ids cached next to the prepared records, so a start or resume does not re-tokenize.

`tokenize_pairs_cached` returns what `features.tokenize_pairs` would. For records prepared by
the builder (`RecordSource.cache_dir` set) it keeps the arrays as `.npy` files plus meta.json in
`<cache_dir>/<split>-<key>/`, `<key>` hashing all the ids depend on: the tokenizer's saved
files, the settings, the task prefixes and `CACHE_VERSION` (the records are fixed by the
prepared directory). A hit memory-maps the arrays. Process 0 writes a missing cache and the
others wait and read it (`multihost.py`); writes are atomic (a temporary directory renamed).
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

log = logging.getLogger(__name__)


def cache_key(tokenizer: Any, split: str, **settings: Any) -> str:
    """Directory name of the cached ids of `split` under these tokenisation settings."""
    digest = hashlib.sha256()  # of the files `tokenizer.save(dir)` writes: same files, same ids
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save(tmp)
        for path in sorted(pathlib.Path(tmp).rglob("*")):
            if path.is_file():
                digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    blob = json.dumps(
        {
            "tokenizer": digest.hexdigest(),
            "settings": settings,
            "prefixes": features.PREFIXES,
            "version": CACHE_VERSION,
        },
        sort_keys=True,
    )
    return f"{split}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


def tokenize_pairs_cached(
    records: Sequence[Mapping[str, Any]], tokenizer: TokenizerLike, **settings: Any
) -> TokenizedPairs:
    """`features.tokenize_pairs(records, tokenizer, **settings)`, cached when `records` has a
    `cache_dir` (module docstring)."""
    settings = {"label_key": "label", **settings}  # keys name the default label_key too
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
    cached = len(pairs.is_rationale) // pairs.pairs_per_example
    if cached != len(records):  # a cache of other records: never expected
        raise ValueError(f"{path}: {cached} examples cached, {len(records)} records")
    return pairs


def save(pairs: TokenizedPairs, path: pathlib.Path, **meta: Any) -> None:
    """Writes `pairs` to `path` atomically (a temporary directory, then a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
    try:
        for side in ("encoder", "decoder"):
            np.save(tmp / f"{side}_tokens.npy", getattr(pairs, side).tokens)
            np.save(tmp / f"{side}_offsets.npy", getattr(pairs, side).offsets)
        np.save(tmp / "is_rationale.npy", pairs.is_rationale)
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
    seqs = lambda side: Sequences(
        np.load(path / f"{side}_tokens.npy", mmap_mode="r"),
        np.load(path / f"{side}_offsets.npy", mmap_mode="r"),
    )
    return TokenizedPairs(
        seqs("encoder"),
        seqs("decoder"),
        np.load(path / "is_rationale.npy"),
        int(meta["pairs_per_example"]),
    )
