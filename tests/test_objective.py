"""The packed, accumulated gradient is the gradient of the objective (docs/architecture.md), and
bf16 compute.

The reference objective is written here independently of distill_jax.train.step: each example
padded on its own (no packing, no segment ids, no micro-batches),

    loss = alpha * mean CE over label tokens + (1 - alpha) * mean CE over rationale tokens,

and `jax.grad` of it must equal the gradient the train step accumulates over two micro-batches
of packed rows. alpha = 0.3 weighs the two parts differently, so dropping or mis-weighting
either one shows.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from distill_jax.data import pipeline
from distill_jax.model.config import get_preset
from distill_jax.model.t5 import T5
from distill_jax.tokenizer import Tokenizer
from distill_jax.train.step import loss_and_grads
from tests import fixtures

ALPHA = 0.3
MAX_INPUT, MAX_TARGET = 48, 32
CFG = dataclasses.replace(get_preset("t5-v1_1-tiny"), vocab_size=384, dropout_rate=0.0)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    records = fixtures.generic_records(60)
    texts = [r[k] for r in records for k in ("input", "label", "rationale")]
    return Tokenizer.train(texts, 200, tmp_path_factory.mktemp("tok"))


def unbox(tree):
    return jax.tree.map(
        lambda x: x.unbox() if hasattr(x, "unbox") else x,
        tree,
        is_leaf=lambda x: hasattr(x, "unbox"),
    )


def init_params(cfg):
    tokens = jnp.ones((1, 8), jnp.int32)
    init = jax.jit(lambda rng: T5(cfg).init({"params": rng}, tokens, tokens)["params"])
    return unbox(init(jax.random.key(0)))


def padded(tokenizer, texts: list[str], max_len: int) -> np.ndarray:
    """[n, longest] ids + EOS, zero-padded; asserts nothing was truncated."""
    seqs = [tokenizer.encode(t) + [tokenizer.eos_id] for t in texts]
    assert max(map(len, seqs)) <= max_len, "keep the fixtures short: no truncation here"
    out = np.zeros((len(seqs), max(map(len, seqs))), np.int32)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = s
    return out


def reference_loss(params, model, batches, alpha):
    """alpha * label token-mean CE + (1 - alpha) * rationale token-mean CE, unpacked."""

    def token_mean_ce(enc, tgt):
        dec_in = jnp.concatenate([jnp.zeros_like(tgt[:, :1]), tgt[:, :-1]], axis=1)  # shift
        logits = model.apply({"params": params}, enc, dec_in)  # [n, dec_len, vocab]
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, tgt)
        mask = (tgt > 0).astype(jnp.float32)
        return (ce * mask).sum() / mask.sum()

    label = token_mean_ce(*batches["label"])
    rationale = token_mean_ce(*batches["rationale"])
    return alpha * label + (1 - alpha) * rationale


def test_packed_accumulated_gradient_equals_the_unpacked_objectives(tokenizer):
    records = fixtures.generic_records(32)
    it = pipeline.TrainIterator(
        records,
        tokenizer,
        model_type="task_prefix",
        batch_size=8,
        grad_steps=2,
        max_input_length=MAX_INPUT,
        max_target_length=MAX_TARGET,
        pack_input_length=96,
        pack_target_length=64,
        seed=0,
    )
    batch = it.batch_at(0)  # leaves [2 micro-batches, rows, length]
    assert batch["encoder_input_tokens"].shape[0] == 2
    assert batch["encoder_segment_ids"].max() > 1  # rows really hold several sequences
    examples = [records[int(i)] for i in it.examples_at(0)]
    assert len(examples) == 8

    model = T5(CFG)
    params = init_params(CFG)
    loss, label_loss, rationale_loss, grads = jax.jit(
        lambda p, b: loss_and_grads(
            model, p, b, jax.random.key(0), alpha=ALPHA, model_type="task_prefix",
            enable_dropout=False,
        )
    )(params, batch)  # fmt: skip

    inputs = [r["input"] for r in examples]
    ref_batches = {
        "label": (
            padded(tokenizer, ["predict: " + x for x in inputs], MAX_INPUT),
            padded(tokenizer, [r["label"] for r in examples], MAX_TARGET),
        ),
        "rationale": (
            padded(tokenizer, ["explain: " + x for x in inputs], MAX_INPUT),
            padded(tokenizer, [r["rationale"] for r in examples], MAX_TARGET),
        ),
    }

    @jax.jit
    def reference(p):
        """(objective, its gradient, label part, rationale part, the label part's gradient)."""
        loss, grads = jax.value_and_grad(reference_loss)(p, model, ref_batches, ALPHA)
        label, label_grads = jax.value_and_grad(reference_loss)(p, model, ref_batches, 1.0)
        rationale = reference_loss(p, model, ref_batches, 0.0)
        return loss, grads, label, rationale, label_grads

    ref_loss, ref_grads, ref_label, ref_rationale, label_only = reference(params)

    assert float(loss) == pytest.approx(float(ref_loss), rel=1e-5)
    assert float(label_loss) == pytest.approx(float(ref_label), rel=1e-5)
    assert float(rationale_loss) == pytest.approx(float(ref_rationale), rel=1e-5)
    flat = jax.tree_util.tree_flatten_with_path(grads)[0]
    for (path, g), r in zip(flat, jax.tree.leaves(ref_grads), strict=True):
        np.testing.assert_allclose(
            np.asarray(g), np.asarray(r), rtol=2e-4, atol=1e-6, err_msg=jax.tree_util.keystr(path)
        )
    # The rationale part matters to the gradient (so dropping it cannot go unnoticed).
    diff = optax.global_norm(jax.tree.map(jnp.subtract, ref_grads, label_only))
    assert float(diff) > 0.1 * float(optax.global_norm(ref_grads))


def test_bfloat16_compute_gives_close_logits_and_keeps_float32_params():
    """dtype='bfloat16' computes in bf16 (logits come back float32) on float32 params."""
    params = init_params(CFG)
    assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype("float32")}
    bf16 = dataclasses.replace(CFG, dtype="bfloat16")
    tokens = jnp.ones((1, 8), jnp.int32)
    shapes = jax.eval_shape(lambda: T5(bf16).init({"params": jax.random.key(0)}, tokens, tokens))
    # The model's params stay float32 under bf16 compute.
    assert {x.dtype for x in jax.tree.leaves(unbox(shapes))} == {jnp.dtype("float32")}
    rng = np.random.default_rng(0)
    enc = jnp.asarray(rng.integers(3, 300, (2, 12)), jnp.int32)
    dec = jnp.asarray(rng.integers(3, 300, (2, 7)), jnp.int32)
    logits32 = jax.jit(T5(CFG).apply)({"params": params}, enc, dec)
    logits16 = jax.jit(T5(bf16).apply)({"params": params}, enc, dec)
    assert logits32.dtype == logits16.dtype == jnp.float32
    diff = np.abs(np.asarray(logits16) - np.asarray(logits32))
    scale = np.abs(np.asarray(logits32)).max()
    assert diff.max() < 0.05 * scale  # bf16 keeps ~3 significant digits
    assert diff.max() > 0  # and it really computed in bf16
    np.testing.assert_array_equal(logits16.argmax(-1), logits32.argmax(-1))
