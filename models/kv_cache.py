"""The KV cache: per layer keys/values for B sequences of up to S slots, plus each sequence's length.

Layout [B, K, S, H] (kv heads before slots): a decode step's attention einsums
(BTKGH,BKSH->BKGTS and BKGTS,BKSH->BTKGH) then have their batch dimensions (B, K) outermost and
read the cache as it lies. With [B, S, K, H], XLA's compiled decode loop makes a transposed copy of
every layer's keys and values in every step (seen in the optimised HLO; tests/generation/test_generation_layout.py
keeps it out): two more passes over the cache, whose reads bound decode at large batch.

Sequences are left-aligned: slot s of sequence b holds the token at position s, and slots at or
beyond `lengths[b]` are empty. Appending T new tokens (ragged: `num_new[b]` ≤ T of them real)
writes slots lengths[b] .. lengths[b]+T-1 and advances lengths by num_new, so pad tokens written
past the new length are simply overwritten later.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

CACHE_AXES = ("cache_batch", "cache_kv_heads", "cache_seq", "cache_head_dim")


@dataclasses.dataclass
class KVCache:
    keys: tuple[jax.Array, ...]  # per layer [B, K, S, H]
    values: tuple[jax.Array, ...]  # per layer [B, K, S, H]
    lengths: jax.Array  # [B] int32, valid slots per sequence

    @property
    def batch_size(self) -> int:
        return self.lengths.shape[0]

    @property
    def max_len(self) -> int:
        return self.keys[0].shape[2]


jax.tree_util.register_dataclass(KVCache, data_fields=["keys", "values", "lengths"], meta_fields=[])


def cache_shape(batch: int, num_kv_heads: int, max_len: int, head_dim: int) -> tuple[int, int, int, int]:
    """The shape of one layer's keys (or values): [B, K, S, H]."""
    return (batch, num_kv_heads, max_len, head_dim)


def write_kv(
    cache_bksh: jax.Array, new_btkh: jax.Array, starts_b: jax.Array, rows_b: jax.Array | None = None
) -> jax.Array:
    """Writes new [B', T, K, H] into cache [B, K, S, H] at slots starts[b] + t (dropped past S).

    Row b of new goes to cache row rows_b[b] (default b; an index ≥ B drops the row).
    """
    slots_bt = _slots(starts_b, new_btkh.shape[1])
    rows = jnp.arange(new_btkh.shape[0]) if rows_b is None else rows_b
    batch_bt = jnp.broadcast_to(rows[:, None], slots_bt.shape)
    # advanced indices split by a slice: the indexed view is [B', T, K, H], the layout of new_btkh
    return cache_bksh.at[batch_bt, :, slots_bt, :].set(new_btkh.astype(cache_bksh.dtype), mode="drop")


def read_window(cache_bksh: jax.Array, starts_b: jax.Array, width: int) -> jax.Array:
    """The [B, T, K, H] entries at slots starts[b] + t of cache [B, K, S, H] (zeros past S)."""
    slots_bt = _slots(starts_b, width)
    batch_bt = jnp.broadcast_to(jnp.arange(cache_bksh.shape[0])[:, None], slots_bt.shape)
    return cache_bksh.at[batch_bt, :, slots_bt, :].get(mode="fill", fill_value=0)


def write_positions(
    per_position_bs: jax.Array, new_bt: jax.Array, starts_b: jax.Array, rows_b: jax.Array | None = None
) -> jax.Array:
    """Writes new [B', T, ...] into a per-position array [B, S, ...] at starts[b] + t (dropped past S).

    Row b of new goes to row rows_b[b] (default b; an index ≥ B drops the row).
    """
    slots_bt = _slots(starts_b, new_bt.shape[1])
    rows = jnp.arange(new_bt.shape[0]) if rows_b is None else rows_b
    batch_bt = jnp.broadcast_to(rows[:, None], slots_bt.shape)
    return per_position_bs.at[batch_bt, slots_bt].set(new_bt.astype(per_position_bs.dtype), mode="drop")


def _slots(starts_b: jax.Array, width: int) -> jax.Array:
    """[B, T] slot indices starts[b] + t."""
    return starts_b[:, None] + jnp.arange(width, dtype=starts_b.dtype)[None, :]
