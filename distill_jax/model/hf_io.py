"""Hugging Face T5 checkpoints: find a directory or hub id, import its weights, export ours.

Weights are read from model.safetensors, flax_model.msgpack or pytorch_model.bin (each single or
sharded with an index; torch optional), brought to PyTorch names and layouts, then mapped onto
our parameter tree by `_layout`. Exports write what transformers expects.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
import tempfile
import warnings
from collections.abc import Iterator

import jax
import ml_dtypes
import numpy as np
from flax import serialization, traverse_util
from flax.core import meta
from jax.experimental import multihost_utils
from safetensors.numpy import save_file

from distill_jax.errors import UserError
from distill_jax.model.config import T5Config, config_from_hf, config_to_hf
from distill_jax.model.t5 import scan_params, unscan_params

# What a user of our exports needs to tokenize (the tokenizer's own files; not config.json).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "spiece.model",
)
HUB_PATTERNS = [
    "config.json",
    "*.safetensors",
    "*.safetensors.index.json",
    "flax_model.msgpack",
    "pytorch_model.bin*",
    *TOKENIZER_FILES,
]
# Keys transformers writes or reads that carry no weights of their own (ties, a legacy bias).
_IGNORED = {
    "encoder.embed_tokens.weight",
    "decoder.embed_tokens.weight",
    "lm_head.weight",
    "decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",
}
_SAFETENSORS_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": ml_dtypes.bfloat16,
}


def resolve_pretrained(name_or_path: str) -> pathlib.Path:
    """A local directory as is, else a hub id looked up through the local HF cache."""
    path = pathlib.Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise UserError(f"from_pretrained={name_or_path!r} is a file; expected a directory")
    from huggingface_hub import snapshot_download

    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    error: Exception | None = None
    for local_only in [True] if offline else [False, True]:
        try:
            return pathlib.Path(
                snapshot_download(
                    name_or_path, local_files_only=local_only, allow_patterns=HUB_PATTERNS
                )
            )
        except Exception as e:  # network, unknown repo, bad id, not cached: try the cache
            error = e
    raise UserError(
        f"from_pretrained={name_or_path!r} is neither a local directory nor a model in the HF "
        f"cache ({type(error).__name__}). Download it first with "
        f"`huggingface-cli download {name_or_path}` on a machine with internet access, or set "
        "HF_HOME / HF_HUB_CACHE to the cache that holds it."
    )


def _read_safetensors(path: pathlib.Path) -> dict[str, np.ndarray]:
    """Reads a .safetensors file, memory-mapped (unlike `safetensors.numpy.load_file`): each
    weight is read only when `_convert` casts it, so an 11B checkpoint is never held twice."""
    with open(path, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + size)
    header.pop("__metadata__", None)
    out = {}
    for name, info in header.items():
        if info["dtype"] not in _SAFETENSORS_DTYPES:
            raise UserError(f"{path}: weight {name!r} has unsupported dtype {info['dtype']}")
        start, end = info["data_offsets"]
        out[name] = data[start:end].view(_SAFETENSORS_DTYPES[info["dtype"]]).reshape(info["shape"])
    return out


def _read_torch(path: pathlib.Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError as e:
        raise UserError(
            f"{path}: reading pytorch_model.bin needs PyTorch (`pip install torch`); or convert "
            "the checkpoint to model.safetensors"
        ) from e
    state = torch.load(path, weights_only=True, map_location="cpu")
    return {k: v.float().numpy() for k, v in state.items()}


def _read_flax(path: pathlib.Path) -> dict[str, np.ndarray]:
    """HF Flax names (`.../q/kernel` [in, out]) -> PyTorch names (`....q.weight` [out, in])."""
    tree = serialization.msgpack_restore(path.read_bytes())
    if set(tree) == {"params"}:
        tree = tree["params"]
    out = {}
    for key, value in traverse_util.flatten_dict(tree, sep=".").items():
        prefix, leaf = key.rsplit(".", 1)
        out[f"{prefix}.weight"] = np.asarray(value).T if leaf == "kernel" else np.asarray(value)
    return out


def _read_weights(ckpt: pathlib.Path) -> tuple[dict[str, np.ndarray], str]:
    """All weights of a checkpoint dir in PyTorch naming and layout, and the file they came from."""
    for name, reader in (
        ("model.safetensors", _read_safetensors),
        ("flax_model.msgpack", _read_flax),
        ("pytorch_model.bin", _read_torch),
    ):
        if (ckpt / name).is_file():
            return reader(ckpt / name), str(ckpt / name)
        index = ckpt / f"{name}.index.json"
        if index.is_file():
            try:
                shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (ValueError, KeyError, AttributeError, TypeError) as e:
                raise UserError(f"{index}: not a valid weight index ({e})") from e
            out = {}
            for shard in shards:
                if not (ckpt / shard).is_file():
                    raise UserError(f"{index}: shard {shard!r} listed but missing")
                out.update(reader(ckpt / shard))
            return out, str(index)
    raise UserError(
        f"{ckpt}: no weights found (expected model.safetensors, a sharded model-*.safetensors "
        "with model.safetensors.index.json, flax_model.msgpack or pytorch_model.bin)"
    )


def _layout(cfg: T5Config) -> Iterator[tuple[tuple[str, ...], str, tuple, tuple | None]]:
    """(our param path, HF PyTorch name, its shape, our shape or None for the same array) of every
    weight: nn.Linear keeps [out, in] where our kernels are [in, out] (attention's by head)."""
    d, f, h, k = cfg.d_model, cfg.d_ff, cfg.num_heads, cfg.d_kv
    vocab, buckets = cfg.vocab_size, cfg.relative_attention_num_buckets
    qkv = (h * k, d), (d, h, k)
    mha = [("q", "query", *qkv), ("k", "key", *qkv), ("v", "value", *qkv)]
    mha.append(("o", "out", (d, h * k), (h, k, d)))
    wi = ["wi_0", "wi_1"] if cfg.feed_forward_proj.startswith("gated") else ["wi"]
    mlp = [(w, w, (f, d), (d, f)) for w in wi] + [("wo", "wo", (d, f), (f, d))]
    # Per layer, in HF's `layer.{j}` order: (norm, our module, HF module, its weights).
    ffn = ("pre_mlp_layer_norm", "mlp", "DenseReluDense", mlp)
    stacks = {
        "encoder": [("pre_attention_layer_norm", "attention", "SelfAttention", mha), ffn],
        "decoder": [
            ("pre_self_attention_layer_norm", "self_attention", "SelfAttention", mha),
            ("pre_cross_attention_layer_norm", "encoder_decoder_attention", "EncDecAttention", mha),
            ffn,
        ],
    }
    yield ("shared", "embedding"), "shared.weight", (vocab, d), None
    for stack, subs in stacks.items():
        relpos = f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
        yield (stack, "relpos_bias", "rel_embedding"), relpos, (buckets, h), (h, buckets)
        for i in range(getattr(cfg, f"num_{stack}_layers")):
            ours, hf = (stack, f"layers_{i}"), f"{stack}.block.{i}.layer"
            for j, (norm, module, hf_module, weights) in enumerate(subs):
                yield (*ours, norm, "scale"), f"{hf}.{j}.layer_norm.weight", (d,), None
                for hf_w, w, hf_shape, shape in weights:
                    name = f"{hf}.{j}.{hf_module}.{hf_w}.weight"
                    yield (*ours, module, w, "kernel"), name, hf_shape, shape
        yield (stack, f"{stack}_norm", "scale"), f"{stack}.final_layer_norm.weight", (d,), None
    if not cfg.tie_word_embeddings:
        yield ("decoder", "logits_dense", "kernel"), "lm_head.weight", (vocab, d), (d, vocab)


def _read_config(ckpt: pathlib.Path) -> T5Config:
    path = ckpt / "config.json"
    if not path.is_file():
        raise UserError(f"{ckpt}: config.json is missing; not a Hugging Face model directory")
    try:
        hf = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:  # UnicodeDecodeError too
        raise UserError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(hf, dict):
        raise UserError(f"{path}: expected a JSON object, got {type(hf).__name__}")
    try:
        return config_from_hf(hf)
    except UserError as e:
        raise UserError(f"{path}: {e}") from e


def _convert(cfg: T5Config, state: dict[str, np.ndarray], source: str) -> tuple[T5Config, dict]:
    """PyTorch-named weights -> (config, our unscanned float32 params); checks names and shapes."""
    state = dict(state)
    embed_names = ("shared.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight")
    embed = next((state[k] for k in embed_names if k in state), None)
    if embed is not None:
        state["shared.weight"] = embed
        head = state.setdefault("lm_head.weight", embed)  # transformers 5 ties a missing head
        if cfg.tie_word_embeddings and head is not embed and head.shape == embed.shape:
            if not np.array_equal(head, embed):
                # transformers 5 keeps such a head and still scales the decoder output by
                # d_model**-0.5; an untied head with the scale folded in gives the same logits.
                warnings.warn(
                    f"{source}: lm_head.weight differs from shared.weight; kept untied",
                    stacklevel=3,
                )
                cfg = dataclasses.replace(cfg, tie_word_embeddings=False)
                state["lm_head.weight"] = head.astype(np.float32) * cfg.d_model**-0.5
    flat: dict[tuple[str, ...], np.ndarray] = {}  # our param path -> weight
    layout = list(_layout(cfg))
    for path, name, expected, shape in layout:
        if name not in state:
            raise UserError(
                f"{source}: weight {name!r} is missing (does the checkpoint match config.json?)"
            )
        w = state[name]
        if tuple(w.shape) != expected:
            raise UserError(
                f"{source}: weight {name!r} has shape {tuple(w.shape)}, expected {expected} "
                "from config.json"
            )
        w = np.asarray(w, dtype=np.float32)  # bf16/fp16 upcast here
        flat[path] = np.ascontiguousarray(w if shape is None else w.T.reshape(shape))
    extra = sorted(set(state) - {name for _, name, _, _ in layout} - _IGNORED)
    if extra:
        more = f" and {len(extra) - 10} more" if len(extra) > 10 else ""
        warnings.warn(
            f"{source}: ignoring unexpected weights {', '.join(extra[:10])}{more}", stacklevel=3
        )
    return cfg, traverse_util.unflatten_dict(flat)


def load_pretrained(
    name_or_path: str, *, scan_layers: bool = False, dropout_rate: float | None = None
) -> tuple[T5Config, dict]:
    """Loads a HF T5 checkpoint (local dir or cached hub id) as (config, float32 numpy params),
    unboxed, scanned if `scan_layers`; `dropout_rate=None` keeps the checkpoint's value."""
    ckpt = resolve_pretrained(name_or_path)
    cfg, params = _convert(_read_config(ckpt), *_read_weights(ckpt))
    cfg = dataclasses.replace(cfg, scan_layers=scan_layers)
    if dropout_rate is not None:
        cfg = dataclasses.replace(cfg, dropout_rate=dropout_rate)
    if scan_layers:
        params = scan_params(params, cfg)
    return cfg, params


def _to_numpy(x) -> np.ndarray:
    """A float32 host copy; arrays sharded over several hosts are gathered first."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        x = multihost_utils.process_allgather(x, tiled=True)
    return np.asarray(x, dtype=np.float32)


def export_pretrained(out_dir: str | os.PathLike, cfg: T5Config, params, tokenizer) -> None:
    """Writes a HF T5 directory (config.json, model.safetensors, tokenizer files) atomically.
    `params` may be boxed, scanned, wrapped in {'params': ...} and sharded; every process must
    call this (to gather), process 0 writes."""
    params = meta.unbox(params)
    if "shared" not in params and "params" in params:
        params = params["params"]
    if "layers" in params["encoder"]:
        params = unscan_params(params, cfg)
    flat = traverse_util.flatten_dict(jax.tree.map(_to_numpy, params))
    if tokenizer.vocab_size > cfg.vocab_size:
        raise UserError(
            f"export: the tokenizer has {tokenizer.vocab_size} tokens but the model vocab "
            f"only {cfg.vocab_size}"
        )
    state = {}
    for path, name, hf_shape, shape in _layout(cfg):
        w = flat[path]
        if w.shape != (shape or hf_shape):
            raise ValueError(f"export: {name} has shape {w.shape}, config says {shape or hf_shape}")
        w = w if shape is None else w.reshape(hf_shape[::-1]).T
        state[name] = np.ascontiguousarray(w, dtype=np.float32)
    # transformers ties these to `shared`; writing them keeps every loader free of warnings.
    for name in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight"):
        state[name] = state["shared.weight"]
    if cfg.tie_word_embeddings:
        state["lm_head.weight"] = state["shared.weight"]
    hf_config = config_to_hf(cfg)
    generation = {
        k: hf_config[k] for k in ("decoder_start_token_id", "eos_token_id", "pad_token_id")
    }
    if jax.process_index() != 0:
        return
    out = pathlib.Path(out_dir)
    tmp = export_temp_dir(out, "config.json", "export")
    try:
        os.chmod(tmp, 0o755)
        for name, obj in (("config.json", hf_config), ("generation_config.json", generation)):
            (tmp / name).write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        tokenizer.save(tmp)
        replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # after a failure (replace_dir moved it otherwise)


def export_temp_dir(out: pathlib.Path, marker: str, what: str) -> pathlib.Path:
    """A new temp dir beside `out` to build an export in; refuses an `out` that holds anything
    but an earlier export (a directory with `marker`)."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / marker).is_file())):
        raise UserError(f"export_dir {out}: exists and is not an earlier {what}; pick a new one")
    out.parent.mkdir(parents=True, exist_ok=True)
    return pathlib.Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))


def replace_dir(new: pathlib.Path, out: pathlib.Path) -> None:
    """Moves the finished directory `new` to `out`, replacing an earlier `out`: swap, then
    delete the old one, so `out` is never half-written."""
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    if out.exists():
        out.rename(old)
    new.rename(out)
    if old.exists():
        shutil.rmtree(old)
