"""Turning a config into what the trainer needs: records, tokenizer, model config, mesh, and
the initial (fresh, pretrained or restored) train state."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging

from distill_jax import config_check, multihost, sharding
from distill_jax.data import builder, sources
from distill_jax.errors import UserError
from distill_jax.model import config as model_config
from distill_jax.model import hf_io
from distill_jax.model.t5 import T5
from distill_jax.tokenizer import Tokenizer
from distill_jax.train.checkpoint import Checkpoints
from distill_jax.train.state import (
    TrainState,
    abstract_train_state,
    init_train_state,
    make_optimizer,
    state_from_params,
)

TOKENIZER_DIR = "tokenizer"
COMPILE_CACHE_DIR = "compile_cache"
# data.* fields read after the records are prepared: the train batches' tokenisation and packing.
PACKING_FIELDS = (
    "max_input_length",
    "max_target_length",
    "pack_input_length",
    "pack_target_length",
    "row_bucket",
)


def load_records(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> dict[str, Any]:
    """Processed records per split, prepared once into the data dir and reused; keyed by the
    data config, the seed and the raw files' contents (sha256: a copied or touched file reuses
    the prepared data, any edit rebuilds it, even one that keeps the size and mtime)."""
    out_dir = pathlib.Path(config.data.prepared_dir or workdir / "prepared")
    data = config.data.to_dict()
    for key in ("prepared_dir", *PACKING_FIELDS):
        data.pop(key, None)  # where the records live and how they are packed don't change them
    files = builder.file_fingerprint(sources.raw_files(config.data))
    fingerprint = {"data": data, "seed": config.seed, "files": files}
    digest = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:12]
    return builder.prepare(
        lambda: sources.load_splits(config.data, config.seed),
        fingerprint,
        out_dir / f"{config.data.name}-{digest}",
    )


def load_tokenizer(config, workdir: pathlib.Path, train_records, pretrained_dir) -> Tokenizer:
    """The pretrained model's tokenizer, or a SentencePiece vocabulary trained on the data and
    saved in the workdir (reused on resume, so ids never change under a checkpoint)."""
    if pretrained_dir is not None:
        return Tokenizer.from_dir(pretrained_dir)
    tok_dir = workdir / TOKENIZER_DIR
    # Process 0 looks and every process follows its answer (the race: distill_jax/multihost.py).
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
    texts = [r[k] for r in train_records for k in ("input", "label", "rationale") if r.get(k)]
    logging.info("training a %d-piece SentencePiece vocabulary on %d texts", vocab_size, len(texts))
    Tokenizer.train(texts, vocab_size, tok_dir)


def build_model_config(config, tokenizer: Tokenizer, pretrained_cfg=None):
    """The T5Config to train: the pretrained one, or the preset sized to our vocabulary."""
    m, cfg = config.model, pretrained_cfg
    if cfg is None:
        # Round the embedding up to a multiple of 128: TPU/GPU friendly, and spare rows are inert.
        vocab_size = -(-tokenizer.vocab_size // 128) * 128
        cfg = dataclasses.replace(model_config.get_preset(m.preset), vocab_size=vocab_size)
    dtype = config.dtype
    if dtype == "auto":  # bf16 compute on GPU/TPU, float32 on CPU
        dtype = "float32" if jax.default_backend() == "cpu" else "bfloat16"
    overrides = dict(dtype=dtype, **{k: m[k] for k in ("scan_layers", "remat_policy", "attention")})
    if m.dropout_rate is not None:
        overrides["dropout_rate"] = float(m.dropout_rate)
    if cfg.vocab_size < tokenizer.vocab_size:
        raise UserError(
            f"model vocab_size {cfg.vocab_size} is smaller than the tokenizer's "
            f"{tokenizer.vocab_size} pieces."
        )
    return dataclasses.replace(cfg, **overrides)


class ModelSetup:
    """What the trainer, `predict` and `export` share: tokenizer, model config, mesh, optimizer
    and the train state traced (never allocated) with its shardings."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: pathlib.Path, train_records):
        self.config = config
        pretrained_dir = pretrained_cfg = None
        self.pretrained_params = None  # host numpy params, or None when training from scratch
        if config.model.from_pretrained:
            pretrained_dir = hf_io.resolve_pretrained(config.model.from_pretrained)
            pretrained_cfg, self.pretrained_params = hf_io.load_pretrained(
                str(pretrained_dir), scan_layers=config.model.scan_layers
            )
        self.tokenizer = load_tokenizer(config, workdir, train_records, pretrained_dir)
        self.model_cfg = cfg = build_model_config(config, self.tokenizer, pretrained_cfg)
        config_check.validate_model(config, cfg)  # the mesh against the model's dims
        self.model = T5(cfg)
        self.mesh = sharding.create_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
        self.tx = make_optimizer(config.train)
        with sharding.activate(self.mesh):
            # ShapeDtypeStructs carrying the target shardings, and those shardings
            self.abstract_state, self.state_shardings = abstract_train_state(
                self.init_params, self.tx, self.mesh, jax.random.key(config.seed)
            )
        n = sum(x.size for x in jax.tree.leaves(self.abstract_state.params))
        logging.info("model: %s, %.1fM parameters, mesh %s", cfg, n / 1e6, dict(self.mesh.shape))

    def init_params(self, rng: jax.Array):
        """Random params, boxed with their logical axis names."""
        tokens = jnp.ones((1, 8), jnp.int32)
        return self.model.init({"params": rng}, tokens, tokens)["params"]

    def initial_state(self, ckpts: Checkpoints) -> tuple[TrainState, int, dict | None]:
        """(state, first step, data-iterator state): the latest checkpoint if any, else
        pretrained or random weights (and no iterator state)."""
        with sharding.activate(self.mesh):
            restored = ckpts.restore_latest(self.abstract_state)
            if restored is not None:
                latest, state, data_state = restored
                logging.info("resumed from step %d", latest)
                return state, latest, data_state
            if self.pretrained_params is not None:
                state = state_from_params(self.pretrained_params, self.tx, self.state_shardings)
                return state, 0, None
            rng = jax.random.key(self.config.seed)
            return init_train_state(self.init_params, self.tx, self.state_shardings, rng), 0, None


def use_compilation_cache(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> None:
    """Points JAX's persistent compilation cache at <workdir>/compile_cache (config field
    `compilation_cache`), unless a cache directory is already set (JAX_COMPILATION_CACHE_DIR):
    a resume loads its compiled programs. Only process 0 writes entries (JAX's rule)."""
    if config.compilation_cache and not jax.config.jax_compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", str(workdir / COMPILE_CACHE_DIR))
