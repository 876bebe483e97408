"""The model's view of shared prompts: prefix regions that cached sequences continue.

`PrefixKV` is what `Qwen3.hidden_states(..., cache=suffixes, prefix=PrefixKV)` takes: the regions' keys
and values per layer [R, K, P, H] with their filled lengths [R] (a `KVCache` over regions), and each
row's lane `lane_b` [B] = r·lanes + m (region r, lane m; R·lanes: the row has no prefix). A row's
sequence is its region's P_r prompt tokens followed by its own cached suffix, so its token at suffix
slot s has position P_r + s. `attention` picks the two-level path ("two_level": the prompt read once per
region, merged by log-sum-exp) or the plain concatenated einsum ("reference"); see prefix_attention.py.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from envtune_jax.models.config import PREFIX_ATTENTION
from envtune_jax.models.kv_cache import KVCache
from envtune_jax.models.prefix_attention import shared_prefix_attention, shared_prefix_attention_reference
from envtune_jax.models.prefix_parts import region_of


@dataclasses.dataclass
class PrefixLayer:
    """One layer's prefix keys/values [R, K, P, H] and the lanes of the rows that read them."""

    keys: jax.Array
    values: jax.Array
    lengths_r: jax.Array  # [R] int32
    lane_b: jax.Array  # [B] int32
    lanes: int
    attention: str

    def attend(self, q_btnh, suffix_k_bksh, suffix_v_bksh, suffix_info, decode: str, suffix_lengths_b) -> jax.Array:
        """Queries [B, T, N, H] against [prefix; own suffix]. Returns [B, T, N, H]."""
        dt = q_btnh.dtype
        args = (
            q_btnh,
            self.keys.astype(dt),
            self.values.astype(dt),
            self.lengths_r,
            self.lane_b,
            self.lanes,
            suffix_k_bksh,
            suffix_v_bksh,
            suffix_info,
        )
        if self.attention == "reference":
            return shared_prefix_attention_reference(*args)
        return shared_prefix_attention(*args, decode=decode, suffix_lengths_b=suffix_lengths_b)


jax.tree_util.register_dataclass(
    PrefixLayer, data_fields=["keys", "values", "lengths_r", "lane_b"], meta_fields=["lanes", "attention"]
)


@dataclasses.dataclass
class PrefixKV:
    regions: KVCache  # keys/values per layer [R, K, P, H]; lengths [R]
    lane_b: jax.Array  # [B] int32: r·lanes + m, or R·lanes for a row without a prefix
    lanes: int  # M: rows per region
    attention: str = "two_level"

    def __post_init__(self):
        if self.attention not in PREFIX_ATTENTION:
            raise ValueError(f"unknown prefix attention '{self.attention}'; choose from {PREFIX_ATTENTION}")

    @property
    def num_regions(self) -> int:
        return self.regions.lengths.shape[0]

    def offsets_b(self) -> jax.Array:
        """[B] int32: the prefix length before each row's own tokens (0 without a prefix)."""
        return jnp.take(self.regions.lengths, region_of(self.lane_b, self.lanes), mode="fill", fill_value=0)

    def layer(self, index: int) -> PrefixLayer:
        return PrefixLayer(
            self.regions.keys[index],
            self.regions.values[index],
            self.regions.lengths,
            self.lane_b,
            self.lanes,
            self.attention,
        )


jax.tree_util.register_dataclass(PrefixKV, data_fields=["regions", "lane_b"], meta_fields=["lanes", "attention"])
