"""The one place that checks a config: every field a user sets, before anything is built. Each
problem is a `UserError` naming the config field, its value and what it must satisfy."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import linen as nn

from distill_jax import sharding
from distill_jax.data import features, sources
from distill_jax.errors import UserError
from distill_jax.model import config as model_config

# Logical parameter axes and the T5Config field each one is (for messages only: which dims a
# mesh axis shards comes from the parameters' own axis names and sharding.LOGICAL_AXIS_RULES).
DIM_FIELDS = {
    "vocab": "vocab_size (the tokenizer's, rounded up to a multiple of 128)",
    "embed": "d_model",
    "mlp": "d_ff",
    "heads": "num_heads",
    "kv": "d_kv",
}

Rule = tuple[str, Callable[[Any], bool], str]  # (field, ok(value), what the value must satisfy)


def _bad(field: str, value: Any, why: str) -> UserError:
    return UserError(f"config field {field}={value!r}: {why}")


def _check(block: ml_collections.ConfigDict, prefix: str, rules: Iterable[Rule]) -> None:
    """Raises a UserError for the first rule whose field fails it."""
    for field, ok, why in rules:
        if not ok(block[field]):
            raise _bad(prefix + field, block[field], why)


def _one_of(allowed: Iterable[Any]) -> str:
    return f"use one of {', '.join(map(repr, allowed))}"


def _choice(field: str, allowed: Iterable[str]) -> Rule:
    return (field, allowed.__contains__, _one_of(allowed))


def _at_least(low: int, fields: str, why: str = "") -> list[Rule]:
    """One rule per field: an integer of at least `low`."""
    why = why or ("must be positive" if low == 1 else f"must be >= {low}")
    return [(field, lambda v: int(v) >= low, why) for field in fields.split()]


TRAIN_RULES = [
    ("alpha", lambda v: 0.0 <= v <= 1.0, "must lie in [0, 1]"),
    _choice("model_type", features.MODEL_TYPES),
    *_at_least(1, "batch_size grad_steps max_steps eval_steps log_every"),
    ("optimizer", lambda v: v.lower() in ("adamw", "adafactor"), "use 'adamw' or 'adafactor'"),
    ("lr", lambda v: v > 0, "the learning rate must be positive"),
    *_at_least(0, "warmup_steps"),
]
DATA_RULES = [
    _choice("label_type", ("gt", "llm")),
    ("subsample", lambda v: 0.0 < v <= 1.0, "must be in (0, 1]"),
    *_at_least(1, "max_input_length max_target_length"),
    *_at_least(0, "pack_input_length pack_target_length row_bucket", "use 0 (automatic) or more"),
]
MODEL_RULES = [
    _choice("remat_policy", model_config.REMAT_POLICIES),
    ("dropout_rate", lambda v: v is None or 0.0 <= v < 1.0, "must be in [0, 1)"),
]
EVAL_RULES = [
    *_at_least(1, "gen_max_len rationale_max_len batch_size"),
    *_at_least(0, "max_examples", "use >= 0 (0 = all)"),
]
TEACHER_RULES = [
    _choice("backend", ("openai", "hf", "batch_export", "batch_import")),
    _choice("api", ("chat", "completions")),
    _choice("filter", ("parsed", "gold", "majority", "none")),
    _choice("split", ("train", "valid", "test")),
    ("api_key_env", lambda v: bool(str(v).strip()), "name an environment variable"),
    *_at_least(1, "num_samples concurrency max_tokens"),
    *_at_least(0, "num_shots max_retries"),
    ("timeout_s", lambda v: float(v) > 0, "must be positive"),
    ("temperature", lambda v: 0.0 <= float(v) <= 2.0, "must lie in [0, 2]"),
]


def validate(config: ml_collections.ConfigDict) -> None:
    """First in every mode but teach: field ranges and names, dataset and teacher, the mesh."""
    t, m = config.train, config.model
    _check(t, "train.", TRAIN_RULES)
    if t.batch_size % t.grad_steps:
        raise UserError(
            f"config fields train.batch_size={t.batch_size} and train.grad_steps={t.grad_steps}:"
            " the batch must split evenly into micro-batches."
        )
    check_data(config.data, config.seed)
    if not m.from_pretrained:  # from scratch: the preset is the architecture
        model_config.get_preset(m.preset)  # UserError listing the presets
        _check(m, "model.", _at_least(1, "vocab_size"))
    _check(m, "model.", MODEL_RULES)
    _check(config.eval, "eval.", EVAL_RULES)
    _check(config.checkpoint, "checkpoint.", _at_least(1, "every_steps keep"))
    _check(config, "", [_choice("dtype", ("auto", "float32", "bfloat16"))])
    _check_mesh(config)


def mesh_shape(config: ml_collections.ConfigDict) -> dict[str, int]:
    """{'data', 'fsdp', 'tensor'} sizes of the mesh over all devices (the -1 filled in)."""
    m = config.mesh
    shape = sharding.resolve_mesh_shape(m.data, m.fsdp, m.tensor, jax.device_count())
    return dict(zip(sharding.MESH_AXES, shape, strict=True))


def check_data(data: ml_collections.ConfigDict, seed: int) -> None:
    """The `data.*` fields and the seed: dataset, teacher, labels, subsample, lengths."""
    check_dataset(data.name)
    llm = sources.teacher(data)
    allowed = ("generic", None) if data.name == "generic" else ("palm", "gpt")
    if llm not in allowed:
        raise _bad("data.llm", llm, f"not valid for {data.name}; {_one_of(allowed)}")
    if data.name in sources.SPECS and llm not in sources.SPECS[data.name].llms:
        teachers = " and ".join(sources.SPECS[data.name].llms)
        raise _bad(
            "data.llm", llm, f"not available for {data.name}: the reference has {teachers} outputs"
        )
    _check(data, "data.", DATA_RULES)
    if data.label_type == "llm" and llm is None:
        raise UserError("config field data.label_type='llm' needs the LLM's labels: set data.llm.")
    if int(seed) < 0:
        raise _bad("seed", seed, "must be >= 0")


def check_dataset(name: str) -> None:
    """`data.name` is a dataset this project reads."""
    if name not in sources.SUPPORTED:
        names = ", ".join(sorted(sources.SUPPORTED))
        raise _bad("data.name", name, f"not supported; use one of {names}")


def _check_mesh(config: ml_collections.ConfigDict) -> None:
    """The mesh against the devices and processes, and what the batch needs of it."""
    shape = mesh_shape(config)  # UserError when the axes do not cover the devices
    batch_axes = shape["data"] * shape["fsdp"]
    processes = jax.process_count()
    if batch_axes % processes:
        raise UserError(
            f"config fields mesh.data*mesh.fsdp = {batch_axes}: must be a multiple of the "
            f"{processes} processes (every process feeds its own rows of each batch)."
        )
    if config.train.batch_size % processes:
        raise UserError(
            f"config field train.batch_size={config.train.batch_size}: must divide evenly over "
            f"{processes} processes."
        )
    if config.data.row_bucket % batch_axes:
        raise UserError(
            f"config field data.row_bucket={config.data.row_bucket}: must be a multiple of the "
            f"{batch_axes} devices on the batch axes (mesh.data*mesh.fsdp), or 0."
        )


def validate_model(config: ml_collections.ConfigDict, model_cfg: model_config.T5Config) -> None:
    """Once the model's dims are known: every parameter dimension a mesh axis shards must be
    divisible by that axis's size (axes from the parameters' names and LOGICAL_AXIS_RULES)."""
    from distill_jax.model.t5 import T5  # the model module is heavy; only needed here

    shape = mesh_shape(config)
    if math.prod(shape.values()) == 1:
        return
    tokens = jnp.ones((1, 8), jnp.int32)
    boxed = jax.eval_shape(
        lambda rng: T5(model_cfg).init({"params": rng}, tokens, tokens)["params"],
        jax.random.key(0),
    )
    for path, leaf in jax.tree.leaves_with_path(boxed, is_leaf=nn.meta.is_axis_metadata):
        if not isinstance(leaf, nn.LogicallyPartitioned):
            continue
        mesh_axes = nn.logical_to_mesh_axes(leaf.names, sharding.LOGICAL_AXIS_RULES)
        for size, name, axes in zip(leaf.value.shape, leaf.names, mesh_axes, strict=True):
            axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
            parts = math.prod(shape[a] for a in axes)
            if size % parts:
                fields = "*".join(f"mesh.{a}" for a in axes)
                values = "*".join(str(shape[a]) for a in axes)
                where = "/".join(str(getattr(k, "key", k)) for k in path)
                raise UserError(
                    f"config field {fields}={values}: the model's {name!r} dimension, "
                    f"{DIM_FIELDS.get(name, name)} = {size} (e.g. parameter {where}, shape "
                    f"{tuple(leaf.value.shape)}), is split over it and must be divisible by "
                    f"{parts}; pick a {fields} that divides {size}."
                )


def validate_teacher(t: ml_collections.ConfigDict) -> None:
    """The `config.teacher` block (`--mode=teach`): UserError naming the first impossible field."""
    _check(t, "teacher.", TEACHER_RULES)
    if not str(t.model).strip():  # it is part of every cache key (and custom_id)
        hint = "the local model directory" if t.backend == "hf" else "the name the server serves"
        raise _bad("teacher.model", t.model, f"set it to {hint}")
    if t.backend == "openai" and not str(t.base_url).startswith(("http://", "https://")):
        raise _bad("teacher.base_url", t.base_url, "must start with http:// or https://")
    if float(t.backoff_s) < 0 or float(t.backoff_max_s) < float(t.backoff_s):
        raise _bad("teacher.backoff_s", t.backoff_s, "must be >= 0 and <= teacher.backoff_max_s")
    if t.filter == "majority" and int(t.num_samples) < 2:
        raise _bad("teacher.filter", t.filter, "needs teacher.num_samples >= 2 to vote")


def validate_serve(s: ml_collections.ConfigDict) -> None:
    """The `config.serve` block (`--mode=serve`)."""
    if s.max_wait_ms < 0 or s.max_body_bytes < 1 or any(r < 1 for r in s.row_buckets):
        raise UserError(
            f"config fields serve.max_wait_ms={s.max_wait_ms} (>= 0), serve.max_body_bytes="
            f"{s.max_body_bytes} (>= 1), serve.row_buckets={s.row_buckets} (each >= 1)"
        )
