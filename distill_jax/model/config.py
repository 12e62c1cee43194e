"""T5 hyperparameters: the config dataclass, published presets, and HF config.json conversion."""

from __future__ import annotations

import dataclasses
from typing import Any

from distill_jax.errors import UserError


@dataclasses.dataclass(frozen=True)  # hashable: passed to jit as a static value
class T5Config:
    """Architecture and runtime switches of a T5 encoder-decoder (v1.0, v1.1 and Flan)."""

    vocab_size: int = 32128
    d_model: int = 512
    d_kv: int = 64
    d_ff: int = 1024
    num_heads: int = 6
    num_encoder_layers: int = 8
    num_decoder_layers: int = 8
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    dropout_rate: float = 0.1
    layer_norm_epsilon: float = 1e-6
    feed_forward_proj: str = "gated-gelu"  # "relu" for T5 v1.0
    # True for v1.0: the shared embedding is the lm head and the decoder output is scaled by
    # d_model**-0.5 before it (HF's tie_word_embeddings / scale_decoder_outputs).
    tie_word_embeddings: bool = False
    dtype: str = "float32"  # compute dtype; params are always float32
    scan_layers: bool = False
    remat_policy: str = "none"  # 'none' | 'minimal' (dots saveable) | 'full'
    # 'xla': explicit einsum/softmax attention; 'dot_product': jax.nn.dot_product_attention
    # (cuDNN flash attention on GPU where its limits hold; no attention-probability dropout).
    attention: str = "xla"
    pad_token_id: int = 0
    eos_token_id: int = 1
    decoder_start_token_id: int = 0

    def __post_init__(self):
        for name, options in (
            ("feed_forward_proj", FEED_FORWARD_PROJS),
            ("remat_policy", REMAT_POLICIES),
            ("attention", ATTENTIONS),
            ("dtype", ("float32", "bfloat16", "float16")),
        ):
            value = getattr(self, name)
            if value not in options:
                field = " (config field model.attention)" if name == "attention" else ""
                raise UserError(f"T5Config.{name}={value!r}{field} is not one of {options}")


FEED_FORWARD_PROJS = ("gated-gelu", "relu")
REMAT_POLICIES = ("none", "minimal", "full")
ATTENTIONS = ("xla", "dot_product")
# HF config.json fields that are T5Config fields of the same name, with transformers' defaults.
_HF_FIELDS = {
    "vocab_size": 32128,
    "d_model": 512,
    "d_kv": 64,
    "d_ff": 2048,
    "num_heads": 8,
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "dropout_rate": 0.1,
    "layer_norm_epsilon": 1e-6,
    "pad_token_id": 0,
    "eos_token_id": 1,
    "decoder_start_token_id": 0,
}


def _preset(d_model: int, d_ff: int, heads: int, layers: int, *, v1_0: bool) -> T5Config:
    """Published dims; v1.0 is ReLU with tied embeddings, v1.1/Flan gated-GELU and untied."""
    return T5Config(
        d_model=d_model,
        d_ff=d_ff,
        num_heads=heads,
        num_encoder_layers=layers,
        num_decoder_layers=layers,
        feed_forward_proj="relu" if v1_0 else "gated-gelu",
        tie_word_embeddings=v1_0,
    )


# Published dims (google/t5-v1_1-*, google/flan-t5-*, google-t5/t5-* config.json files).
_V1_1_DIMS = {
    "small": (512, 1024, 6, 8),
    "base": (768, 2048, 12, 12),
    "large": (1024, 2816, 16, 24),
    "xl": (2048, 5120, 32, 24),
    "xxl": (4096, 10240, 64, 24),
}
_V1_0_DIMS = {
    "small": (512, 2048, 8, 6),
    "base": (768, 3072, 12, 12),
    "large": (1024, 4096, 16, 24),
}

PRESETS: dict[str, T5Config] = {
    # Small enough to train on a CPU in tests and the demo; vocab_size is set by the caller.
    "t5-v1_1-tiny": T5Config(
        d_model=128, d_kv=32, d_ff=256, num_heads=4, num_encoder_layers=2, num_decoder_layers=2
    ),
    **{f"t5-v1_1-{k}": _preset(*v, v1_0=False) for k, v in _V1_1_DIMS.items()},
    **{f"flan-t5-{k}": _preset(*v, v1_0=False) for k, v in _V1_1_DIMS.items()},
    **{f"t5-{k}": _preset(*v, v1_0=True) for k, v in _V1_0_DIMS.items()},
}


def get_preset(name: str) -> T5Config:
    """Returns the preset named `name` (e.g. 't5-v1_1-small'); UserError listing valid names."""
    if name not in PRESETS:
        raise UserError(
            f"config.model.preset={name!r} is not a known T5 preset; valid: {', '.join(PRESETS)}"
        )
    return PRESETS[name]


def _field(hf: dict, key: str, kind: type, default: Any) -> Any:
    """Reads hf[key] (or default) and checks its type; UserError names the field."""
    value = default if hf.get(key) is None else hf[key]
    ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok or (kind is int and value < 0):
        raise UserError(f"HF config.json field {key!r}={value!r}: expected a {kind.__name__}")
    return value


def config_from_hf(hf: dict) -> T5Config:
    """Converts a Hugging Face T5 `config.json` dict to a T5Config (missing fields take
    transformers' defaults); UserError naming the field for an architecture we lack."""
    model_type = hf.get("model_type")
    if model_type != "t5":
        raise UserError(
            f"HF config.json field 'model_type'={model_type!r}: only 't5' (T5 v1.0, v1.1, Flan-T5) "
            "is supported"
        )
    ff = _field(hf, "feed_forward_proj", str, "relu")
    if ff not in FEED_FORWARD_PROJS:
        raise UserError(
            f"HF config.json field 'feed_forward_proj'={ff!r} is not supported; "
            f"supported: {FEED_FORWARD_PROJS}"
        )
    num_layers = _field(hf, "num_layers", int, 6)
    # transformers >= 5 always writes tie_word_embeddings=True and keeps the v1.0 behaviour
    # (shared lm head + output scaling) in scale_decoder_outputs; older files only have the tie.
    tie_key = "scale_decoder_outputs" if "scale_decoder_outputs" in hf else "tie_word_embeddings"
    tie = _field(hf, tie_key, bool, True)
    eos = hf.get("eos_token_id")
    if isinstance(eos, list) and eos:
        hf = {**hf, "eos_token_id": eos[0]}
    return T5Config(
        **{key: _field(hf, key, type(default), default) for key, default in _HF_FIELDS.items()},
        num_encoder_layers=num_layers,
        num_decoder_layers=_field(hf, "num_decoder_layers", int, num_layers),
        feed_forward_proj=ff,
        tie_word_embeddings=tie,
    )


def config_to_hf(cfg: T5Config) -> dict:
    """Converts a T5Config to a HF `config.json` dict that `transformers.T5Config(**d)` loads."""
    gated = cfg.feed_forward_proj == "gated-gelu"
    return {
        **{key: getattr(cfg, key) for key in _HF_FIELDS},
        "architectures": ["T5ForConditionalGeneration"],
        "model_type": "t5",
        "num_layers": cfg.num_encoder_layers,
        "num_decoder_layers": cfg.num_decoder_layers,
        "initializer_factor": 1.0,
        "feed_forward_proj": cfg.feed_forward_proj,
        "dense_act_fn": "gelu_new" if gated else "relu",
        "is_gated_act": gated,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        # transformers 5 reads v1.0-vs-v1.1 from this (it forces tie_word_embeddings=True).
        "scale_decoder_outputs": cfg.tie_word_embeddings,
        "is_encoder_decoder": True,
        "use_cache": True,
    }
