"""Greedy decoding: one jitted `lax.while_loop` over a KV cache, with early exit."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from distill_jax.model.config import T5Config
from distill_jax.model.t5 import T5


def cast_for_compute(params, cfg: T5Config):
    """Params cast once to the compute dtype, the values each use (`x.astype(cfg.dtype)`) would
    cast them to anyway, so a bf16 step reads half the weight bytes and converts nothing. The
    relative-position tables stay float32: their bias is added in float32."""
    dtype = jnp.dtype(cfg.dtype)
    if dtype == jnp.float32:
        return params

    def cast(path, x):
        keep = any(getattr(k, "key", None) == "rel_embedding" for k in path)
        return x if keep or x.dtype != jnp.float32 else x.astype(dtype)

    return jax.tree_util.tree_map_with_path(cast, params)


@functools.partial(jax.jit, static_argnames=("cfg", "max_len"))
def greedy_decode_with_steps(
    params, cfg: T5Config, encoder_input_tokens: jax.Array, max_len: int
) -> tuple[jax.Array, jax.Array]:
    """`greedy_decode`, also returning how many decoder steps ran (< max_len on early exit)."""
    model = T5(cfg)
    params = nn.meta.unbox(params)  # {'params': ...} or the params themselves, boxed or not
    variables = cast_for_compute(dict(params) if "params" in params else {"params": params}, cfg)
    batch = encoder_input_tokens.shape[0]
    encoded = model.apply(variables, encoder_input_tokens, method=T5.encode)  # [b, l, embed]

    def step(cache, tokens):  # tokens [b, 1] -> next token [b], updated cache
        logits, mutated = model.apply(
            {**variables, **cache},
            encoded,
            encoder_input_tokens,
            tokens,
            decode=True,
            max_decode_length=max_len,
            mutable=["cache"],
            method=T5.decode,
        )
        return jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32), mutated

    # The first step creates the cache (self-attention buffers of max_len positions, and the
    # cross-attention keys/values projected once from the encoder output).
    start = jnp.full((batch, 1), cfg.decoder_start_token_id, jnp.int32)
    first, cache = step({}, start)
    out = jnp.zeros((batch, max_len), jnp.int32).at[:, 0].set(first)
    done = first == cfg.eos_token_id

    def cond(state):
        i, _, _, _, done = state
        return (i < max_len) & ~jnp.all(done)

    def body(state):
        i, cache, out, last, done = state
        nxt, cache = step(cache, last[:, None])
        nxt = jnp.where(done, 0, nxt)  # finished rows emit padding
        out = jax.lax.dynamic_update_slice(out, nxt[:, None], (0, i))
        return i + 1, cache, out, nxt, done | (nxt == cfg.eos_token_id)

    steps, _, out, _, _ = jax.lax.while_loop(cond, body, (jnp.int32(1), cache, out, first, done))
    return out, steps


def greedy_decode(
    params, cfg: T5Config, encoder_input_tokens: jax.Array, max_len: int
) -> jax.Array:
    """Greedy decoding with a KV cache; returns tokens int32 [batch, max_len], 0 after EOS.
    Jitted (`cfg`, `max_len` static), it places nothing itself, so it runs under a mesh as its
    inputs are."""
    return greedy_decode_with_steps(params, cfg, encoder_input_tokens, max_len)[0]
