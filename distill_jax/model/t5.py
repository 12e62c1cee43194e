"""Flax Linen T5 encoder-decoder (v1.0 and v1.1/Flan): packing masks, KV cache, scan and remat.

Numerics follow Hugging Face's `T5ForConditionalGeneration` (the parity target): RMS norm with
the variance in float32, relative position bias computed once per stack and shared by all
layers, no 1/sqrt(d_kv) in attention, softmax in float32. Params are float32 and carry logical
axis names; compute runs in `config.dtype`; logits come back in float32.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from distill_jax.model.attention import Array, Mask, dense_mask, fused_attention
from distill_jax.model.config import T5Config

# Large but finite: a fully masked row (padding) gets a uniform softmax instead of NaN.
NEG_INF = -1e10

REMAT_POLICIES: dict[str, Callable[..., bool] | None] = {
    # Save the weight matmuls (no batch dims), recompute attention and elementwise ops.
    "minimal": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
    "full": jax.checkpoint_policies.nothing_saveable,
}


_constrain = nn.with_logical_constraint  # a no-op without a mesh (CPU tests)


def _param(module: nn.Module, name: str, std: float, shape: tuple[int, ...], axes: tuple) -> Array:
    init = nn.with_logical_partitioning(nn.initializers.normal(stddev=std), axes)
    return module.param(name, init, shape, jnp.float32)


class RMSNorm(nn.Module):
    """T5LayerNorm: scale only, no mean subtraction, no bias; variance in float32."""

    config: T5Config

    @nn.compact
    def __call__(self, x: Array) -> Array:
        init = nn.with_logical_partitioning(nn.initializers.ones, ("embed",))
        scale = self.param("scale", init, (x.shape[-1],), jnp.float32)
        x32, dtype = x.astype(jnp.float32), jnp.dtype(self.config.dtype)
        var = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
        y = (x32 * jax.lax.rsqrt(var + self.config.layer_norm_epsilon)).astype(dtype)
        return y * scale.astype(dtype)


class Dropout(nn.Module):
    """Inverted dropout from 16 random bits per element (nn.Dropout's RNG, 32 bits, was a third
    of a CPU train step). `rate` is rounded to 1/65536 and kept elements scaled by the exact
    inverse keep probability, so the expectation is unchanged; draws shard like the input."""

    rate: float

    @nn.compact
    def __call__(self, x: Array, deterministic: bool) -> Array:
        if deterministic or self.rate == 0.0:
            return x
        if self.rate >= 1.0:
            return jnp.zeros_like(x)
        threshold = min(round(self.rate * 65536), 65535)
        *lead, last = x.shape
        words = jax.random.bits(self.make_rng("dropout"), (*lead, (last + 1) // 2), jnp.uint32)
        bits = jax.lax.bitcast_convert_type(words, jnp.uint16)  # [*lead, ceil(last/2), 2]
        bits = bits.reshape(*lead, -1)[..., :last]
        scale = jnp.asarray(65536 / (65536 - threshold), x.dtype)
        return jnp.where(bits >= threshold, x * scale, jnp.zeros((), x.dtype))


def _proj(shape: tuple[int, ...], axes: tuple, eqn: str, std: float, dtype, name: str) -> nn.Einsum:
    """Bias-free `einsum(eqn, x, kernel)`: a float32 kernel (HF T5's init `std`; the 1/sqrt(d_kv)
    attention scale is folded into the query's) cast to the compute dtype."""
    init = nn.with_logical_partitioning(nn.initializers.normal(stddev=std), axes)
    return nn.Einsum(shape, eqn, use_bias=False, dtype=dtype, kernel_init=init, name=name)


class Embed(nn.Module):
    """Shared token embedding; `attend` uses it as the (tied) lm head."""

    config: T5Config

    def setup(self):
        shape = (self.config.vocab_size, self.config.d_model)
        self.embedding = _param(self, "embedding", 1.0, shape, ("vocab", "embed"))
        self.dtype = jnp.dtype(self.config.dtype)

    def __call__(self, tokens: Array) -> Array:
        return jnp.take(self.embedding, tokens, axis=0).astype(self.dtype)  # [b, l, embed]

    def attend(self, x: Array) -> Array:
        return jnp.einsum("bld,vd->blv", x, self.embedding.astype(self.dtype))  # [b, l, vocab]


class RelativePositionBias(nn.Module):
    """Per-head bias from bucketed relative positions; computed once per stack and shared."""

    config: T5Config
    bidirectional: bool

    @nn.compact
    def __call__(self, q_pos: Array, k_pos: Array) -> Array:
        cfg, num_buckets = self.config, self.config.relative_attention_num_buckets
        shape = (cfg.num_heads, num_buckets)
        table = _param(self, "rel_embedding", cfg.d_model**-0.5, shape, ("heads", "relpos_buckets"))
        # Buckets of `rel = key_pos - query_pos` exactly as HF / Mesh TensorFlow T5 compute them.
        rel = k_pos[None, :] - q_pos[:, None]  # [q, k]
        buckets = jnp.zeros_like(rel)
        if self.bidirectional:
            num_buckets //= 2
            buckets = (rel > 0).astype(jnp.int32) * num_buckets
            n = jnp.abs(rel)
        else:
            n = -jnp.minimum(rel, 0)  # the decoder only looks back
        max_exact = num_buckets // 2
        # Log-spaced buckets up to max_distance, in float32 like HF so boundaries agree exactly.
        log_ratio = jnp.log(jnp.maximum(n, 1).astype(jnp.float32) / max_exact)
        max_distance = cfg.relative_attention_max_distance
        large = max_exact + (
            log_ratio / math.log(max_distance / max_exact) * (num_buckets - max_exact)
        ).astype(jnp.int32)
        buckets += jnp.where(n < max_exact, n, jnp.minimum(large, num_buckets - 1))
        return jnp.take(table, buckets, axis=1)[None]  # [1, heads, q, k] float32


class Attention(nn.Module):
    """Multi-head attention. `cache_length` > 0: decoding with a cache, of keys/values
    appended at `position` (self-attention) or, if `cross`, of the encoder output projected once.
    `causal`: also mask keys after the query (rows aligned at position 0)."""

    config: T5Config
    deterministic: bool
    cache_length: int = 0
    causal: bool = False
    cross: bool = False

    @nn.compact
    def __call__(self, x_q, x_kv, bias, mask: Mask, position=None) -> Array:
        cfg, dtype = self.config, jnp.dtype(self.config.dtype)
        d, h, k = cfg.d_model, cfg.num_heads, cfg.d_kv

        def proj(name, std):
            return _proj((d, h, k), ("embed", "heads", "kv"), "bld,dhk->blhk", std, dtype, name)

        def keys_or_values(name: str) -> Array:
            """[b, k, heads, kv]; from a cache heads-major, [b, heads, k, kv]: the layout the
            score and value matmuls batch over, so a decode step reads it without a transpose."""
            project = proj(name, d**-0.5)
            if not self.cache_length:
                return project(x_kv)
            if self.cross:  # encoder output: projected on the call creating the cache
                init = lambda: project(x_kv).transpose(0, 2, 1, 3)
                return self.variable("cache", f"cached_{name}", init).value
            shape = (x_q.shape[0], h, self.cache_length, k)
            cached = self.variable("cache", f"cached_{name}", jnp.zeros, shape, dtype)
            new = project(x_kv).transpose(0, 2, 1, 3)
            cached.value = jax.lax.dynamic_update_slice(cached.value, new, (0, 0, position, 0))
            return cached.value  # [b, heads, cache_length, kv]

        qkv_names = ("batch", "length", "heads", "kv")
        q = _constrain(proj("query", (d * k) ** -0.5)(x_q), qkv_names)  # [b, q, heads, kv]
        heads_major = self.cache_length > 0
        kv_names = ("batch", "heads", "length", "kv") if heads_major else qkv_names
        keys = _constrain(keys_or_values("key"), kv_names)
        values = _constrain(keys_or_values("value"), kv_names)

        if cfg.attention == "dot_product":
            if heads_major:  # the fused call takes [b, k, heads, kv]
                keys, values = keys.transpose(0, 2, 1, 3), values.transpose(0, 2, 1, 3)
            # Fused kernels have no dropout on the attention probabilities.
            out = fused_attention(q, keys, values, bias, mask, self.causal)
        else:
            kv = "bhkd" if heads_major else "bkhd"
            # No 1/sqrt(d_kv) scaling: T5 folds it into the query init.
            scores = jnp.einsum(f"bqhd,{kv}->bhqk", q, keys).astype(jnp.float32)  # [b,h,q,k]
            if bias is not None:
                scores = scores + bias
            dense = dense_mask(mask, self.causal, *scores.shape[2:])  # q, k
            if dense is not None:
                scores = jnp.where(dense, scores, NEG_INF)
            weights = jax.nn.softmax(scores, axis=-1).astype(dtype)
            weights = Dropout(cfg.dropout_rate)(weights, self.deterministic)
            out = jnp.einsum(f"bhqk,{kv}->bqhd", weights, values)  # [b, q, heads, kv]
        out = _constrain(out, qkv_names)
        out_axes = ("heads", "kv", "embed")
        return _proj((h, k, d), out_axes, "blhk,hkd->bld", (h * k) ** -0.5, dtype, name="out")(out)


class MLP(nn.Module):
    """Feed-forward block: relu (v1.0) or gated gelu with the tanh approximation (v1.1)."""

    config: T5Config
    deterministic: bool

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg, dtype = self.config, jnp.dtype(self.config.dtype)
        d, f = cfg.d_model, cfg.d_ff

        def wi(name):
            return _proj((d, f), ("embed", "mlp"), "bld,df->blf", d**-0.5, dtype, name=name)(x)

        if cfg.feed_forward_proj == "gated-gelu":
            hidden = jax.nn.gelu(wi("wi_0"), approximate=True) * wi("wi_1")  # [b, l, mlp]
        else:
            hidden = jax.nn.relu(wi("wi"))
        hidden = _constrain(hidden, ("batch", "length", "mlp"))
        hidden = Dropout(cfg.dropout_rate)(hidden, self.deterministic)
        return _proj((f, d), ("mlp", "embed"), "blf,fd->bld", f**-0.5, dtype, name="wo")(hidden)


class Layer(nn.Module):
    """Pre-norm self-attention, cross-attention to the encoder (`decoder` only) and MLP, with
    dropout on each residual branch."""

    config: T5Config
    deterministic: bool
    decoder: bool = False
    cache_length: int = 0  # > 0: decoding, with a self-attention KV cache of this many positions
    causal: bool = False  # self-attention adds the causal mask itself ('dot_product' training)

    @nn.compact
    def __call__(
        self, x, bias, mask: Mask, encoded=None, cross_mask: Mask | None = None, position=None
    ):
        cfg, det, cache = self.config, self.deterministic, self.cache_length
        drop = Dropout(cfg.dropout_rate)

        def norm(name: str, x: Array) -> Array:
            return RMSNorm(cfg, name=f"pre_{name}_layer_norm")(x)

        name = "self_attention" if self.decoder else "attention"
        self_attn = Attention(cfg, det, cache, self.causal, name=name)
        y = norm(name, x)
        x = x + drop(self_attn(y, y, bias, mask, position), det)
        if self.decoder:
            cross = Attention(cfg, det, cache, cross=True, name="encoder_decoder_attention")
            x = x + drop(cross(norm("cross_attention", x), encoded, None, cross_mask), det)
        x = x + drop(MLP(cfg, det, name="mlp")(norm("mlp", x)), det)
        return _constrain(x, ("batch", "length", "embed")), None


def _run_layers(cfg: T5Config, num: int, kwargs: dict, x, *args):
    """Applies `num` Layers, unrolled ('layers_{i}') or with nn.scan ('layers'), with remat."""
    layer_cls = Layer
    if cfg.remat_policy != "none":
        # prevent_cse only matters outside scan (scan already stops CSE across iterations).
        layer_cls = nn.remat(
            layer_cls, policy=REMAT_POLICIES[cfg.remat_policy], prevent_cse=not cfg.scan_layers
        )
    if cfg.scan_layers:
        scanned = nn.scan(
            layer_cls,
            variable_axes={"params": 0, "cache": 0},
            split_rngs={"params": True, "dropout": True},
            in_axes=(nn.broadcast,) * len(args),
            length=num,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )
        x, _ = scanned(cfg, name="layers", **kwargs)(x, *args)
        return x
    for i in range(num):
        x, _ = layer_cls(cfg, name=f"layers_{i}", **kwargs)(x, *args)
    return x


def _segment_mask(q_seg: Array, k_seg: Array) -> Array:
    """[b, 1, q, k]: attend only within the same nonzero segment (packed rows)."""
    same = q_seg[:, :, None] == k_seg[:, None, :]
    return (same & (k_seg != 0)[:, None, :])[:, None]


def _key_mask(tokens: Array, segment_ids: Array | None, fused: bool) -> Mask:
    """Valid (non-padding) keys: dense [b, 1, 1, k], or for the fused path of unpacked rows
    (right-padded) the lengths, which cuDNN takes without folding them into the bias."""
    if fused and segment_ids is None:
        return Mask(kv_lengths=(tokens != 0).sum(-1, dtype=jnp.int32))  # [b]
    valid = tokens != 0 if segment_ids is None else segment_ids != 0
    return Mask(dense=valid[:, None, None, :])


class Encoder(nn.Module):
    config: T5Config
    shared: Embed

    @nn.compact
    def __call__(self, tokens, segment_ids, det: bool) -> Array:
        cfg = self.config
        drop = Dropout(cfg.dropout_rate)
        x = drop(self.shared(tokens), det)  # [b, l, embed]
        x = _constrain(x, ("batch", "length", "embed"))
        # Plain row positions: within a packed segment only differences matter.
        pos = jnp.arange(tokens.shape[1])
        bias = RelativePositionBias(cfg, True, name="relpos_bias")(pos, pos)  # [1, h, l, l]
        if segment_ids is None:
            mask = _key_mask(tokens, None, cfg.attention == "dot_product")
        else:
            mask = Mask(dense=_segment_mask(segment_ids, segment_ids))
        x = _run_layers(cfg, cfg.num_encoder_layers, dict(deterministic=det), x, bias, mask)
        return drop(RMSNorm(cfg, name="encoder_norm")(x), det)


class Decoder(nn.Module):
    config: T5Config
    shared: Embed

    @nn.compact
    def __call__(
        self,
        encoded,
        enc_tokens,
        dec_tokens,
        enc_seg=None,
        dec_seg=None,
        *,
        enable_dropout: bool = False,
        decode: bool = False,
        max_decode_length: int | None = None,
    ) -> Array:
        """Decoder logits, float32 [batch, dec_len, vocab].

        `decode=True` (mutable 'cache') appends the tokens to a KV cache, which the first call
        creates with `max_decode_length` positions (default: this call's length); decoder
        segment ids are then ignored (rows are not packed).
        """
        cfg, dtype, det = self.config, jnp.dtype(self.config.dtype), not enable_dropout
        drop = Dropout(cfg.dropout_rate)
        length = dec_tokens.shape[1]
        x = drop(self.shared(dec_tokens), det)  # [b, l, embed]
        x = _constrain(x, ("batch", "length", "embed"))
        q_pos = jnp.arange(length)
        if decode:
            cache_len = max_decode_length or length
            # The new tokens sit at [position, position + length) of a cache_len-long cache.
            pos_var = self.variable("cache", "position", lambda: jnp.zeros((), jnp.int32))
            position = pos_var.value
            pos_var.value = position + length
            q_pos, k_pos = q_pos + position, jnp.arange(cache_len)
        else:
            cache_len, position, k_pos = 0, None, q_pos
        fused = cfg.attention == "dot_product"
        causal = (k_pos[None, :] <= q_pos[:, None])[None, None]  # [1, 1, l, k]
        cross_mask = _key_mask(enc_tokens, enc_seg, fused)  # [b, 1, 1, enc_len] or lengths
        self_causal = False  # True: the attention call applies the causal mask itself
        if dec_seg is not None and not decode:  # packed rows
            mask = Mask(dense=causal & _segment_mask(dec_seg, dec_seg))
            cross_mask = Mask(dense=_segment_mask(dec_seg, enc_seg))
        elif fused and not decode:
            mask, self_causal = Mask(), True  # cuDNN's causal mode skips the masked tiles
        else:
            mask = Mask(dense=causal)
        bias = RelativePositionBias(cfg, False, name="relpos_bias")(q_pos, k_pos)
        kwargs = dict(deterministic=det, decoder=True, cache_length=cache_len, causal=self_causal)
        x = _run_layers(
            cfg, cfg.num_decoder_layers, kwargs, x, bias, mask, encoded, cross_mask, position
        )
        x = drop(RMSNorm(cfg, name="decoder_norm")(x), det)
        if cfg.tie_word_embeddings:
            logits = self.shared.attend(x * (cfg.d_model**-0.5))  # v1.0 rescales before tying
        else:
            # Fan-in init (T5X) rather than HF's std 1.0: logits start near unit scale, so a
            # model trained from scratch starts at a loss of about ln(vocab).
            shape, axes = (cfg.d_model, cfg.vocab_size), ("embed", "vocab")
            logits = _proj(shape, axes, "bld,dv->blv", cfg.d_model**-0.5, dtype, "logits_dense")(x)
        return _constrain(logits.astype(jnp.float32), ("batch", "length", "vocab"))


class T5(nn.Module):
    """T5 encoder-decoder. Token 0 is padding and the decoder start token."""

    config: T5Config

    def setup(self):
        cfg = self.config
        self.shared = Embed(cfg)
        self.encoder = Encoder(cfg, self.shared)
        self.decoder = Decoder(cfg, self.shared)

    def encode(self, enc_tokens, enc_seg=None, *, enable_dropout: bool = False) -> Array:
        """Encoder output [batch, enc_len, d_model] in the compute dtype."""
        return self.encoder(enc_tokens, enc_seg, not enable_dropout)

    def decode(self, *args, **kwargs) -> Array:
        """Decoder logits, float32 [batch, dec_len, vocab]; the arguments of `Decoder`."""
        return self.decoder(*args, **kwargs)

    def __call__(
        self, enc_tokens, dec_tokens, enc_seg=None, dec_seg=None, *, enable_dropout: bool = False
    ) -> Array:
        """Teacher-forced logits, float32 [batch, dec_len, vocab]."""
        encoded = self.encoder(enc_tokens, enc_seg, not enable_dropout)
        return self.decoder(
            encoded, enc_tokens, dec_tokens, enc_seg, dec_seg, enable_dropout=enable_dropout
        )


def scan_params(params: dict, cfg: T5Config) -> dict:
    """Unscanned -> scanned params: stacks each stack's 'layers_{i}' into one 'layers' subtree
    with a leading [num_layers] axis. Takes unboxed numpy or jax arrays, gives numpy."""
    out = dict(params)
    for stack in ("encoder", "decoder"):
        sub = dict(params[stack])
        layers = [sub.pop(f"layers_{i}") for i in range(getattr(cfg, f"num_{stack}_layers"))]
        out[stack] = {**sub, "layers": jax.tree.map(lambda *xs: np.stack(xs), *layers)}
    return out


def unscan_params(params: dict, cfg: T5Config) -> dict:
    """Scanned -> unscanned params (inverse of `scan_params`)."""
    out = dict(params)
    for stack in ("encoder", "decoder"):
        sub = dict(params[stack])
        layers = sub.pop("layers")
        for i in range(getattr(cfg, f"num_{stack}_layers")):
            sub[f"layers_{i}"] = jax.tree.map(lambda x, i=i: x[i], layers)
        out[stack] = sub
    return out
