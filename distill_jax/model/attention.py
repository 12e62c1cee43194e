"""The attention mask description and the fused path (`model.attention='dot_product'`) that
runs `jax.nn.dot_product_attention`; the einsum/softmax path ('xla') lives in `t5.Attention`."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array


class Mask(NamedTuple):
    """Which keys a query may attend to: `dense`, bool broadcastable to [b, heads, q, k], and/or
    `kv_lengths`, int32 [b] (each row's valid keys are a prefix of that length). Both None:
    every key. Lengths rather than a per-example dense mask let cuDNN keep the bias gradient."""

    dense: Array | None = None
    kv_lengths: Array | None = None


def dense_mask(mask: Mask, causal: bool, q_len: int, k_len: int) -> Array | None:
    """`mask` (plus a causal mask) as one bool array broadcastable to [b, heads, q, k]."""
    out = mask.dense
    if mask.kv_lengths is not None:
        valid = (jnp.arange(k_len)[None, :] < mask.kv_lengths[:, None])[:, None, None, :]
        out = valid if out is None else out & valid
    if causal:
        tril = (jnp.arange(k_len)[None, :] <= jnp.arange(q_len)[:, None])[None, None]
        out = tril if out is None else out & tril
    return out


def fused_implementation(q: Array, bias: Array | None, mask: Mask, backend: str) -> str:
    """The `jax.nn.dot_product_attention` implementation for these operands on `backend`.

    cuDNN on GPU where its limits hold: bf16/fp16, head dim a multiple of 8 up to 128, a bias of
    batch 1 and no per-example dense mask (jax folds a mask into the bias, and cuDNN silently
    drops the gradient of a bias whose batch is not 1, so packed rows take XLA); one query row
    (decoding) gains nothing from flash tiling. XLA otherwise (TPU: not wired yet).
    """
    if backend != "gpu" or q.dtype not in (jnp.bfloat16, jnp.float16) or q.shape[1] == 1:
        return "xla"
    per_example = [x for x in (bias, mask.dense) if x is not None and x.shape[0] != 1]
    return "xla" if q.shape[-1] % 8 or q.shape[-1] > 128 or per_example else "cudnn"


def fused_attention(q, keys, values, bias, mask: Mask, causal: bool) -> Array:
    """T5 attention through `jax.nn.dot_product_attention`: scale 1 (T5 folds 1/sqrt(d_kv)
    into the query init), the relative-position bias, `mask`; [b, q, heads, kv] out."""
    impl = fused_implementation(q, bias, mask, jax.default_backend())
    if bias is not None and impl == "cudnn":
        bias = bias.astype(q.dtype)  # cuDNN wants operands of one dtype
    return jax.nn.dot_product_attention(
        q,
        keys,
        values,
        bias=bias,
        mask=mask.dense,
        scale=1.0,
        is_causal=causal,
        key_value_seq_lengths=mask.kv_lengths,
        implementation=impl,
    )
