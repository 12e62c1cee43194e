"""Device mesh and logical-axis rules: the one place that decides how arrays are sharded.

Pure data parallel, FSDP (ZeRO-3 style) and tensor parallelism are all just mesh shapes over
the axes ('data', 'fsdp', 'tensor'). Parameters and activations carry logical axis names (set
in the model); the rules below map those names to mesh axes, as `t5x/partitioning.py` does.
"""

from __future__ import annotations

import contextlib
import math

import jax
import numpy as np
from flax import linen as nn
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from distill_jax.errors import UserError

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# Order matters: flax assigns each logical axis the first rule whose mesh axis is still free in
# that array, so activations [batch, length, embed] shard batch over (data, fsdp) and leave
# embed replicated, while parameters [vocab, embed] shard embed over fsdp (ZeRO-3).
LOGICAL_AXIS_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", BATCH_AXES),
    ("vocab", "tensor"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("embed", "fsdp"),
    ("kv", None),
    ("length", None),
    ("relpos_buckets", None),
    ("layers", None),
)


def resolve_mesh_shape(data: int, fsdp: int, tensor: int, num_devices: int) -> tuple[int, ...]:
    """Fills in the one axis given as -1 so that the mesh covers exactly `num_devices`."""
    shape = [data, fsdp, tensor]
    for name, size in zip(MESH_AXES, shape, strict=True):
        if size == 0 or size < -1:
            raise UserError(f"config field mesh.{name}={size}: must be a positive count or -1.")
    free = [i for i, s in enumerate(shape) if s == -1]
    if len(free) > 1:
        raise UserError(
            f"config fields mesh.data/fsdp/tensor = {tuple(shape)}: at most one may be -1."
        )
    fixed = math.prod(s for s in shape if s != -1)
    if free:
        if num_devices % fixed:
            raise UserError(
                f"mesh {tuple(shape)}: {num_devices} devices are not divisible by the fixed axes "
                f"(product {fixed})."
            )
        shape[free[0]] = num_devices // fixed
    if math.prod(shape) != num_devices:
        raise UserError(
            f"mesh.data*mesh.fsdp*mesh.tensor = {'*'.join(map(str, shape))} = {math.prod(shape)}"
            f" does not match the {num_devices} available devices; set one axis to -1."
        )
    return tuple(shape)


def create_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices=None) -> Mesh:
    """A ('data', 'fsdp', 'tensor') mesh over all (or the given) devices."""
    devices = jax.devices() if devices is None else list(devices)
    shape = resolve_mesh_shape(data, fsdp, tensor, len(devices))
    # Auto axes: XLA's sharding propagation (GSPMD) places intermediates, guided by the
    # logical constraints in the model; newer JAX defaults make_mesh to Explicit axes.
    axis_types = (AxisType.Auto,) * len(MESH_AXES)
    if devices == jax.devices():
        return jax.make_mesh(shape, MESH_AXES, axis_types=axis_types, devices=devices)
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES, axis_types=axis_types)


def batch_axis_size(mesh: Mesh) -> int:
    """Number of shards along the batch dimension (data * fsdp)."""
    return mesh.shape["data"] * mesh.shape["fsdp"]


def tree_shardings_from_boxed(mesh: Mesh, boxed_tree) -> object:
    """Shardings for a pytree whose leaves are flax `LogicallyPartitioned` boxes (or arrays)."""
    return nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed_tree), mesh, LOGICAL_AXIS_RULES)


def replicated(mesh: Mesh) -> NamedSharding:
    """A sharding that places a full copy on every device."""
    return NamedSharding(mesh, P())


def with_sharding(shape_tree, sharding_tree):
    """ShapeDtypeStructs carrying shardings: the target for Orbax restore and AOT lowering."""
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shape_tree, sharding_tree
    )


@contextlib.contextmanager
def activate(mesh: Mesh):
    """Makes `mesh` current and LOGICAL_AXIS_RULES active (needed while tracing the model)."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_AXIS_RULES):
        yield
