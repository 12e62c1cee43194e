"""The one place that checks a config: every field a user sets, before anything is built.

`validate(config)` runs first in every mode (launch.py's train, eval, predict, export, data):
it checks what the config and the platform decide (field ranges and names, the dataset and its
teacher, the mesh against the devices and processes). `validate_model(config, model_cfg)` runs
once the model's dimensions are known (after the tokenizer, before any array or mesh is
built): every dimension a mesh axis shards must divide by that axis's size. Each problem is a
`UserError` naming the config field, its value and what it must satisfy.
`validate_teacher(config.teacher)` checks the teacher's block when `--mode=teach` starts.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import linen as nn

from distill_jax import sharding
from distill_jax.data import sources
from distill_jax.errors import UserError
from distill_jax.model import config as model_config
from distill_jax.model.config import T5Config

MODEL_TYPES = ("task_prefix", "standard")
OPTIMIZERS = ("adamw", "adafactor")
DTYPES = ("auto", "float32", "bfloat16")
# Logical parameter axes and the T5Config field each one is (for messages only: which dims a
# mesh axis shards comes from the parameters' own axis names and sharding.LOGICAL_AXIS_RULES).
DIM_FIELDS = {
    "vocab": "vocab_size (the tokenizer's, rounded up to a multiple of 128)",
    "embed": "d_model",
    "mlp": "d_ff",
    "heads": "num_heads",
    "kv": "d_kv",
}


def validate(config: ml_collections.ConfigDict) -> None:
    """Rejects impossible settings up front, naming the offending field (module docstring)."""
    _check_train(config.train)
    check_data(config.data, config.seed)
    _check_model(config.model)
    _check_positive(config.eval, ("gen_max_len", "rationale_max_len", "batch_size"), "eval")
    if config.eval.max_examples < 0:
        raise UserError(f"config field eval.max_examples={config.eval.max_examples}: use >= 0.")
    _check_positive(config.checkpoint, ("every_steps", "keep"), "checkpoint")
    if config.dtype not in DTYPES:
        raise UserError(f"config field dtype={config.dtype!r}: 'auto', 'float32' or 'bfloat16'.")
    _check_mesh(config)


def mesh_shape(config: ml_collections.ConfigDict) -> dict[str, int]:
    """{'data', 'fsdp', 'tensor'} sizes of the mesh over all devices (the -1 filled in)."""
    m = config.mesh
    shape = sharding.resolve_mesh_shape(m.data, m.fsdp, m.tensor, jax.device_count())
    return dict(zip(sharding.MESH_AXES, shape, strict=True))


def check_data(data: ml_collections.ConfigDict, seed: int) -> None:
    """The `data.*` fields and the seed: dataset, teacher, labels, subsample, lengths."""
    if data.name not in sources.SUPPORTED:
        raise UserError(
            f"config field data.name={data.name!r} is not supported; use one of "
            f"{', '.join(sorted(sources.SUPPORTED))}."
        )
    llm = sources.teacher(data)
    allowed = ("generic", None) if data.name == "generic" else ("palm", "gpt")
    if llm not in allowed:
        raise UserError(
            f"config field data.llm={llm!r} is not valid for {data.name}; use one of "
            f"{', '.join(map(repr, allowed))}."
        )
    if data.name in sources.SPECS and llm not in sources.SPECS[data.name].llms:
        raise UserError(
            f"config field data.llm={llm!r} is not available for {data.name}: the reference "
            f"has outputs of {' and '.join(sources.SPECS[data.name].llms)} for it."
        )
    if data.label_type not in ("gt", "llm"):
        raise UserError(f"config field data.label_type={data.label_type!r}: 'gt' or 'llm'.")
    if data.label_type == "llm" and llm is None:
        raise UserError("config field data.label_type='llm' needs the LLM's labels: set data.llm.")
    if not 0.0 < data.subsample <= 1.0:
        raise UserError(f"config field data.subsample={data.subsample}: must be in (0, 1].")
    if int(seed) < 0:
        raise UserError(f"config field seed={seed}: must be >= 0.")
    _check_positive(data, ("max_input_length", "max_target_length"), "data")
    for field in ("pack_input_length", "pack_target_length", "row_bucket"):
        if data[field] < 0:
            raise UserError(f"config field data.{field}={data[field]}: use 0 (automatic) or more.")


def _check_positive(block: ml_collections.ConfigDict, fields, prefix: str) -> None:
    for field in fields:
        if int(block[field]) <= 0:
            raise UserError(f"config field {prefix}.{field}={block[field]}: must be positive.")


def _check_train(t: ml_collections.ConfigDict) -> None:
    if not 0.0 <= t.alpha <= 1.0:
        raise UserError(f"config field train.alpha={t.alpha}: must lie in [0, 1].")
    if t.model_type not in MODEL_TYPES:
        raise UserError(
            f"config field train.model_type={t.model_type!r}: use 'task_prefix' or 'standard'."
        )
    _check_positive(
        t, ("batch_size", "grad_steps", "max_steps", "eval_steps", "log_every"), "train"
    )
    if t.batch_size % t.grad_steps:
        raise UserError(
            f"config fields train.batch_size={t.batch_size} and train.grad_steps={t.grad_steps}:"
            " the batch must split evenly into micro-batches."
        )
    if t.optimizer.lower() not in OPTIMIZERS:
        raise UserError(
            f"config field train.optimizer={t.optimizer!r}: use 'adamw' or 'adafactor'."
        )
    if t.warmup_steps < 0 or t.lr <= 0:
        raise UserError(
            f"config fields train.lr={t.lr}, train.warmup_steps={t.warmup_steps}: the learning "
            "rate must be positive and the warm-up >= 0."
        )


def _check_model(m: ml_collections.ConfigDict) -> None:
    if not m.from_pretrained:  # from scratch: the preset is the architecture
        model_config.get_preset(m.preset)  # UserError listing the presets
        if m.vocab_size <= 0:
            raise UserError(f"config field model.vocab_size={m.vocab_size}: must be positive.")
    if m.remat_policy not in model_config.REMAT_POLICIES:
        raise UserError(
            f"config field model.remat_policy={m.remat_policy!r}: use one of "
            f"{', '.join(map(repr, model_config.REMAT_POLICIES))}."
        )
    if m.dropout_rate is not None and not 0.0 <= m.dropout_rate < 1.0:
        raise UserError(f"config field model.dropout_rate={m.dropout_rate}: must be in [0, 1).")


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


def validate_model(config: ml_collections.ConfigDict, model_cfg: T5Config) -> None:
    """Every parameter dimension a mesh axis shards must be divisible by that axis's size.

    Which dimensions each axis shards is read off the model's own parameters (their logical
    axis names, traced with `jax.eval_shape`: nothing is allocated) through
    `sharding.LOGICAL_AXIS_RULES`, exactly as the sharded init will place them.
    """
    from distill_jax.model.t5 import T5  # the model module is heavy; only needed here

    shape = mesh_shape(config)
    if math.prod(shape.values()) == 1:
        return
    tokens = jnp.ones((1, 8), jnp.int32)
    boxed = jax.eval_shape(
        lambda rng: T5(model_cfg).init({"params": rng}, tokens, tokens)["params"],
        jax.random.key(0),
    )
    leaves = jax.tree_util.tree_flatten_with_path(
        boxed, is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata)
    )[0]
    for path, leaf in leaves:
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


TEACHER_BACKENDS = ("openai", "hf", "batch_export", "batch_import")
TEACHER_APIS = ("chat", "completions")
TEACHER_FILTERS = ("parsed", "gold", "majority", "none")
TEACHER_SPLITS = ("train", "valid", "test")


def _teacher_field(name: str, value: Any, why: str) -> UserError:
    return UserError(f"config field teacher.{name}={value!r}: {why}")


def validate_teacher(t: ml_collections.ConfigDict) -> None:
    """The `config.teacher` block (`--mode=teach`): UserError naming the first impossible field."""
    if t.backend not in TEACHER_BACKENDS:
        raise _teacher_field(
            "backend", t.backend, f"use one of {', '.join(map(repr, TEACHER_BACKENDS))}"
        )
    if t.api not in TEACHER_APIS:
        raise _teacher_field("api", t.api, "use 'chat' or 'completions'")
    if t.filter not in TEACHER_FILTERS:
        raise _teacher_field(
            "filter", t.filter, f"use one of {', '.join(map(repr, TEACHER_FILTERS))}"
        )
    if t.split not in TEACHER_SPLITS:
        raise _teacher_field("split", t.split, "use 'train', 'valid' or 'test'")
    if not str(t.model).strip():  # it is part of every cache key (and custom_id)
        hint = "the local model directory" if t.backend == "hf" else "the name the server serves"
        raise _teacher_field("model", t.model, f"set it to {hint}")
    if t.backend == "openai" and not str(t.base_url).startswith(("http://", "https://")):
        raise _teacher_field("base_url", t.base_url, "must start with http:// or https://")
    if not str(t.api_key_env).strip():
        raise _teacher_field("api_key_env", t.api_key_env, "name an environment variable")
    for name in ("num_samples", "concurrency", "max_tokens"):
        if int(t[name]) < 1:
            raise _teacher_field(name, t[name], "must be at least 1")
    for name in ("num_shots", "max_retries"):
        if int(t[name]) < 0:
            raise _teacher_field(name, t[name], "must be >= 0")
    if float(t.timeout_s) <= 0:
        raise _teacher_field("timeout_s", t.timeout_s, "must be positive")
    if float(t.backoff_s) < 0 or float(t.backoff_max_s) < float(t.backoff_s):
        raise _teacher_field("backoff_s", t.backoff_s, "must be >= 0 and <= teacher.backoff_max_s")
    if not 0.0 <= float(t.temperature) <= 2.0:
        raise _teacher_field("temperature", t.temperature, "must lie in [0, 2]")
    if t.filter == "majority" and int(t.num_samples) < 2:
        raise _teacher_field("filter", t.filter, "needs teacher.num_samples >= 2 to vote")
