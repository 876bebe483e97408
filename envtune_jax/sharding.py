"""Logical axis names → mesh axes: the one table of sharding rules, and helpers that apply it.

Every weight and key activation in the code names its dimensions logically ("embed", "q_heads",
"act_batch", ...). `LOGICAL_AXIS_RULES` maps each name to mesh axes of the (data, fsdp, tensor)
mesh. `logical_to_spec` turns a tuple of logical names into a PartitionSpec, dropping a mesh axis
already used by an earlier dimension (collision) or one whose size does not divide the dimension
(so e.g. 8 kv heads on a tensor axis of 16 stay replicated instead of failing).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

LOGICAL_AXIS_RULES: Mapping[str, tuple[str, ...]] = {
    # weights
    "vocab": ("tensor",),
    "embed": ("fsdp",),
    "q_heads": ("tensor",),
    "kv_heads": ("tensor",),
    "head_dim": (),
    "mlp": ("tensor",),
    "norm": (),
    # activations
    "act_batch": ("data", "fsdp"),
    "act_seq": (),
    "act_embed": (),
    "act_q_heads": ("tensor",),
    "act_kv_heads": ("tensor",),
    "act_mlp": ("tensor",),
    "act_vocab": ("tensor",),
    # KV cache
    "cache_layers": (),
    "cache_batch": ("data", "fsdp"),
    "cache_seq": (),
    "cache_kv_heads": ("tensor",),
    "cache_head_dim": (),
}


def _axis_sizes(mesh) -> dict[str, int]:
    return dict(zip(mesh.axis_names, mesh.axis_sizes)) if mesh is not None else {}


def logical_to_spec(
    logical_axes: Sequence[str | None],
    shape: Sequence[int] | None = None,
    mesh: Mesh | None = None,
    rules: Mapping[str, tuple[str, ...]] = LOGICAL_AXIS_RULES,
) -> PartitionSpec:
    """PartitionSpec for an array whose dimensions carry `logical_axes`.

    A mesh axis is used at most once per array; with `shape` and `mesh` given, a mesh axis (or its
    product with the others of the same dimension) that does not divide the dimension is dropped.
    """
    sizes = _axis_sizes(mesh)
    used: set[str] = set()
    spec: list[str | tuple[str, ...] | None] = []
    for dim, name in enumerate(logical_axes):
        if name is None:
            spec.append(None)
            continue
        if name not in rules:
            raise KeyError(f"logical axis '{name}' has no sharding rule; add it to LOGICAL_AXIS_RULES")
        chosen: list[str] = []
        product = 1
        for mesh_axis in rules[name]:
            if mesh_axis in used or (mesh is not None and mesh_axis not in sizes):
                continue
            size = sizes.get(mesh_axis, 1)
            if shape is not None and mesh is not None and shape[dim] % (product * size) != 0:
                continue
            chosen.append(mesh_axis)
            product *= size
        used.update(chosen)
        spec.append(None if not chosen else chosen[0] if len(chosen) == 1 else tuple(chosen))
    return PartitionSpec(*spec)


def named_sharding(mesh: Mesh, logical_axes: Sequence[str | None], shape: Sequence[int]) -> NamedSharding:
    return NamedSharding(mesh, logical_to_spec(logical_axes, shape, mesh))


def constrain(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
    """Sharding constraint on an activation, when a mesh is active (`jax.set_mesh`); else a no-op."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty:
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_spec(logical_axes, x.shape, mesh))
