"""The engine's prefix regions: each holds one prompt once, for the slots (lanes) that continue it.

With shared prefixes on, `GenerationState.prefix` is a `PrefixState`: R regions of P cache slots
(keys/values per layer [R, K, P, H], filled lengths [R]), each region's prompt tokens [R, P] and the
hidden state of its last prompt token [R, D] (what predicts a new slot's first token, so a slot that
joins a live region later needs no model call), and each slot's lane [B] (r·M + m; R·M: none). A
slot's own cache (`GenerationState.cache`) then holds only the tokens after its region's prompt.
Regions are laid out like slots (over the data/fsdp axes), so region r and slot b share a device when
r // (R / D) == b // (B / D) for D batch shards: the engine places a group's slots and its region so.
`FIELDS` declares these arrays once; creating, pinning, growing and emptying map over it (fields.py).
"""

from __future__ import annotations

import dataclasses

import jax

from envtune_jax.models.generation import fields as fl
from envtune_jax.models.generation.fields import ArrayField
from envtune_jax.models.kv_cache import KVCache
from envtune_jax.models.prefix_cache import PrefixKV


@dataclasses.dataclass
class PrefixState:
    regions: KVCache  # keys/values per layer [R, K, P, H]; lengths [R]
    tokens_rp: jax.Array  # [R, P] int32 each region's prompt
    hidden_rd: jax.Array  # [R, D] compute dtype: hidden state of each region's last prompt token
    lane_b: jax.Array  # [B] int32 r·lanes + m, or R·lanes for a slot without a region
    lanes: int  # M: slots per region
    attention: str = "two_level"  # one of envtune_jax.models.config.PREFIX_ATTENTION

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


jax.tree_util.register_dataclass(
    PrefixState, data_fields=["regions", "tokens_rp", "hidden_rd", "lane_b"], meta_fields=["lanes", "attention"]
)

# Every array of PrefixState. An emptied region (before a new prompt) gets length 0, its other entries are
# overwritten by the prefill; a released slot gets no lane.
FIELDS: tuple[ArrayField, ...] = (
    ArrayField("regions.keys", ("R", "K", "P", "H"), "cache", per_layer=True, resets=False),
    ArrayField("regions.values", ("R", "K", "P", "H"), "cache", per_layer=True, resets=False),
    ArrayField("regions.lengths", ("R",), "int32"),
    ArrayField("tokens_rp", ("R", "P"), "int32", resets=False),
    ArrayField("hidden_rd", ("R", "D"), "hidden", resets=False),
    ArrayField("lane_b", ("B",), "int32", "no_lane"),
)


def constrain_prefix(prefix: PrefixState) -> PrefixState:
    """Pins the regions like the slots (region axis over data/fsdp, kv heads over tensor)."""
    return fl.constrain_fields(prefix, FIELDS)


def empty_prefix(
    num_layers: int,
    num_kv_heads: int,
    head_dim: int,
    hidden_size: int,
    regions: int,
    lanes: int,
    batch: int,
    capacity: int,
    cache_dtype,
    hidden_dtype,
    attention: str,
) -> PrefixState:
    """R empty regions of `capacity` slots; no slot attached."""
    sizes = {
        "R": regions,
        "B": batch,
        "K": num_kv_heads,
        "P": capacity,
        "H": head_dim,
        "D": hidden_size,
        "no_lane": regions * lanes,
    }
    arrays = fl.empty_arrays(FIELDS, sizes, {"cache": cache_dtype, "hidden": hidden_dtype}, num_layers)
    cache = KVCache(arrays.pop("regions.keys"), arrays.pop("regions.values"), arrays.pop("regions.lengths"))
    return constrain_prefix(PrefixState(cache, lanes=lanes, attention=attention, **arrays))


def grow_prefix(prefix: PrefixState, capacity: int) -> PrefixState:
    """The same regions with P raised to `capacity` (new slots zero)."""
    extra = capacity - prefix.capacity
    if extra < 0:
        raise ValueError(f"cannot shrink prefix capacity {prefix.capacity} to {capacity}")
    return constrain_prefix(fl.pad_dim(prefix, FIELDS, "P", extra))


def reset_prefix_rows(prefix: PrefixState, rows: str, where_x: jax.Array) -> PrefixState:
    """Regions (rows "R") or slots (rows "B") where where_x is True emptied: a region's length 0, a slot's
    lane none."""
    return constrain_prefix(fl.reset_rows(prefix, FIELDS, rows, where_x, {"no_lane": prefix.no_lane}))
