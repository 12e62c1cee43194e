"""Turning a config into what the trainer needs: records, tokenizer, model config, dtype."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
from typing import Any

import jax
import ml_collections
from absl import logging

from distill_jax import multihost
from distill_jax.data import builder, sources
from distill_jax.errors import UserError
from distill_jax.model import config as model_config
from distill_jax.tokenizer import Tokenizer

TOKENIZER_DIR = "tokenizer"
# data.* fields read after the records are prepared (tokenisation, packing, where they live).
TOKENIZATION_FIELDS = (
    "prepared_dir",
    "max_input_length",
    "max_target_length",
    "pack_input_length",
    "pack_target_length",
    "row_bucket",
)


def compute_dtype(name: str) -> str:
    """'auto' means bf16 compute on GPU/TPU and float32 on CPU."""
    if name != "auto":
        return name
    return "float32" if jax.default_backend() == "cpu" else "bfloat16"


def data_fingerprint(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """What the prepared records depend on: the data config, the seed, and the raw files'
    contents (sha256, `builder.file_fingerprint`): a copied or touched file reuses the
    prepared data, any edit rebuilds it, even one that keeps the size and mtime."""
    data = config.data.to_dict()
    for key in TOKENIZATION_FIELDS:
        data.pop(key, None)  # tokenisation-time settings don't change the records
    files = builder.file_fingerprint(sources.raw_files(config.data))
    return {"data": data, "seed": config.seed, "files": files}


def load_records(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> dict[str, Any]:
    """Processed records per split, prepared once into the data dir and reused."""
    out_dir = pathlib.Path(config.data.prepared_dir or workdir / "prepared")
    fingerprint = data_fingerprint(config)
    digest = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:12]
    return builder.prepare(
        lambda: sources.load_splits(config.data, config.seed),
        fingerprint,
        out_dir / f"{config.data.name}-{digest}",
    )


def load_tokenizer(config, workdir: pathlib.Path, train_records, pretrained_dir) -> Tokenizer:
    """The pretrained model's tokenizer, or a SentencePiece vocabulary trained on the data.

    A trained vocabulary is saved in the workdir and reused on resume, so ids never change
    under a checkpoint.
    """
    if pretrained_dir is not None:
        return Tokenizer.from_dir(pretrained_dir)
    tok_dir = workdir / TOKENIZER_DIR
    # Process 0 looks and every process follows its answer (distill_jax/multihost.py): a
    # process that looked itself after process 0 had written the file would skip the barrier.
    if not multihost.process0_says((tok_dir / "spiece.model").exists()):
        if train_records is None:  # eval/predict/export: the vocabulary comes from training
            raise UserError(
                f"{tok_dir}: no trained tokenizer (spiece.model) and config field "
                "model.from_pretrained is empty: train in this --workdir first, or point "
                "model.from_pretrained at a HF T5 model."
            )
        multihost.on_process0(
            lambda: _train_tokenizer(train_records, config.model.vocab_size, tok_dir),
            "training the tokenizer",
        )
    return Tokenizer.from_dir(tok_dir)  # the others read what process 0 wrote (shared workdir)


def _train_tokenizer(train_records, vocab_size: int, tok_dir: pathlib.Path) -> None:
    texts = []
    for r in train_records:
        texts += [r["input"], r["label"]] + ([r["rationale"]] if r.get("rationale") else [])
    logging.info("training a %d-piece SentencePiece vocabulary on %d texts", vocab_size, len(texts))
    Tokenizer.train(texts, vocab_size, tok_dir)


def build_model_config(config, tokenizer: Tokenizer, pretrained_cfg=None):
    """The T5Config to train: the pretrained one, or the preset sized to our vocabulary."""
    dtype = compute_dtype(config.dtype)
    m = config.model
    if pretrained_cfg is not None:
        cfg = pretrained_cfg
    else:
        cfg = model_config.get_preset(m.preset)
        # Round the embedding up to a multiple of 128: TPU/GPU friendly, and spare rows are inert.
        cfg = dataclasses.replace(cfg, vocab_size=-(-tokenizer.vocab_size // 128) * 128)
    overrides = dict(dtype=dtype, scan_layers=m.scan_layers, remat_policy=m.remat_policy)
    overrides["attention"] = m.get("attention", "xla")
    if m.dropout_rate is not None:
        overrides["dropout_rate"] = float(m.dropout_rate)
    if cfg.vocab_size < tokenizer.vocab_size:
        raise UserError(
            f"model vocab_size {cfg.vocab_size} is smaller than the tokenizer's "
            f"{tokenizer.vocab_size} pieces."
        )
    return dataclasses.replace(cfg, **overrides)
