"""KV-cache decoding equals the full forward pass; greedy_decode equals a naive greedy loop."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distill_jax.decode import cast_for_compute, greedy_decode, greedy_decode_with_steps
from distill_jax.model import T5, T5Config, scan_params
from tests import fixtures

V1_0 = T5Config(
    vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_heads=4, num_encoder_layers=2,
    num_decoder_layers=2, relative_attention_num_buckets=8, relative_attention_max_distance=12,
    feed_forward_proj="relu", tie_word_embeddings=True,
)  # fmt: skip
V1_1 = dataclasses.replace(V1_0, feed_forward_proj="gated-gelu", tie_word_embeddings=False)
ENC_LENS, ENC_LEN = (10, 4, 7), 10


def random_model(cfg: T5Config, seed: int):
    """Random params filled with numpy (compiling model.init costs seconds on CPU)."""
    enc = np.zeros((len(ENC_LENS), ENC_LEN), np.int32)
    rng = np.random.default_rng(seed)
    for row, n in enumerate(ENC_LENS):
        enc[row, :n] = rng.integers(2, cfg.vocab_size, n)
    shapes = jax.eval_shape(T5(cfg).init, jax.random.key(0), enc, enc[:, :2])

    params = fixtures.random_params(shapes, rng)
    return params, enc


def cached_logits(cfg: T5Config, params, enc, dec, prefill: int):
    """Logits [b, len(dec), vocab] of `dec` decoded through the KV cache: a multi-token first
    call of `prefill` tokens creates the cache, then one token at a time; and the last cache."""
    model, length = T5(cfg), dec.shape[1]
    encoded = jax.jit(lambda p: model.apply({"params": p}, enc, method=T5.encode))(params)

    @jax.jit
    def step(cache, tokens):
        return model.apply(
            {"params": params, **cache}, encoded, enc, tokens, decode=True,
            max_decode_length=length, mutable=["cache"], method=T5.decode,
        )  # fmt: skip

    logits, cache = step({}, dec[:, :prefill])
    outs = [logits]
    for t in range(prefill, length):
        logits, cache = step(cache, dec[:, t : t + 1])
        outs.append(logits)
    return jnp.concatenate(outs, axis=1), cache


@pytest.mark.parametrize("cfg", [V1_0, V1_1], ids=["v1_0", "v1_1"])
def test_incremental_decoding_matches_full_forward(cfg):
    params, enc = random_model(cfg, seed=0)
    length, prefill = 14, 3  # longer than max_distance so the clipped buckets are used
    rng = np.random.default_rng(1)
    dec = rng.integers(0, cfg.vocab_size, (len(ENC_LENS), length)).astype(np.int32)
    dec[:, 0] = 0
    model = T5(cfg)
    full = jax.jit(lambda p: model.apply({"params": p}, enc, dec))(params)

    cached, cache = cached_logits(cfg, params, enc, dec, prefill)
    assert np.abs(np.asarray(cached) - np.asarray(full)).max() < 1e-4
    assert int(cache["cache"]["decoder"]["position"]) == length
    cross = cache["cache"]["decoder"]["layers_0"]["encoder_decoder_attention"]["cached_key"]
    assert cross.shape == (len(ENC_LENS), cfg.num_heads, ENC_LEN, cfg.d_kv)  # heads-major


def naive_greedy(cfg: T5Config, params, enc, max_len: int) -> np.ndarray:
    """Re-runs the full forward pass for every token; no EOS handling."""
    dec = np.zeros((enc.shape[0], max_len), np.int32)
    out = np.zeros_like(dec)
    for t in range(max_len):
        out[:, t] = np.argmax(np.asarray(_forward(cfg, params, enc, dec))[:, t], axis=-1)
        if t + 1 < max_len:
            dec[:, t + 1] = out[:, t]
    return out


@functools.partial(jax.jit, static_argnums=0)
def _forward(cfg, params, enc, dec):
    return T5(cfg).apply({"params": params}, enc, dec)


def first_positions(tokens: np.ndarray, eos: int) -> list[int | None]:
    return [int(np.argmax(row == eos)) if (row == eos).any() else None for row in tokens]


def with_eos(naive: np.ndarray, eos: int) -> tuple[np.ndarray, int]:
    """Expected greedy_decode output (EOS kept, zeros after) and loop steps (early exit)."""
    expected, firsts = naive.copy(), first_positions(naive, eos)
    for row, t in enumerate(firsts):
        if t is not None:
            expected[row, t + 1 :] = 0
    done = all(t is not None for t in firsts)
    return expected, (max(firsts) + 1 if done else naive.shape[1])


@pytest.fixture(scope="module")
def greedy_case():
    """A random model and a token `stop` that every row emits, at different steps, before the
    end: used as EOS it makes rows finish at different times and the loop exit early."""
    cfg = dataclasses.replace(V1_1, vocab_size=12)  # small vocab: tokens repeat across rows
    max_len = 16
    for seed in range(40):
        params, enc = random_model(cfg, seed)
        naive = naive_greedy(cfg, params, enc, max_len)
        for stop in range(2, cfg.vocab_size):
            firsts = first_positions(naive, stop)
            if None not in firsts and max(firsts) < max_len - 2 and len(set(firsts)) > 1:
                return cfg, params, enc, max_len, naive, stop
    raise AssertionError("no random model with a shared early token; widen the search")


def test_greedy_matches_naive_loop(greedy_case):
    cfg, params, enc, max_len, naive, _ = greedy_case
    expected, steps = with_eos(naive, cfg.eos_token_id)
    out, got_steps = greedy_decode_with_steps(params, cfg, enc, max_len)
    assert out.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(out), expected)
    assert int(got_steps) == steps
    # Scanned layers (stacked caches) and boxed {'params': ...} variables give the same output.
    scan_cfg = dataclasses.replace(cfg, scan_layers=True)
    boxed = {"params": scan_params(params, cfg)}
    np.testing.assert_array_equal(
        np.asarray(greedy_decode(boxed, scan_cfg, enc, max_len)), expected
    )


def test_greedy_stops_at_eos(greedy_case):
    cfg, params, enc, max_len, naive, stop = greedy_case
    expected, steps = with_eos(naive, stop)
    assert steps < max_len and (expected == 0).any()
    out, got_steps = greedy_decode_with_steps(
        params, dataclasses.replace(cfg, eos_token_id=stop), enc, max_len
    )
    np.testing.assert_array_equal(np.asarray(out), expected)
    assert int(got_steps) == steps  # early exit: no step after the last row finished


def test_params_cast_once_for_bf16_decoding_give_the_same_logits():
    """greedy_decode casts params to bf16 before its loop: the logits must be bit-identical
    to the model casting float32 params at each use (rel-pos tables stay float32)."""
    cfg = dataclasses.replace(V1_1, dtype="bfloat16")
    params, enc = random_model(V1_1, seed=5)
    cast = cast_for_compute({"params": params}, cfg)["params"]
    assert cast["shared"]["embedding"].dtype == jnp.bfloat16
    assert cast["decoder"]["relpos_bias"]["rel_embedding"].dtype == jnp.float32
    dec = np.random.default_rng(6).integers(1, cfg.vocab_size, (enc.shape[0], 5)).astype(np.int32)
    fwd = jax.jit(lambda p: T5(cfg).apply({"params": p}, enc, dec))
    np.testing.assert_array_equal(np.asarray(fwd(cast)), np.asarray(fwd(params)))
    assert cast_for_compute(params, V1_1) is params  # float32: nothing to do
