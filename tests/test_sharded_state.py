"""Params and optimizer state land sharded on the mesh as the logical-axis rules say.

The tiny preset (d_model 128, 4 heads of 32, d_ff 256, vocab 384) on the 4 fake CPU devices of
tests/conftest.py, for pure data parallel (4,1,1), FSDP (1,4,1) and FSDP x tensor (1,2,2).
Adam's moments must be sharded like their parameter; Adafactor's factored second moments
(vectors of another shape) are replicated, its unfactored ones sharded like the parameter.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import optax
import pytest

from distill_jax import sharding
from distill_jax.model.config import get_preset
from distill_jax.model.t5 import T5
from distill_jax.train.state import abstract_train_state, init_train_state, make_optimizer

CFG = dataclasses.replace(get_preset("t5-v1_1-tiny"), vocab_size=384, dropout_rate=0.0)
MESHES = [(4, 1, 1), (1, 4, 1), (1, 2, 2)]

EMBED = ("shared", "embedding")  # [vocab 384, embed 128]
QUERY = ("encoder", "layers_0", "attention", "query", "kernel")  # [embed 128, heads 4, kv 32]
WI = ("decoder", "layers_1", "mlp", "wi_0", "kernel")  # [embed 128, mlp 256]
WO = ("encoder", "layers_1", "mlp", "wo", "kernel")  # [mlp 256, embed 128]
NORM = ("encoder", "encoder_norm", "scale")  # [embed 128]

# Expected shard shapes per mesh: vocab, mlp, heads -> tensor; embed -> fsdp; data replicates.
SHARD_SHAPES = {
    (4, 1, 1): {EMBED: (384, 128), QUERY: (128, 4, 32), WI: (128, 256), WO: (256, 128),
                NORM: (128,)},
    (1, 4, 1): {EMBED: (384, 32), QUERY: (32, 4, 32), WI: (32, 256), WO: (256, 32),
                NORM: (32,)},
    (1, 2, 2): {EMBED: (192, 64), QUERY: (64, 2, 32), WI: (64, 128), WO: (128, 64),
                NORM: (64,)},
}  # fmt: skip


def optimizer(name: str) -> optax.GradientTransformation:
    return make_optimizer(
        ml_collections.ConfigDict(
            dict(optimizer=name, lr=1e-3, warmup_steps=0, max_steps=10, max_grad_norm=1.0,
                 weight_decay=0.0)
        )
    )  # fmt: skip


def init_params_fn(rng):
    tokens = jnp.ones((1, 8), jnp.int32)
    return T5(CFG).init({"params": rng}, tokens, tokens)["params"]


def get(tree, path):
    for key in path:
        tree = tree[key]
    return tree


def shard_shape(x) -> tuple[int, ...]:
    """The shape of one device's shard (of an array, or of a sharded ShapeDtypeStruct)."""
    return tuple(x.sharding.shard_shape(x.shape))


def opt_part(opt_state, kind):
    """The inner optimizer state (after clip_by_global_norm) of `kind`."""
    found = [
        s for s in jax.tree.leaves(opt_state, is_leaf=lambda s: isinstance(s, kind))
        if isinstance(s, kind)
    ]  # fmt: skip
    assert len(found) == 1, opt_state
    return found[0]


def abstract_state(mesh_shape, opt_name):
    mesh = sharding.create_mesh(*mesh_shape)
    tx = optimizer(opt_name)
    with sharding.activate(mesh):
        abstract, shardings = abstract_train_state(init_params_fn, tx, mesh, jax.random.key(0))
    return mesh, tx, abstract, shardings


@pytest.mark.parametrize("mesh_shape", MESHES)
def test_adamw_moments_are_sharded_like_their_params(mesh_shape):
    _, _, abstract, _ = abstract_state(mesh_shape, "adamw")
    adam = opt_part(abstract.opt_state, optax.ScaleByAdamState)
    for path, expected in SHARD_SHAPES[mesh_shape].items():
        assert shard_shape(get(abstract.params, path)) == expected, path
        assert shard_shape(get(adam.mu, path)) == expected, ("mu", path)
        assert shard_shape(get(adam.nu, path)) == expected, ("nu", path)
    assert shard_shape(adam.count) == ()


@pytest.mark.parametrize("mesh_shape", MESHES)
def test_adafactor_factors_are_replicated_and_unfactored_moments_sharded(mesh_shape):
    _, _, abstract, _ = abstract_state(mesh_shape, "adafactor")
    fac = opt_part(abstract.opt_state, optax.FactoredState)
    for path, expected in SHARD_SHAPES[mesh_shape].items():
        param = get(abstract.params, path)
        assert shard_shape(param) == expected, path
        if len(param.shape) >= 2:  # factored: row/col vectors, small, replicated
            for factor in (get(fac.v_row, path), get(fac.v_col, path)):
                assert factor.shape != param.shape
                assert shard_shape(factor) == factor.shape, path
        else:  # a vector keeps a full second moment, sharded like the parameter
            assert shard_shape(get(fac.v, path)) == expected, path


@pytest.mark.parametrize("opt_name", ["adamw", "adafactor"])
def test_initialised_state_lands_in_those_shards(opt_name):
    """The jitted init really places every device's piece (mesh (1,2,2): both axes used)."""
    mesh_shape = (1, 2, 2)
    mesh, tx, abstract, shardings = abstract_state(mesh_shape, opt_name)
    with sharding.activate(mesh):
        state = init_train_state(init_params_fn, tx, shardings, jax.random.key(0))
    for want, got in zip(jax.tree.leaves(abstract), jax.tree.leaves(state), strict=True):
        assert got.shape == want.shape and got.sharding.is_equivalent_to(want.sharding, got.ndim)
        assert {s.data.shape for s in got.addressable_shards} == {shard_shape(want)}
    embed = get(state.params, EMBED)
    assert len(embed.addressable_shards) == 4
    assert {s.data.shape for s in embed.addressable_shards} == {SHARD_SHAPES[mesh_shape][EMBED]}
    if opt_name == "adamw":
        mu = get(opt_part(state.opt_state, optax.ScaleByAdamState).mu, WI)
        assert {s.data.shape for s in mu.addressable_shards} == {SHARD_SHAPES[mesh_shape][WI]}
