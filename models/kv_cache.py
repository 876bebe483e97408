"""The KV cache: per layer keys/values for B sequences of up to S slots, plus each sequence's length.

Sequences are left-aligned: slot s of sequence b holds the token at position s, and slots at or
beyond `lengths[b]` are empty. Appending T new tokens (ragged: `num_new[b]` ≤ T of them real)
writes slots lengths[b] .. lengths[b]+T-1 and advances lengths by num_new, so pad tokens written
past the new length are simply overwritten later.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from envtune_jax.sharding import logical_to_spec

CACHE_AXES = ("cache_batch", "cache_seq", "cache_kv_heads", "cache_head_dim")


@dataclasses.dataclass
class KVCache:
    keys: tuple[jax.Array, ...]  # per layer [B, S, K, H]
    values: tuple[jax.Array, ...]  # per layer [B, S, K, H]
    lengths: jax.Array  # [B] int32, valid slots per sequence

    @property
    def batch_size(self) -> int:
        return self.lengths.shape[0]

    @property
    def max_len(self) -> int:
        return self.keys[0].shape[1]

    @classmethod
    def zeros(cls, num_layers: int, batch: int, max_len: int, num_kv_heads: int, head_dim: int,
              dtype=jnp.bfloat16, mesh=None) -> "KVCache":
        shape = (batch, max_len, num_kv_heads, head_dim)

        def make():
            return jnp.zeros(shape, dtype)

        if mesh is not None:
            sharding = jax.sharding.NamedSharding(mesh, logical_to_spec(CACHE_AXES, shape, mesh))
            make = jax.jit(make, out_shardings=sharding)
        keys = tuple(make() for _ in range(num_layers))
        values = tuple(make() for _ in range(num_layers))
        return cls(keys, values, jnp.zeros((batch,), jnp.int32))


jax.tree_util.register_dataclass(KVCache, data_fields=["keys", "values", "lengths"], meta_fields=[])


def write(cache_bskh: jax.Array, new_btkh: jax.Array, starts_b: jax.Array) -> jax.Array:
    """Writes new [B, T, K, H] into cache [B, S, K, H] at slots starts[b] + t (dropped past S)."""
    t = new_btkh.shape[1]
    slots_bt = starts_b[:, None] + jnp.arange(t, dtype=starts_b.dtype)[None, :]
    batch_bt = jnp.broadcast_to(jnp.arange(cache_bskh.shape[0])[:, None], slots_bt.shape)
    return cache_bskh.at[batch_bt, slots_bt].set(new_btkh.astype(cache_bskh.dtype), mode="drop")
