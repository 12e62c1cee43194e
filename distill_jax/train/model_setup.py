"""Model, tokenizer, mesh and the initial (fresh, pretrained or restored) train state."""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from absl import logging
from jax.sharding import Mesh

from distill_jax import config_check, sharding
from distill_jax.model import hf_io
from distill_jax.model.config import T5Config
from distill_jax.model.t5 import T5
from distill_jax.tokenizer import Tokenizer
from distill_jax.train import setup
from distill_jax.train.checkpoint import Checkpoints
from distill_jax.train.state import (
    TrainState,
    abstract_train_state,
    count_params,
    init_train_state,
    state_from_params,
)


@dataclasses.dataclass
class ModelSetup:
    """What the trainer, `predict` and `export` share."""

    config: ml_collections.ConfigDict
    mesh: Mesh
    model: T5
    model_cfg: T5Config
    tokenizer: Tokenizer
    tx: optax.GradientTransformation
    abstract_state: TrainState  # ShapeDtypeStructs carrying the target shardings
    state_shardings: TrainState
    init_params_fn: Any
    pretrained_params: Any  # host numpy params, or None when training from scratch


def build(
    config: ml_collections.ConfigDict,
    workdir: pathlib.Path,
    train_records,
    tx: optax.GradientTransformation,
) -> ModelSetup:
    """Resolves tokenizer, model config and mesh; traces (never allocates) the state."""
    pretrained_dir = pretrained_cfg = pretrained_params = None
    if config.model.from_pretrained:
        pretrained_dir = hf_io.resolve_pretrained(config.model.from_pretrained)
        pretrained_cfg, pretrained_params = hf_io.load_pretrained(
            str(pretrained_dir), scan_layers=config.model.scan_layers
        )
    tokenizer = setup.load_tokenizer(config, workdir, train_records, pretrained_dir)
    model_cfg = setup.build_model_config(config, tokenizer, pretrained_cfg)
    config_check.validate_model(config, model_cfg)  # the mesh against the model's dims
    model = T5(model_cfg)
    mesh = sharding.create_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)

    def init_params_fn(rng):
        tokens = jnp.ones((1, 8), jnp.int32)
        return model.init({"params": rng}, tokens, tokens)["params"]  # boxed

    rng = jax.random.key(config.seed)
    with sharding.activate(mesh):
        abstract_state, shardings = abstract_train_state(init_params_fn, tx, mesh, rng)
    n = count_params(abstract_state.params)
    logging.info("model: %s, %.1fM parameters, mesh %s", model_cfg, n / 1e6, dict(mesh.shape))
    return ModelSetup(
        config,
        mesh,
        model,
        model_cfg,
        tokenizer,
        tx,
        abstract_state,
        shardings,
        init_params_fn,
        pretrained_params,
    )


def initial_state(ms: ModelSetup, ckpts: Checkpoints) -> tuple[TrainState, int, dict | None]:
    """(state, first step, data-iterator state): the latest checkpoint if any, else pretrained
    or random weights (and no iterator state)."""
    with sharding.activate(ms.mesh):
        restored = ckpts.restore_latest(ms.abstract_state)
        if restored is not None:
            latest, state, data_state = restored
            logging.info("resumed from step %d", latest)
            return state, latest, data_state
        if ms.pretrained_params is not None:
            return state_from_params(ms.pretrained_params, ms.tx, ms.state_shardings), 0, None
        rng = jax.random.key(ms.config.seed)
        return init_train_state(ms.init_params_fn, ms.tx, ms.state_shardings, rng), 0, None
