"""The train step's objective under accumulation and the alpha extremes (no full runs)."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from distill_jax.data import pipeline
from distill_jax.model.config import get_preset
from distill_jax.model.t5 import T5
from distill_jax.tokenizer import Tokenizer
from distill_jax.train.state import make_optimizer
from distill_jax.train.step import loss_and_grads
from tests import fixtures


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    records = fixtures.generic_records(60)
    texts = [r[k] for r in records for k in ("input", "label", "rationale")]
    return Tokenizer.train(texts, 200, tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def model_and_params(tokenizer):
    cfg = dataclasses.replace(get_preset("t5-v1_1-tiny"), vocab_size=384, dropout_rate=0.0)
    model = T5(cfg)
    tokens = jnp.ones((1, 8), jnp.int32)
    boxed = model.init({"params": jax.random.key(0)}, tokens, tokens)["params"]
    params = jax.tree.map(
        lambda x: x.unbox() if hasattr(x, "unbox") else x,
        boxed,
        is_leaf=lambda x: hasattr(x, "unbox"),
    )
    return model, params


@functools.cache
def objective(model, alpha, model_type):
    return jax.jit(
        functools.partial(
            loss_and_grads, model, alpha=alpha, model_type=model_type, enable_dropout=False
        )
    )


def first_batch(records, tokenizer, *, batch_size, grad_steps, model_type="task_prefix"):
    it = pipeline.TrainIterator(
        records,
        tokenizer,
        model_type=model_type,
        batch_size=batch_size,
        grad_steps=grad_steps,
        max_input_length=48,
        max_target_length=24,
        pack_input_length=96,
        pack_target_length=64,
        seed=0,
    )
    return it.batch_at(0), sorted(int(i) for i in it.examples_at(0))


def run(model_and_params, batch, alpha=0.5, model_type="task_prefix"):
    model, params = model_and_params
    loss, label_loss, rationale_loss, grads = objective(model, alpha, model_type)(
        params, batch, jax.random.key(0)
    )
    return float(loss), float(label_loss), float(rationale_loss), grads


def assert_trees_close(a, b, rtol=1e-5, atol=1e-6):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


@pytest.mark.parametrize("model_type", ["task_prefix", "standard"])
def test_grad_steps_two_equals_the_doubled_batch(tokenizer, model_and_params, model_type):
    records = fixtures.generic_records(48)
    one, ids_one = first_batch(
        records, tokenizer, batch_size=16, grad_steps=1, model_type=model_type
    )
    two, ids_two = first_batch(
        records, tokenizer, batch_size=16, grad_steps=2, model_type=model_type
    )
    assert ids_one == ids_two  # the same 16 examples, split into two micro-batches
    assert two["encoder_input_tokens"].shape[0] == 2
    loss1, *_, grads1 = run(model_and_params, one, model_type=model_type)
    loss2, *_, grads2 = run(model_and_params, two, model_type=model_type)
    assert loss2 == pytest.approx(loss1, rel=1e-5)
    assert_trees_close(grads1, grads2)


def test_alpha_one_ignores_rationales_and_alpha_zero_ignores_labels(tokenizer, model_and_params):
    records = fixtures.generic_records(24)
    new_rationales = [dict(r, rationale="an entirely different explanation " * 2) for r in records]
    new_labels = [dict(r, label="zzz other") for r in records]
    base_batch, _ = first_batch(records, tokenizer, batch_size=8, grad_steps=1)
    rat_batch, _ = first_batch(new_rationales, tokenizer, batch_size=8, grad_steps=1)
    lab_batch, _ = first_batch(new_labels, tokenizer, batch_size=8, grad_steps=1)

    loss, label_loss, _, grads = run(model_and_params, base_batch, alpha=1.0)
    loss_r, _, _, grads_r = run(model_and_params, rat_batch, alpha=1.0)
    assert loss == pytest.approx(label_loss) and loss_r == pytest.approx(loss, rel=1e-5)
    assert_trees_close(grads, grads_r)

    loss, _, rationale_loss, grads = run(model_and_params, base_batch, alpha=0.0)
    loss_l, _, _, grads_l = run(model_and_params, lab_batch, alpha=0.0)
    assert loss == pytest.approx(rationale_loss) and loss_l == pytest.approx(loss, rel=1e-5)
    assert_trees_close(grads, grads_l)

    # And the mix really depends on both parts otherwise.
    mixed, *_ = run(model_and_params, base_batch, alpha=0.5)
    mixed_r, *_ = run(model_and_params, rat_batch, alpha=0.5)
    assert abs(mixed - mixed_r) > 1e-3


def test_adafactor_factors_attention_kernels_like_hf(model_and_params):
    """HF's Adafactor factors every matrix; so must ours, also [d_model, heads, d_kv] kernels."""
    _, params = model_and_params
    train_cfg = ml_collections.ConfigDict(
        dict(optimizer="adafactor", lr=1e-3, warmup_steps=0, max_steps=10, max_grad_norm=1.0)
    )
    state = make_optimizer(train_cfg).init(params)
    is_factored = lambda x: isinstance(x, optax.FactoredState)  # noqa: E731
    (factored,) = [s for s in jax.tree.leaves(state, is_leaf=is_factored) if is_factored(s)]

    def query(tree):
        return tree["encoder"]["layers_0"]["attention"]["query"]["kernel"]

    kernel = query(params)  # [128, 4, 32]
    v_row, v_col, v = query(factored.v_row), query(factored.v_col), query(factored.v)
    assert v.size == 1 and v_row.size + v_col.size < kernel.size // 8, (v_row.shape, v_col.shape)
