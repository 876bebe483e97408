"""Declared state arrays: each array of a state is named once, with its dimensions, dtype and empty value.

The engine's states (`GenerationState`, `PrefixState`) are dataclasses of device arrays. Every array
goes through the same handful of operations: created empty, pinned to its layout on the mesh, grown
along its sequence axis, emptied for some rows, copied between rows, gathered to a few rows and written
back. Those operations map over a table of `ArrayField`s (state.py, prefix_state.py) instead of naming
the arrays one by one, so an array added to a state is declared in one place and every operation
handles it.

Dimensions are letters or fixed sizes: B slots, R prefix regions, S cache slots of a slot's own
sequence, P cache slots of a region's prompt, K kv heads, H head_dim, D hidden size. Each letter maps
to one logical mesh axis (`envtune_jax.sharding`): B and R over the batch shards, S and P over
`cache_seq`, K and H the cache's kv-head and head axes, D and fixed sizes unsharded. The first dimension
of every field is its row axis (B or R); S and P are sequence axes, indexed by position.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp

from envtune_jax.sharding import constrain

AXIS_OF_DIM = {
    "B": "cache_batch",
    "R": "cache_batch",
    "S": "cache_seq",
    "P": "cache_seq",
    "K": "cache_kv_heads",
    "H": "cache_head_dim",
}
SEQUENCE_DIMS = ("S", "P")


@dataclasses.dataclass(frozen=True)
class ArrayField:
    """One array of a state (or one array per layer) and how the row operations treat it."""

    path: str  # attribute name; "cache.keys" for an attribute of a nested dataclass
    dims: tuple[str | int, ...]  # dimension letters (see the module docstring) or fixed sizes; dims[0]: rows
    dtype: str  # a NumPy dtype name, or "cache" / "hidden": the engine's cache / compute dtype
    empty: float | int | bool | str = 0  # value in an empty row (a str names a size, e.g. "no_lane")
    per_layer: bool = False  # a tuple of one array per model layer
    resets: bool = True  # emptying a row writes `empty`; False: kept (data past a length is overwritten later)
    copied: bool = True  # copy_rows copies it to the target row
    history: str | None = None  # the `History` field (results.py) that shows it on the host

    @property
    def axes(self) -> tuple[str | None, ...]:
        return tuple(AXIS_OF_DIM.get(d) if isinstance(d, str) else None for d in self.dims)

    @property
    def sequence_axis(self) -> int | None:
        """The axis indexed by position (S or P), if any."""
        return next((i for i, d in enumerate(self.dims) if d in SEQUENCE_DIMS), None)

    def empty_value(self, sizes: Mapping[str, int]) -> Any:
        return sizes[self.empty] if isinstance(self.empty, str) else self.empty


def of_rows(fields: Sequence[ArrayField], rows: str) -> tuple[ArrayField, ...]:
    """The fields whose row axis is `rows` ("B" or "R")."""
    return tuple(f for f in fields if f.dims[0] == rows)


# ---------------------------------------------------------------- reading and replacing by path
def get(obj: Any, path: str) -> Any:
    for name in path.split("."):
        obj = getattr(obj, name)
    return obj


def replace(obj: Any, changes: Mapping[str, Any]) -> Any:
    """A copy of the dataclass `obj` with the values at `changes`' paths replaced (nested ones copied too)."""
    top: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for path, value in changes.items():
        head, _, rest = path.partition(".")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            top[head] = value
    for head, inner in nested.items():
        top[head] = replace(getattr(obj, head), inner)
    return dataclasses.replace(obj, **top)


def map_fields(obj: Any, fields: Sequence[ArrayField], fn: Callable[[ArrayField, jax.Array], jax.Array]) -> Any:
    """`obj` with fn(field, array) applied to every array of `fields` (to each layer's, for per-layer fields)."""
    changes = {}
    for field in fields:
        value = get(obj, field.path)
        changes[field.path] = tuple(fn(field, x) for x in value) if field.per_layer else fn(field, value)
    return replace(obj, changes)


# ---------------------------------------------------------------- the operations
def empty_arrays(
    fields: Sequence[ArrayField], sizes: Mapping[str, int], dtypes: Mapping[str, Any], num_layers: int
) -> dict[str, Any]:
    """{path: array (tuple per layer)} of an empty state. sizes: one per dimension letter used, plus any size
    an `empty` names; dtypes: "cache" and "hidden"."""
    arrays = {}
    for field in fields:
        shape = tuple(sizes[d] if isinstance(d, str) else d for d in field.dims)
        dtype = jnp.dtype(dtypes.get(field.dtype, field.dtype))
        make = lambda: jnp.full(shape, field.empty_value(sizes), dtype)  # noqa: E731
        arrays[field.path] = tuple(make() for _ in range(num_layers)) if field.per_layer else make()
    return arrays


def constrain_fields(obj: Any, fields: Sequence[ArrayField]) -> Any:
    """Every array pinned to its layout on the active mesh (a no-op without one)."""
    return map_fields(obj, fields, lambda field, x: constrain(x, field.axes))


def pad_dim(obj: Any, fields: Sequence[ArrayField], dim: str, extra: int) -> Any:
    """Every array with dimension `dim` grown by `extra` zeros along it."""

    def pad(field: ArrayField, x: jax.Array) -> jax.Array:
        if dim not in field.dims:
            return x
        widths = [(0, 0)] * x.ndim
        widths[field.dims.index(dim)] = (0, extra)
        return jnp.pad(x, widths)

    return map_fields(obj, fields, pad)


def reset_rows(
    obj: Any, fields: Sequence[ArrayField], rows: str, where_x: jax.Array, sizes: Mapping[str, int] = {}
) -> Any:
    """Rows where where_x [X] is True (X = `rows`) emptied: each resetting field of those rows gets its
    empty value; the others keep theirs."""

    def reset(field: ArrayField, x: jax.Array) -> jax.Array:
        mask = where_x.reshape(where_x.shape + (1,) * (x.ndim - 1))
        return jnp.where(mask, jnp.asarray(field.empty_value(sizes), x.dtype), x)

    return map_fields(obj, [f for f in of_rows(fields, rows) if f.resets], reset)


def copy_rows(obj: Any, fields: Sequence[ArrayField], rows: str, sources_u: jax.Array, targets_u: jax.Array) -> Any:
    """Row targets_u[u] of every copied field becomes a copy of row sources_u[u] [U] (a target ≥ X: padding)."""

    def copy(field: ArrayField, x: jax.Array) -> jax.Array:
        return x.at[targets_u].set(jnp.take(x, sources_u, axis=0, mode="clip"), mode="drop")

    return map_fields(obj, [f for f in of_rows(fields, rows) if f.copied], copy)


def gather_rows(obj: Any, fields: Sequence[ArrayField], rows: str, rows_u: jax.Array) -> Any:
    """`obj` cut down to rows rows_u [U] of every field with row axis `rows` (an index ≥ X repeats the last row)."""
    return map_fields(obj, of_rows(fields, rows), lambda field, x: jnp.take(x, rows_u, axis=0, mode="clip"))


def scatter_rows(
    obj: Any, rows_obj: Any, fields: Sequence[ArrayField], rows: str, rows_u: jax.Array, starts_u: jax.Array, width: int
) -> Any:
    """Writes the rows of `rows_obj` (from gather_rows, then changed) back into `obj` at rows rows_u [U] (an index
    ≥ X is dropped). Fields with a sequence axis write only positions starts_u[u] .. + width - 1 (the window an
    append changed); the others write whole rows."""
    changes = {}
    for field in of_rows(fields, rows):
        full, part = get(obj, field.path), get(rows_obj, field.path)
        axis = field.sequence_axis
        write = (
            _write_rows
            if axis is None
            else functools.partial(_write_window_of, axis=axis, width=width, starts_u=starts_u)
        )
        write = functools.partial(write, rows_u=rows_u)
        changes[field.path] = tuple(map(write, full, part)) if field.per_layer else write(full, part)
    return replace(obj, changes)


def _write_rows(x: jax.Array, rows_x: jax.Array, *, rows_u: jax.Array) -> jax.Array:
    return x.at[rows_u].set(rows_x.astype(x.dtype), mode="drop")


def _write_window_of(
    x: jax.Array, rows_x: jax.Array, *, rows_u: jax.Array, starts_u: jax.Array, width: int, axis: int
) -> jax.Array:
    return write_window(x, read_window(rows_x, starts_u, width, axis), starts_u, rows_u, axis)


# ---------------------------------------------------------------- windows along a sequence axis
def _window_index(rows_x: jax.Array, starts_x: jax.Array, width: int, axis: int, ndim: int) -> tuple:
    """Index of positions starts_x[x] + t (t < width) of rows rows_x [X] along `axis` of an [X, ...] array. The
    advanced indices are split by slices when axis > 1, so the indexed view is [X, T, other axes...] either way."""
    slots_xt = starts_x[:, None] + jnp.arange(width, dtype=starts_x.dtype)[None, :]
    rows_xt = jnp.broadcast_to(rows_x[:, None], slots_xt.shape)
    index = [slice(None)] * ndim
    index[0], index[axis] = rows_xt, slots_xt
    return tuple(index)


def read_window(x: jax.Array, starts_x: jax.Array, width: int, axis: int) -> jax.Array:
    """[X, T, other axes...]: positions starts_x[x] + t along `axis` of x [X, ...] (zeros past its end)."""
    index = _window_index(jnp.arange(x.shape[0]), starts_x, width, axis, x.ndim)
    return x.at[index].get(mode="fill", fill_value=0)


def write_window(x: jax.Array, new_ut: jax.Array, starts_u: jax.Array, rows_u: jax.Array, axis: int) -> jax.Array:
    """x [X, ...] with new [U, T, other axes...] written at rows rows_u, positions starts_u[u] + t along `axis`
    (a row ≥ X or a position past the end is dropped)."""
    index = _window_index(rows_u, starts_u, new_ut.shape[1], axis, x.ndim)
    return x.at[index].set(new_ut.astype(x.dtype), mode="drop")
