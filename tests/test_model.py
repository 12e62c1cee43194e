"""T5 model: config presets/HF configs, logits parity with transformers, packing, scan, remat."""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from distill_jax.errors import UserError
from distill_jax.model import (
    PRESETS,
    T5,
    T5Config,
    config_from_hf,
    config_to_hf,
    get_preset,
    scan_params,
    unscan_params,
)
from distill_jax.model.t5 import Dropout

# Two tiny architectures; odd bucket settings so the log buckets and the clipping are exercised
# by ~24-token inputs, and different encoder/decoder depths to catch mix-ups.
V1_0 = T5Config(
    vocab_size=96, d_model=32, d_kv=8, d_ff=64, num_heads=4, num_encoder_layers=2,
    num_decoder_layers=3, relative_attention_num_buckets=32, relative_attention_max_distance=16,
    feed_forward_proj="relu", tie_word_embeddings=True,
)  # fmt: skip
V1_1 = dataclasses.replace(
    V1_0, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
    relative_attention_num_buckets=8, relative_attention_max_distance=128,
)  # fmt: skip
ENC_LENS, ENC_LEN, DEC_LEN = (24, 17, 9), 24, 12


# ----------------------------------------------------------------------------- HF conversion
def hf_to_params(sd: dict, cfg: T5Config) -> dict:
    """HF T5ForConditionalGeneration state dict -> our unscanned params (the spec's mapping)."""
    h, k, d = cfg.num_heads, cfg.d_kv, cfg.d_model
    w = {name: t.detach().numpy().astype(np.float32) for name, t in sd.items()}

    def attn(prefix):
        out = {n: {"kernel": w[f"{prefix}.{m}.weight"].T.reshape(d, h, k)} for n, m in
               (("query", "q"), ("key", "k"), ("value", "v"))}  # fmt: skip
        out["out"] = {"kernel": w[f"{prefix}.o.weight"].T.reshape(h, k, d)}
        return out

    def mlp(prefix):
        names = ("wi_0", "wi_1", "wo") if cfg.feed_forward_proj == "gated-gelu" else ("wi", "wo")
        return {n: {"kernel": w[f"{prefix}.DenseReluDense.{n}.weight"].T} for n in names}

    def norm(name):
        return {"scale": w[f"{name}.weight"]}

    params = {"shared": {"embedding": w["shared.weight"]}, "encoder": {}, "decoder": {}}
    for stack, n_layers in (
        ("encoder", cfg.num_encoder_layers),
        ("decoder", cfg.num_decoder_layers),
    ):
        bias = w[f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"]
        params[stack]["relpos_bias"] = {"rel_embedding": bias.T}
        for i in range(n_layers):
            b = f"{stack}.block.{i}.layer"
            if stack == "encoder":
                layer = {
                    "pre_attention_layer_norm": norm(f"{b}.0.layer_norm"),
                    "attention": attn(f"{b}.0.SelfAttention"),
                    "pre_mlp_layer_norm": norm(f"{b}.1.layer_norm"),
                    "mlp": mlp(f"{b}.1"),
                }
            else:
                layer = {
                    "pre_self_attention_layer_norm": norm(f"{b}.0.layer_norm"),
                    "self_attention": attn(f"{b}.0.SelfAttention"),
                    "pre_cross_attention_layer_norm": norm(f"{b}.1.layer_norm"),
                    "encoder_decoder_attention": attn(f"{b}.1.EncDecAttention"),
                    "pre_mlp_layer_norm": norm(f"{b}.2.layer_norm"),
                    "mlp": mlp(f"{b}.2"),
                }
            params[stack][f"layers_{i}"] = layer
    params["encoder"]["encoder_norm"] = norm("encoder.final_layer_norm")
    params["decoder"]["decoder_norm"] = norm("decoder.final_layer_norm")
    if not cfg.tie_word_embeddings:
        params["decoder"]["logits_dense"] = {"kernel": w["lm_head.weight"].T}
    return params


def make_hf(cfg: T5Config, seed: int):
    """A random HF model in eval mode; norms are perturbed so their mapping is tested too."""
    torch.manual_seed(seed)
    hf_cfg = transformers.T5Config(**config_to_hf(cfg), attn_implementation="eager")
    model = transformers.T5ForConditionalGeneration(hf_cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("layer_norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
    if not cfg.tie_word_embeddings:
        # transformers 5 ties lm_head to `shared` at init even for v1.1; untie it as a real
        # v1.1 / Flan checkpoint is.
        model.lm_head.weight = torch.nn.Parameter(torch.randn(cfg.vocab_size, cfg.d_model))
    return model


def batch(cfg: T5Config, seed: int):
    rng = np.random.default_rng(seed)
    enc = np.zeros((len(ENC_LENS), ENC_LEN), np.int32)
    for row, n in enumerate(ENC_LENS):
        enc[row, :n] = rng.integers(2, cfg.vocab_size, n)
    dec = rng.integers(0, cfg.vocab_size, (len(ENC_LENS), DEC_LEN)).astype(np.int32)
    dec[:, 0] = 0  # decoder start
    return enc, dec


def forward(cfg: T5Config):
    """A jitted forward for `cfg` (one compile per config and input structure)."""
    model = T5(cfg)

    @jax.jit
    def fn(params, enc, dec, enc_seg=None, dec_seg=None):
        return model.apply({"params": params}, enc, dec, enc_seg, dec_seg)

    return fn


@functools.cache
def make_case(cfg: T5Config):
    """(cfg, converted params, enc, dec, HF logits, jitted forward), built once per config."""
    hf = make_hf(cfg, seed=0)
    params = hf_to_params(hf.state_dict(), cfg)
    enc, dec = batch(cfg, seed=1)
    with torch.no_grad():
        ref = hf(
            input_ids=torch.from_numpy(enc).long(),
            attention_mask=torch.from_numpy(enc != 0).long(),
            decoder_input_ids=torch.from_numpy(dec).long(),
        ).logits.numpy()
    return cfg, params, enc, dec, ref, forward(cfg)


@pytest.fixture(params=[V1_0, V1_1], ids=["v1_0", "v1_1"])
def hf_case(request):
    return make_case(request.param)


@pytest.fixture
def v1_1_case():
    """Scan, remat and dropout do not depend on the architecture: one config is enough."""
    return make_case(V1_1)


# ----------------------------------------------------------------------------- config
def test_presets_and_errors():
    assert set(PRESETS) >= {
        "t5-v1_1-tiny", "t5-v1_1-small", "t5-v1_1-base", "t5-v1_1-large", "t5-v1_1-xl",
        "t5-v1_1-xxl", "t5-small", "t5-base", "t5-large", "flan-t5-small", "flan-t5-base",
        "flan-t5-large", "flan-t5-xl", "flan-t5-xxl",
    }  # fmt: skip
    xl = get_preset("flan-t5-xl")
    assert (xl.d_model, xl.d_ff, xl.num_heads, xl.num_encoder_layers) == (2048, 5120, 32, 24)
    small = get_preset("t5-small")
    assert small.feed_forward_proj == "relu" and small.tie_word_embeddings
    assert (small.d_ff, small.num_heads, small.num_decoder_layers) == (2048, 8, 6)
    with pytest.raises(UserError, match="t5-v1_1-base"):
        get_preset("t5-huge")
    with pytest.raises(UserError, match="model_type"):
        config_from_hf({"model_type": "bart"})
    with pytest.raises(UserError, match="feed_forward_proj"):
        config_from_hf({"model_type": "t5", "feed_forward_proj": "gated-silu"})
    with pytest.raises(UserError, match="d_model"):
        config_from_hf({"model_type": "t5", "d_model": "big"})


@pytest.mark.parametrize("name", ["t5-small", "flan-t5-base", "t5-v1_1-tiny"])
def test_hf_config_roundtrip(name):
    cfg = get_preset(name)
    d = config_to_hf(cfg)
    assert config_from_hf(d) == cfg
    # transformers accepts it and its own serialisation (v5 rewrites the tie flag) maps back.
    hf_dict = transformers.T5Config(**d).to_dict()
    assert config_from_hf(hf_dict) == cfg
    # Defaults: num_decoder_layers falls back to num_layers; v1.0 configs tie by default.
    old = config_from_hf({"model_type": "t5", "num_layers": 3, "d_ff": 100})
    assert old.num_decoder_layers == 3 and old.tie_word_embeddings
    assert old.feed_forward_proj == "relu" and old.relative_attention_max_distance == 128


def test_published_config_json_files():
    """Abridged config.json files of google-t5/t5-small and google/flan-t5-base map to presets."""
    t5_small = {
        "architectures": ["T5ForConditionalGeneration"], "d_ff": 2048, "d_kv": 64,
        "d_model": 512, "decoder_start_token_id": 0, "dropout_rate": 0.1, "eos_token_id": 1,
        "initializer_factor": 1.0, "is_encoder_decoder": True, "layer_norm_epsilon": 1e-06,
        "model_type": "t5", "n_positions": 512, "num_heads": 8, "num_layers": 6,
        "output_past": True, "pad_token_id": 0, "relative_attention_num_buckets": 32,
        "vocab_size": 32128,
    }  # fmt: skip
    flan_base = {
        "architectures": ["T5ForConditionalGeneration"], "d_ff": 2048, "d_kv": 64,
        "d_model": 768, "decoder_start_token_id": 0, "dense_act_fn": "gelu_new",
        "dropout_rate": 0.1, "eos_token_id": 1, "feed_forward_proj": "gated-gelu",
        "is_gated_act": True, "layer_norm_epsilon": 1e-06, "model_type": "t5",
        "num_decoder_layers": 12, "num_heads": 12, "num_layers": 12, "pad_token_id": 0,
        "relative_attention_max_distance": 128, "relative_attention_num_buckets": 32,
        "tie_word_embeddings": False, "torch_dtype": "float32", "vocab_size": 32128,
    }  # fmt: skip
    assert config_from_hf(t5_small) == get_preset("t5-small")
    assert config_from_hf(flan_base) == get_preset("flan-t5-base")


# ----------------------------------------------------------------------------- parity
def test_param_tree_matches_spec(hf_case):
    cfg, params, enc, dec, _, _ = hf_case
    shapes = jax.eval_shape(T5(cfg).init, jax.random.key(0), enc, dec)
    ours = jax.tree.map(lambda x: x.shape, nn.meta.unbox(shapes)["params"])
    assert ours == jax.tree.map(lambda x: x.shape, params)
    specs = nn.get_partition_spec(shapes)["params"]
    assert tuple(specs["decoder"]["layers_0"]["self_attention"]["out"]["kernel"]) == (
        "heads", "kv", "embed",
    )  # fmt: skip
    assert tuple(specs["encoder"]["relpos_bias"]["rel_embedding"]) == ("heads", "relpos_buckets")


def test_logits_match_transformers(hf_case):
    cfg, params, enc, dec, ref, fwd = hf_case
    logits = np.asarray(fwd(params, enc, dec))
    assert logits.dtype == np.float32 and logits.shape == ref.shape
    assert np.abs(logits - ref).max() < 1e-4, np.abs(logits - ref).max()


def test_packed_rows_match_separate(hf_case):
    cfg, params, enc, dec, _, fwd = hf_case
    alone = np.asarray(fwd(params, enc, dec))
    # Row 0 packs sequence 2 then sequence 1 (truncated); row 1 packs sequence 1 only.
    n2, n1 = ENC_LENS[2], 12
    d2, d1 = 5, 6
    p_enc, p_seg = np.zeros((2, ENC_LEN), np.int32), np.zeros((2, ENC_LEN), np.int32)
    p_dec, p_dseg = np.zeros((2, DEC_LEN), np.int32), np.zeros((2, DEC_LEN), np.int32)
    p_enc[0, :n2], p_enc[0, n2 : n2 + n1] = enc[2, :n2], enc[1, :n1]
    p_seg[0, :n2], p_seg[0, n2 : n2 + n1] = 1, 2
    p_dec[0, :d2], p_dec[0, d2 : d2 + d1] = dec[2, :d2], dec[1, :d1]
    p_dseg[0, :d2], p_dseg[0, d2 : d2 + d1] = 1, 2
    p_enc[1, :n1], p_seg[1, :n1], p_dec[1, :d1], p_dseg[1, :d1] = enc[1, :n1], 1, dec[1, :d1], 1
    packed = np.asarray(fwd(params, p_enc, p_dec, p_seg, p_dseg))
    np.testing.assert_allclose(packed[0, :d2], alone[2, :d2], atol=1e-4)
    # Sequence 1 truncated to n1 encoder tokens: compare with an unpacked run of the same.
    trunc = enc.copy()
    trunc[1, n1:] = 0
    alone1 = np.asarray(fwd(params, trunc, dec))[1, :d1]
    np.testing.assert_allclose(packed[0, d2 : d2 + d1], alone1, atol=1e-4)
    np.testing.assert_allclose(packed[1, :d1], alone1, atol=1e-4)
    assert np.abs(alone1 - alone[1, :d1]).max() > 1e-3  # the truncation is visible


def test_scan_and_remat_match(v1_1_case):
    cfg, params, enc, dec, ref, fwd = v1_1_case
    assert unscan_params(scan_params(params, cfg), cfg).keys() == params.keys()
    np.testing.assert_array_equal(
        unscan_params(scan_params(params, cfg), cfg)["decoder"]["layers_2"]["mlp"]["wo"]["kernel"],
        params["decoder"]["layers_2"]["mlp"]["wo"]["kernel"],
    )
    weights = jnp.asarray(np.random.default_rng(0).normal(size=ref.shape), jnp.float32)

    def loss_and_grad(c, p):
        def loss(p):
            return jnp.sum(T5(c).apply({"params": p}, enc, dec) * weights)

        return jax.jit(jax.value_and_grad(loss))(p)

    # Two very different code paths must agree: scan + 'minimal' remat vs unrolled + 'full'.
    base_loss = jnp.sum(fwd(params, enc, dec) * weights)
    scan_cfg = dataclasses.replace(cfg, scan_layers=True, remat_policy="minimal")
    s_loss, s_grad = loss_and_grad(scan_cfg, scan_params(params, cfg))
    r_loss, r_grad = loss_and_grad(dataclasses.replace(cfg, remat_policy="full"), params)
    np.testing.assert_allclose(s_loss, base_loss, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(r_loss, base_loss, rtol=1e-4, atol=1e-3)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4),
        unscan_params(s_grad, cfg),
        r_grad,
    )
    shapes = jax.eval_shape(T5(scan_cfg).init, jax.random.key(0), enc, dec)
    specs = nn.get_partition_spec(shapes)["params"]["encoder"]["layers"]
    assert tuple(specs["attention"]["query"]["kernel"]) == ("layers", "embed", "heads", "kv")


def test_dropout(v1_1_case):
    cfg, params, enc, dec, ref, _ = v1_1_case
    model = T5(cfg)

    @jax.jit
    def train_logits(p, key):
        return model.apply({"params": p}, enc, dec, enable_dropout=True, rngs={"dropout": key})

    # rbg keys: the dropout masks compile much faster than with threefry on CPU.
    a = train_logits(params, jax.random.key(1, impl="rbg"))
    b = train_logits(params, jax.random.key(1, impl="rbg"))
    c = train_logits(params, jax.random.key(2, impl="rbg"))
    np.testing.assert_array_equal(a, b)
    assert np.abs(np.asarray(a) - ref).max() > 1e-2 and np.abs(np.asarray(a - c)).max() > 1e-2


@pytest.mark.parametrize("shape", [(4, 3, 64, 64), (5, 333)])  # even and odd last dims
def test_dropout_drops_rate_and_keeps_the_expectation(shape):
    x = jnp.ones(shape, jnp.float32)
    drop = Dropout(0.1)
    key = jax.random.key(3)
    y = np.asarray(drop.apply({}, x, deterministic=False, rngs={"dropout": key}))
    dropped = (y == 0).mean()
    assert abs(dropped - 0.1) < 5 * np.sqrt(0.1 * 0.9 / y.size)  # 5 sigma
    np.testing.assert_allclose(y[y != 0], 1 / (1 - 6554 / 65536), rtol=1e-6)
    np.testing.assert_array_equal(y, drop.apply({}, x, deterministic=False, rngs={"dropout": key}))
    np.testing.assert_array_equal(drop.apply({}, x, deterministic=True), x)
    # Neighbouring elements (the two halves of one random word) are not correlated.
    halves = y.reshape(-1)[: y.size // 2 * 2].reshape(-1, 2) == 0  # [words, 2]
    both = np.logical_and(halves[:, 0], halves[:, 1]).mean()
    assert abs(both - halves[:, 0].mean() * halves[:, 1].mean()) < 0.01
