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
from jax.experimental import multihost_utils

from distill_jax.data import builder, sources
from distill_jax.errors import UserError
from distill_jax.model import config as model_config
from distill_jax.tokenizer import Tokenizer

TOKENIZER_DIR = "tokenizer"


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Rejects impossible settings up front with the offending field named."""
    t = config.train
    if not 0.0 <= t.alpha <= 1.0:
        raise UserError(f"config field train.alpha={t.alpha}: must lie in [0, 1].")
    if t.model_type not in ("task_prefix", "standard"):
        raise UserError(
            f"config field train.model_type={t.model_type!r}: use 'task_prefix' or 'standard'."
        )
    for field in ("batch_size", "grad_steps", "max_steps", "eval_steps", "log_every"):
        if int(t[field]) <= 0:
            raise UserError(f"config field train.{field}={t[field]}: must be positive.")
    if t.batch_size % t.grad_steps:
        raise UserError(
            f"config fields train.batch_size={t.batch_size} and train.grad_steps={t.grad_steps}:"
            " the batch must split evenly into micro-batches."
        )
    if config.data.label_type not in ("gt", "llm"):
        raise UserError(f"config field data.label_type={config.data.label_type!r}: 'gt' or 'llm'.")
    if not 0.0 < config.data.subsample <= 1.0:
        raise UserError(f"config field data.subsample={config.data.subsample}: must be in (0, 1].")
    if config.dtype not in ("auto", "float32", "bfloat16"):
        raise UserError(f"config field dtype={config.dtype!r}: 'auto', 'float32' or 'bfloat16'.")
    if config.data.name not in sources.SUPPORTED:
        raise UserError(
            f"config field data.name={config.data.name!r}: unknown dataset; supported: "
            f"{', '.join(sorted(sources.SUPPORTED))}."
        )


def compute_dtype(name: str) -> str:
    """'auto' means bf16 compute on GPU/TPU and float32 on CPU."""
    if name != "auto":
        return name
    return "float32" if jax.default_backend() == "cpu" else "bfloat16"


def data_fingerprint(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """What the prepared records depend on: the data config, the seed, and the raw files."""
    data = config.data.to_dict()
    for key in ("prepared_dir", "max_input_length", "max_target_length"):
        data.pop(key, None)  # tokenisation-time settings don't change the records
    data.pop("pack_input_length", None)
    data.pop("pack_target_length", None)
    data.pop("row_bucket", None)
    files = sources.raw_files(config.data)
    stats = []
    for path in files:
        p = pathlib.Path(path)
        st = p.stat() if p.exists() else None
        stats.append([str(p), st.st_size if st else -1, st.st_mtime_ns if st else -1])
    return {"data": data, "seed": config.seed, "files": stats}


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
    if (tok_dir / "spiece.model").exists():
        return Tokenizer.from_dir(tok_dir)
    if train_records is None:  # eval/predict/export: the vocabulary comes from training
        raise UserError(
            f"{tok_dir}: no trained tokenizer (spiece.model) and config field "
            "model.from_pretrained is empty: train in this --workdir first, or point "
            "model.from_pretrained at a HF T5 model."
        )
    if jax.process_index() == 0:
        texts = []
        for r in train_records:
            texts += [r["input"], r["label"]] + ([r["rationale"]] if r.get("rationale") else [])
        logging.info(
            "training a %d-piece SentencePiece vocabulary on %d texts",
            config.model.vocab_size,
            len(texts),
        )
        Tokenizer.train(texts, config.model.vocab_size, tok_dir)
    if jax.process_count() > 1:  # the others read what process 0 wrote (shared workdir)
        multihost_utils.sync_global_devices("tokenizer trained")
    return Tokenizer.from_dir(tok_dir)


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
