"""Train state, optimizer, and sharded initialisation (never materialised on one device)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import linen as nn
from jax.sharding import Mesh

from distill_jax import sharding


@flax.struct.dataclass
class TrainState:
    """Everything a step changes; a plain pytree that Orbax saves as is."""

    step: jax.Array  # int32 scalar: optimizer steps taken
    params: Any  # unboxed float32 parameter tree
    opt_state: Any


def learning_rate_schedule(train_cfg: ml_collections.ConfigDict) -> optax.Schedule:
    """Linear warm-up then linear decay to 0 at max_steps (HF Trainer's 'linear' schedule)."""
    warmup = int(train_cfg.warmup_steps)
    decay = optax.linear_schedule(train_cfg.lr, 0.0, max(train_cfg.max_steps - warmup, 1))
    if warmup <= 0:
        return decay
    ramp = optax.linear_schedule(0.0, train_cfg.lr, warmup)
    return optax.join_schedules([ramp, decay], [warmup])


def make_optimizer(train_cfg: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """Global-norm clipping then AdamW (HF defaults) or Adafactor (HF's fixed-lr settings)."""
    schedule = learning_rate_schedule(train_cfg)
    if train_cfg.optimizer.lower() == "adafactor":
        # HF Adafactor(scale_parameter=False, relative_step=False) as the reference's Trainer.
        # HF factors every matrix; optax only dims >= min_dim_size_to_factor (default 128),
        # which would keep full second moments for attention kernels [d_model, heads, d_kv=64].
        opt = optax.adafactor(
            schedule, multiply_by_parameter_scale=False, min_dim_size_to_factor=32
        )
    else:  # "adamw" (config_check allows only these two)
        opt = optax.adamw(schedule, b1=0.9, b2=0.999, eps=1e-8, weight_decay=train_cfg.weight_decay)
    return optax.chain(optax.clip_by_global_norm(train_cfg.max_grad_norm), opt)


def _fresh_state(params, tx: optax.GradientTransformation) -> TrainState:
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


def abstract_train_state(
    init_params_fn: Callable[[jax.Array], Any],
    tx: optax.GradientTransformation,
    mesh: Mesh,
    rng: jax.Array,
) -> tuple[TrainState, TrainState]:
    """(abstract state, state shardings) of the boxed params `init_params_fn(rng)` returns,
    by tracing only. Their logical axes decide the params' shards (`sharding.LOGICAL_AXIS_RULES`);
    an optimizer leaf of a parameter's shape (Adam's moments, Adafactor's v) gets its sharding,
    the rest (Adafactor's factored moments, counts) is replicated."""
    abstract_boxed = jax.eval_shape(init_params_fn, rng)
    params_shardings = sharding.tree_shardings_from_boxed(mesh, abstract_boxed)
    abstract_params = jax.tree.map(  # no sharding constraint on abstract values
        lambda x: x.unbox(apply_constraint=False) if isinstance(x, nn.meta.AxisMetadata) else x,
        abstract_boxed,
        is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata),
    )
    abstract = jax.eval_shape(lambda p: _fresh_state(p, tx), abstract_params)
    replicated = sharding.replicated(mesh)
    like_param = lambda leaf, param, s: s if leaf.shape == param.shape else replicated
    opt_shardings = optax.tree_map_params(
        tx,
        like_param,
        abstract.opt_state,
        abstract_params,
        params_shardings,
        transform_non_params=lambda _: replicated,
    )
    shardings = TrainState(step=replicated, params=params_shardings, opt_state=opt_shardings)
    return sharding.with_sharding(abstract, shardings), shardings


def init_train_state(
    init_params_fn: Callable[[jax.Array], Any],
    tx: optax.GradientTransformation,
    shardings: TrainState,
    rng: jax.Array,
) -> TrainState:
    """A randomly initialised TrainState, created directly in its shards by a jitted init."""
    init = lambda rng: _fresh_state(nn.meta.unbox(init_params_fn(rng)), tx)
    return jax.jit(init, out_shardings=shardings)(rng)


def state_from_params(
    params, tx: optax.GradientTransformation, state_shardings: TrainState
) -> TrainState:
    """A fresh TrainState around given (e.g. pretrained, host-resident) params, sharded."""
    params = jax.device_put(params, state_shardings.params)
    return jax.jit(lambda p: _fresh_state(p, tx), out_shardings=state_shardings)(params)
