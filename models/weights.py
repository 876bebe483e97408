"""One declaration per weight: shape, dtype, logical axes, initializer and HF name/layout.

`declare_weight` creates the nnx.Param and records, as Variable metadata, everything the rest of
the code derives from it: sharding (`logical_axes` → envtune_jax.sharding), HF import/export
(`hf_key`, `hf_layout`, `layout`), abstract initialisation (nnx.eval_shape). Layouts are einops
patterns over the einsum letters, e.g. ours "D N H" ⇄ HF "(N H) D" for q_proj.
"""

from __future__ import annotations

import dataclasses
from typing import Literal, Mapping

import einops
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

Init = Literal["normal", "ones", "zeros"]


@dataclasses.dataclass(frozen=True)
class WeightSpec:
    layout: str  # our layout, einsum letters separated by spaces, e.g. "D N H"
    logical_axes: tuple[str, ...]
    hf_key: str
    hf_layout: str  # HF layout as an einops pattern, e.g. "(N H) D"
    init: Init = "normal"


def _sizes(layout: str, shape: tuple[int, ...]) -> dict[str, int]:
    letters = layout.split()
    if len(letters) != len(shape):
        raise ValueError(f"layout '{layout}' does not fit shape {shape}")
    return {letter.lower(): size for letter, size in zip(letters, shape)}


def declare_weight(
    spec: WeightSpec, shape: tuple[int, ...], param_dtype, rngs: nnx.Rngs, init_std: float = 0.02
) -> nnx.Param:
    """Creates the parameter described by `spec` with the given shape (letters of spec.layout)."""
    _sizes(spec.layout, shape)  # validates rank
    if spec.init == "normal":
        # the barrier keeps XLA from folding init_std into the normal's own scale when the model is created
        # under jit (the loader's sharded random weights): those then equal the eager ones bit for bit
        value = init_std * jax.lax.optimization_barrier(jax.random.normal(rngs.params(), shape, dtype=jnp.float32))
        value = value.astype(param_dtype)
    elif spec.init == "ones":
        value = jnp.ones(shape, dtype=param_dtype)
    else:
        value = jnp.zeros(shape, dtype=param_dtype)
    return nnx.Param(
        value, logical_axes=spec.logical_axes, hf_key=spec.hf_key, hf_layout=spec.hf_layout, layout=spec.layout
    )


def hf_to_ours(hf_array: np.ndarray, hf_layout: str, layout: str, our_shape: tuple[int, ...]) -> np.ndarray:
    """Rearranges an HF tensor into our layout (e.g. q_proj [(N H), D] → [D, N, H])."""
    sizes = _sizes(layout, our_shape)
    pattern = f"{hf_layout.lower()} -> {layout.lower()}"
    return np.ascontiguousarray(einops.rearrange(hf_array, pattern, **sizes))


def ours_to_hf(array: np.ndarray, hf_layout: str, layout: str) -> np.ndarray:
    """Inverse of `hf_to_ours`: our layout → the HF tensor layout."""
    pattern = f"{layout.lower()} -> {hf_layout.lower()}"
    return np.ascontiguousarray(einops.rearrange(array, pattern))


def hf_read_plan(
    hf_layout: str, layout: str, our_shape: tuple[int, ...], our_index: tuple[slice, ...]
) -> tuple[tuple[slice, ...], tuple[int, ...], tuple[slice, ...]]:
    """How to read box `our_index` of our array from the stored HF tensor without reading the rest.

    Returns (hf_index, block_shape, rest_index): `hf_to_ours(hf[hf_index], ..., block_shape)[rest_index]`
    is `hf_to_ours(hf, ...)[our_index]`. A transpose (gate "D F" ⇄ HF "F D") just swaps the slices. A
    merged HF dimension such as q_proj's (N H) is read as the contiguous rows of the outer letter's range
    with the inner letters whole; only a cut inside an inner letter (head_dim, never sharded by the rules)
    reads more than the box, and `rest_index` trims it.
    """
    letters = [letter.lower() for letter in layout.split()]
    sizes = _sizes(layout, our_shape)
    our_index = tuple(our_index) + (slice(None),) * (len(letters) - len(our_index))
    bounds = {letter: _bounds(s, sizes[letter]) for letter, s in zip(letters, our_index)}
    hf_index, block, read_exactly = [], dict(sizes), set()
    for outer, *inner in _groups(hf_layout.lower()):
        start, stop = bounds[outer]
        stride = int(np.prod([sizes[letter] for letter in inner], dtype=np.int64))
        hf_index.append(slice(start * stride, stop * stride))
        block[outer] = stop - start
        read_exactly.add(outer)
    rest = tuple(slice(None) if letter in read_exactly else slice(*bounds[letter]) for letter in letters)
    return tuple(hf_index), tuple(block[letter] for letter in letters), rest


def _bounds(index: slice, size: int) -> tuple[int, int]:
    start, stop, step = index.indices(size)
    if step != 1:
        raise ValueError(f"strided index {index} is not a shard")
    return start, stop


def expected_hf_shape(hf_layout: str, layout: str, our_shape: tuple[int, ...]) -> tuple[int, ...]:
    sizes = _sizes(layout, our_shape)
    shape = []
    for group in _groups(hf_layout):
        size = 1
        for letter in group:
            size *= sizes[letter.lower()]
        shape.append(size)
    return tuple(shape)


def _groups(pattern: str) -> list[list[str]]:
    groups: list[list[str]] = []
    current: list[str] | None = None
    for token in pattern.replace("(", " ( ").replace(")", " ) ").split():
        if token == "(":
            current = []
        elif token == ")":
            groups.append(current or [])
            current = None
        elif current is not None:
            current.append(token)
        else:
            groups.append([token])
    return groups


def weight_metadata(variable: nnx.Variable) -> Mapping[str, object]:
    meta = variable.get_metadata()
    if "hf_key" not in meta:
        raise KeyError("variable was not created by declare_weight")
    return meta
