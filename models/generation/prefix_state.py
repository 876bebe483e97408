"""The engine's prefix regions: each holds one prompt once, for the slots (lanes) that continue it.

With shared prefixes on, `GenerationState.prefix` is a `PrefixState`: R regions of P cache slots
(keys/values per layer [R, K, P, H], filled lengths [R]), each region's prompt tokens [R, P] and the
hidden state of its last prompt token [R, D] (what predicts a new slot's first token, so a slot that
joins a live region later needs no model call), and each slot's lane [B] (r·M + m; R·M: none). A
slot's own cache (`GenerationState.cache`) then holds only the tokens after its region's prompt.
Regions are laid out like slots (over the data/fsdp axes), so region r and slot b share a device when
r // (R / D) == b // (B / D) for D batch shards: the engine places a group's slots and its region so.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from envtune_jax.sharding import constrain
from models.kv_cache import CACHE_AXES, KVCache, cache_shape
from models.prefix_cache import PrefixKV


@dataclasses.dataclass
class PrefixState:
    regions: KVCache  # keys/values per layer [R, K, P, H]; lengths [R]
    tokens_rp: jax.Array  # [R, P] int32 each region's prompt
    hidden_rd: jax.Array  # [R, D] compute dtype: hidden state of each region's last prompt token
    lane_b: jax.Array  # [B] int32 r·lanes + m, or R·lanes for a slot without a region
    lanes: int  # M: slots per region
    attention: str = "two_level"  # prefix_cache.PREFIX_ATTENTION

    @property
    def num_regions(self) -> int:
        return self.tokens_rp.shape[0]

    @property
    def capacity(self) -> int:
        return self.tokens_rp.shape[1]

    @property
    def no_lane(self) -> int:
        return self.num_regions * self.lanes

    def view(self, lane_b: jax.Array | None = None) -> PrefixKV:
        """The model's view for rows with lanes lane_b (default: every slot's)."""
        return PrefixKV(self.regions, self.lane_b if lane_b is None else lane_b, self.lanes, self.attention)

    def offsets_b(self) -> jax.Array:
        """[B] int32: each slot's prefix length (0 without a region)."""
        return self.view().offsets_b()


jax.tree_util.register_dataclass(PrefixState, data_fields=["regions", "tokens_rp", "hidden_rd", "lane_b"],
                                 meta_fields=["lanes", "attention"])


def constrain_prefix(prefix: PrefixState) -> PrefixState:
    """Pins the regions like the slots (region axis over data/fsdp, kv heads over tensor)."""
    regions = KVCache(tuple(constrain(k, CACHE_AXES) for k in prefix.regions.keys),
                      tuple(constrain(v, CACHE_AXES) for v in prefix.regions.values),
                      constrain(prefix.regions.lengths, ("cache_batch",)))
    return dataclasses.replace(prefix, regions=regions,
                               tokens_rp=constrain(prefix.tokens_rp, ("cache_batch", "cache_seq")),
                               hidden_rd=constrain(prefix.hidden_rd, ("cache_batch", None)),
                               lane_b=constrain(prefix.lane_b, ("cache_batch",)))


def empty_prefix(num_layers: int, num_kv_heads: int, head_dim: int, hidden_size: int, regions: int, lanes: int,
                 batch: int, capacity: int, cache_dtype, hidden_dtype, attention: str) -> PrefixState:
    """R empty regions of `capacity` slots; no slot attached."""
    shape_rkph = cache_shape(regions, num_kv_heads, capacity, head_dim)
    cache = KVCache(tuple(jnp.zeros(shape_rkph, cache_dtype) for _ in range(num_layers)),
                    tuple(jnp.zeros(shape_rkph, cache_dtype) for _ in range(num_layers)),
                    jnp.zeros((regions,), jnp.int32))
    return constrain_prefix(PrefixState(cache, jnp.zeros((regions, capacity), jnp.int32),
                                        jnp.zeros((regions, hidden_size), hidden_dtype),
                                        jnp.full((batch,), regions * lanes, jnp.int32), lanes, attention))


def grow_prefix(prefix: PrefixState, capacity: int) -> PrefixState:
    """The same regions with P raised to `capacity` (new slots zero)."""
    extra = capacity - prefix.capacity
    if extra < 0:
        raise ValueError(f"cannot shrink prefix capacity {prefix.capacity} to {capacity}")
    pad = functools.partial(jnp.pad, pad_width=((0, 0), (0, 0), (0, extra), (0, 0)))
    regions = KVCache(tuple(map(pad, prefix.regions.keys)), tuple(map(pad, prefix.regions.values)),
                      prefix.regions.lengths)
    return constrain_prefix(dataclasses.replace(prefix, regions=regions,
                                                tokens_rp=jnp.pad(prefix.tokens_rp, ((0, 0), (0, extra)))))
