"""The engine's state arrays are declared once (models/generation/state.py, prefix_state.py) and every state
operation maps over the declaration: each array is declared exactly once with its shape and dtype, growing,
emptying, copying and gathering/scattering rows touch exactly the arrays their declaration says, and the
windowed write-back equals the KV cache's own writes. No model runs here."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from envtune_jax.models import kv_cache as kv
from envtune_jax.models.generation import fields as fl
from envtune_jax.models.generation import prefix_state, state

LAYERS, KV_HEADS, HEAD_DIM, HIDDEN, BATCH, CAPACITY = 2, 2, 4, 8, 4, 8
REGIONS, LANES, PROMPT_CAPACITY = 2, 2, 6


def _state(with_prefix: bool = True) -> state.GenerationState:
    """An empty state with every array filled with distinct numbers (so that moves are visible)."""
    empty = state.empty_state(LAYERS, KV_HEADS, HEAD_DIM, HIDDEN, BATCH, CAPACITY, jnp.float32, jnp.float32)
    if with_prefix:
        empty = dataclasses.replace(
            empty,
            prefix=prefix_state.empty_prefix(
                LAYERS,
                KV_HEADS,
                HEAD_DIM,
                HIDDEN,
                REGIONS,
                LANES,
                BATCH,
                PROMPT_CAPACITY,
                jnp.float32,
                jnp.float32,
                "two_level",
            ),
        )
    leaves, treedef = jax.tree_util.tree_flatten(empty)
    filled = [(jnp.arange(x.size) % 97 + 1 + i).reshape(x.shape).astype(x.dtype) for i, x in enumerate(leaves)]
    return jax.tree_util.tree_unflatten(treedef, filled)


def _declared(obj, fields) -> dict[str, list[np.ndarray]]:
    return {
        f.path: [np.asarray(x) for x in (fl.get(obj, f.path) if f.per_layer else [fl.get(obj, f.path)])] for f in fields
    }


def test_every_array_is_declared_once_with_its_shape_and_dtype():
    s = _state()
    sizes = {"B": BATCH, "K": KV_HEADS, "S": CAPACITY, "H": HEAD_DIM, "D": HIDDEN, "R": REGIONS, "P": PROMPT_CAPACITY}
    declared_ids = []
    for obj, fields in ((s, state.FIELDS), (s.prefix, prefix_state.FIELDS)):
        for field in fields:
            arrays = fl.get(obj, field.path)
            arrays = arrays if field.per_layer else (arrays,)
            assert len(arrays) == (LAYERS if field.per_layer else 1), field.path
            for x in arrays:
                assert x.shape == tuple(sizes[d] if isinstance(d, str) else d for d in field.dims), field.path
                expected = {"cache": jnp.float32, "hidden": jnp.float32}.get(field.dtype, field.dtype)
                assert x.dtype == jnp.dtype(expected), field.path
                declared_ids.append(id(x))
    leaves = jax.tree_util.tree_leaves(s)
    assert sorted(declared_ids) == sorted(id(x) for x in leaves)  # every leaf once, nothing undeclared


def test_an_empty_state_holds_each_arrays_empty_value():
    empty = state.empty_state(LAYERS, KV_HEADS, HEAD_DIM, HIDDEN, BATCH, CAPACITY, jnp.float32, jnp.float32)
    assert np.all(np.asarray(empty.done_b)) and not np.any(np.asarray(empty.stop_hit_b))
    assert not np.any(np.asarray(empty.cache.lengths))
    prefix = prefix_state.empty_prefix(
        LAYERS,
        KV_HEADS,
        HEAD_DIM,
        HIDDEN,
        REGIONS,
        LANES,
        BATCH,
        PROMPT_CAPACITY,
        jnp.float32,
        jnp.float32,
        "two_level",
    )
    np.testing.assert_array_equal(prefix.lane_b, np.full(BATCH, REGIONS * LANES))  # no slot has a lane


def test_grow_pads_exactly_the_arrays_with_a_sequence_axis():
    s = _state(with_prefix=False)
    grown = state.grow(s, CAPACITY + 4)
    before, after = _declared(s, state.FIELDS), _declared(grown, state.FIELDS)
    for field in state.FIELDS:
        for old, new in zip(before[field.path], after[field.path]):
            if "S" in field.dims:
                axis = field.dims.index("S")
                assert new.shape[axis] == CAPACITY + 4, field.path
                np.testing.assert_array_equal(np.take(new, range(CAPACITY), axis=axis), old)
                assert not np.take(new, range(CAPACITY, CAPACITY + 4), axis=axis).any()
            else:
                np.testing.assert_array_equal(new, old)
    prefix = prefix_state.grow_prefix(_state().prefix, PROMPT_CAPACITY + 2)
    assert prefix.tokens_rp.shape == (REGIONS, PROMPT_CAPACITY + 2)
    assert prefix.regions.keys[1].shape == (REGIONS, KV_HEADS, PROMPT_CAPACITY + 2, HEAD_DIM)


def test_reset_empties_the_declared_arrays_of_the_chosen_slots_only():
    s = _state()
    reset_b = jnp.array([False, True, False, True])
    new_keys = jnp.full((BATCH, 2), 7, jnp.uint32)
    out = state.reset_slots(s, reset_b, new_keys)
    before, after = _declared(s, state.FIELDS), _declared(out, state.FIELDS)
    for field in state.FIELDS:
        for old, new in zip(before[field.path], after[field.path]):
            np.testing.assert_array_equal(new[[0, 2]], old[[0, 2]], err_msg=field.path)
            if field.path == "key_data_b2":
                assert (new[[1, 3]] == 7).all()
            elif field.resets:
                assert (new[[1, 3]] == field.empty).all(), field.path
            else:
                np.testing.assert_array_equal(new[[1, 3]], old[[1, 3]], err_msg=field.path)
    released = state.release_slots(s, reset_b)
    np.testing.assert_array_equal(released.prefix.lane_b, np.where(reset_b, REGIONS * LANES, s.prefix.lane_b))
    np.testing.assert_array_equal(released.cache.lengths, np.where(reset_b, 0, s.cache.lengths))
    regions = prefix_state.reset_prefix_rows(s.prefix, "R", jnp.array([True, False]))
    np.testing.assert_array_equal(regions.regions.lengths, [0, s.prefix.regions.lengths[1]])
    np.testing.assert_array_equal(regions.tokens_rp, s.prefix.tokens_rp)  # overwritten by the next prefill


def test_copy_slots_copies_every_declared_array_but_the_prng_key():
    s = _state(with_prefix=False)
    out = state.copy_slots(s, jnp.array([0, 0]), jnp.array([2, BATCH]))  # the second pair is padding
    before, after = _declared(s, state.FIELDS), _declared(out, state.FIELDS)
    for field in state.FIELDS:
        for old, new in zip(before[field.path], after[field.path]):
            np.testing.assert_array_equal(new[[0, 1, 3]], old[[0, 1, 3]])
            np.testing.assert_array_equal(new[2], old[2] if field.path == "key_data_b2" else old[0], field.path)


def test_gathered_slots_write_back_only_their_window():
    s = _state()
    rows_u = jnp.array([3, 1, BATCH])  # the last row is padding: written nowhere
    rows = state.gather_slots(s, rows_u)
    assert rows.batch_size == 3 and rows.prefix.lane_b.shape == (3,)
    assert int(rows.prefix.lane_b[2]) == s.prefix.no_lane  # a padding row reads no prompt
    starts_u = jnp.array([2, 5, 0])
    width = 2
    changed = jax.tree_util.tree_map(lambda x: (x + 50).astype(x.dtype), dataclasses.replace(rows, prefix=None))
    out = state.scatter_slots(s, dataclasses.replace(changed, prefix=rows.prefix), rows_u, starts_u, width)
    before, after, new_rows = (_declared(x, state.FIELDS) for x in (s, out, changed))
    for field in state.FIELDS:
        for old, new, part in zip(before[field.path], after[field.path], new_rows[field.path]):
            expected = old.copy()
            for u, slot in enumerate([3, 1]):
                axis = field.sequence_axis
                if axis is None:
                    expected[slot] = part[u]
                else:
                    window = range(int(starts_u[u]), min(int(starts_u[u]) + width, CAPACITY))
                    index = (slot,) + (slice(None),) * (axis - 1) + (list(window),)
                    expected[index] = part[(u,) + (slice(None),) * (axis - 1) + (list(window),)]
            np.testing.assert_array_equal(new, expected, err_msg=field.path)
    np.testing.assert_array_equal(out.prefix.lane_b, s.prefix.lane_b)


def test_the_windows_equal_the_kv_caches_own_reads_and_writes():
    rng = np.random.default_rng(0)
    cache_bksh = jnp.asarray(rng.normal(size=(BATCH, KV_HEADS, CAPACITY, HEAD_DIM)), jnp.float32)
    tokens_bs = jnp.asarray(rng.integers(0, 100, (BATCH, CAPACITY)), jnp.int32)
    starts_u, rows_u = jnp.array([1, 7, 0]), jnp.array([2, 0, BATCH])
    new_utkh = jnp.asarray(rng.normal(size=(3, 3, KV_HEADS, HEAD_DIM)), jnp.float32)
    new_ut = jnp.asarray(rng.integers(0, 100, (3, 3)), jnp.int32)
    np.testing.assert_array_equal(
        fl.write_window(cache_bksh, new_utkh, starts_u, rows_u, 2), kv.write_kv(cache_bksh, new_utkh, starts_u, rows_u)
    )
    np.testing.assert_array_equal(
        fl.write_window(tokens_bs, new_ut, starts_u, rows_u, 1), kv.write_positions(tokens_bs, new_ut, starts_u, rows_u)
    )
    starts_b = jnp.array([0, 3, 6, 7])
    np.testing.assert_array_equal(fl.read_window(cache_bksh, starts_b, 3, 2), kv.read_window(cache_bksh, starts_b, 3))
