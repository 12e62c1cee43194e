"""model.attention='dot_product' (jax.nn.dot_product_attention) equals the explicit 'xla' path:
logits and every gradient (the relative-position tables included) in float32, packed and
padded rows, encoder, causal decoder and cross attention, and KV-cache decoding."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distill_jax.decode import greedy_decode_with_steps
from distill_jax.errors import UserError
from distill_jax.model import T5, scan_params
from distill_jax.model.attention import Mask, fused_implementation
from distill_jax.model.config import T5Config
from tests.test_decode import V1_1, cached_logits, random_model

DOT = dict(attention="dot_product")


def _close(a, b, what: str, tol: float = 1e-5) -> None:
    a, b = np.asarray(a), np.asarray(b)
    err = np.abs(a - b).max() / max(1.0, np.abs(a).max())
    assert err < tol, f"{what}: relative max error {err:.2e}"


def _packed_batch(rng: np.random.Generator, vocab: int):
    """Two rows packing 3 and 2 segments (and trailing padding) on both sides."""
    enc_seg = np.array([[1, 1, 1, 2, 2, 3, 3, 3, 0, 0], [1, 1, 1, 1, 2, 2, 2, 2, 2, 0]], np.int32)
    dec_seg = np.array([[1, 1, 2, 2, 2, 3, 0], [1, 1, 1, 2, 2, 2, 2]], np.int32)
    enc = np.where(enc_seg > 0, rng.integers(2, vocab, enc_seg.shape), 0).astype(np.int32)
    dec = np.where(dec_seg > 0, rng.integers(2, vocab, dec_seg.shape), 0).astype(np.int32)
    return enc, dec, enc_seg, dec_seg


def _logits_and_grads(cfg: T5Config, params, enc, dec, enc_seg, dec_seg):
    model = T5(cfg)
    weights = jax.random.normal(jax.random.key(3), (*dec.shape, cfg.vocab_size))

    def loss(p):
        logits = model.apply({"params": p}, enc, dec, enc_seg, dec_seg)
        return (logits * weights).sum(), logits

    (_, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    return logits, grads


@pytest.mark.parametrize("packed", [True, False], ids=["packed", "padded"])
def test_dot_product_matches_xla_logits_and_grads(packed):
    # Packed rows also run with scanned layers (the Mask tuple broadcast through nn.scan).
    cfg = dataclasses.replace(V1_1, scan_layers=packed)
    params, enc = random_model(V1_1, seed=0)
    if packed:
        params = scan_params(params, V1_1)
        enc, dec, enc_seg, dec_seg = _packed_batch(np.random.default_rng(1), cfg.vocab_size)
    else:  # right-padded encoder rows of 10, 4 and 7 tokens; the fused path takes lengths
        dec = np.random.default_rng(1).integers(1, cfg.vocab_size, (enc.shape[0], 6))
        dec, enc_seg, dec_seg = dec.astype(np.int32), None, None
    ref_logits, ref_grads = _logits_and_grads(cfg, params, enc, dec, enc_seg, dec_seg)
    logits, grads = _logits_and_grads(
        dataclasses.replace(cfg, **DOT), params, enc, dec, enc_seg, dec_seg
    )
    _close(ref_logits, logits, "logits")
    flat_ref = jax.tree_util.tree_leaves_with_path(ref_grads)
    flat = jax.tree.leaves(grads)
    assert len(flat_ref) == len(flat)
    for (path, g_ref), g in zip(flat_ref, flat, strict=True):
        _close(g_ref, g, f"grad {jax.tree_util.keystr(path)}")
    for stack in ("encoder", "decoder"):
        rel = np.asarray(ref_grads[stack]["relpos_bias"]["rel_embedding"])
        assert np.abs(rel).max() > 1e-3, f"{stack} relative-position gradient is zero"


def test_dot_product_cached_decoding_matches_xla():
    params, enc = random_model(V1_1, seed=2)
    cfg = dataclasses.replace(V1_1, **DOT)
    length = 14  # past max_distance: clipped relative-position buckets
    dec = np.random.default_rng(4).integers(1, cfg.vocab_size, (enc.shape[0], length))
    dec = dec.astype(np.int32)
    dec[:, 0] = 0
    full_xla = jax.jit(lambda p: T5(V1_1).apply({"params": p}, enc, dec))(params)
    cached, _ = cached_logits(cfg, params, enc, dec, 3)  # 3 tokens first, then one by one
    _close(full_xla, cached, "cached dot_product logits vs xla", 1e-4)

    out_xla, steps_xla = greedy_decode_with_steps(params, V1_1, enc, 12)
    out_dot, steps_dot = greedy_decode_with_steps(params, cfg, enc, 12)
    np.testing.assert_array_equal(np.asarray(out_dot), np.asarray(out_xla))
    assert int(steps_dot) == int(steps_xla)


def test_fused_implementation_picks_cudnn_only_where_its_limits_hold():
    q = jnp.zeros((2, 16, 4, 64), jnp.bfloat16)
    bias = jnp.zeros((1, 4, 16, 16), jnp.float32)
    lengths = Mask(kv_lengths=jnp.full((2,), 16, jnp.int32))
    assert fused_implementation(q, bias, lengths, "gpu") == "cudnn"
    assert fused_implementation(q, bias, Mask(dense=jnp.ones((1, 1, 16, 16), bool)), "gpu") == (
        "cudnn"
    )
    # A per-example (packing) mask would be folded into the bias and lose its gradient.
    per_example = Mask(dense=jnp.ones((2, 1, 16, 16), bool))
    assert fused_implementation(q, bias, per_example, "gpu") == "xla"
    assert fused_implementation(q, jnp.zeros((2, 4, 16, 16)), lengths, "gpu") == "xla"
    assert fused_implementation(q.astype(jnp.float32), bias, lengths, "gpu") == "xla"
    assert fused_implementation(jnp.zeros((2, 16, 4, 20), jnp.bfloat16), bias, lengths, "gpu") == (
        "xla"
    )  # head dim not a multiple of 8
    assert fused_implementation(q[:, :1], bias[:, :, :1], lengths, "gpu") == "xla"  # decoding
    assert fused_implementation(q, bias, lengths, "cpu") == "xla"
    assert fused_implementation(q, bias, lengths, "tpu") == "xla"


def test_unknown_attention_is_a_user_error():
    with pytest.raises(UserError, match="model.attention"):
        dataclasses.replace(V1_1, attention="flash")


def test_config_field_reaches_the_model_config():
    from types import SimpleNamespace

    from configs.base import get_base_config
    from distill_jax.train.setup import build_model_config

    config = get_base_config()
    assert config.model.attention == "xla"
    config.model.attention = "dot_product"
    cfg = build_model_config(config, SimpleNamespace(vocab_size=10), pretrained_cfg=V1_1)
    assert cfg.attention == "dot_product"
    config.model.attention = "flash"
    with pytest.raises(UserError, match="model.attention"):
        build_model_config(config, SimpleNamespace(vocab_size=10), pretrained_cfg=V1_1)
