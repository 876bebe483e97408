"""The pieces both shared-prefix attention paths stand on: a partial softmax that also returns its
log-sum-exp, the exact merge of partial attentions by their log-sum-exps, and the lane table that maps a
prefix region's lanes to slots.

The einsum path (prefix_attention.py) and the Pallas decode path (prefix_kernels.py) both compute
attention over a prompt and over a sample's own tokens separately and merge the two here, so this file
imports neither of them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

NEG_INF = -jnp.inf


def masked_softmax_lse(scores: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(probabilities, log-sum-exp) of fp32 `scores` [..., S] over the keys where `mask` (broadcastable) is
    True. A row without any visible key gets probabilities 0 and lse -inf (gradients stay finite)."""
    scores = jnp.where(mask, scores, NEG_INF)
    row_max = jax.lax.stop_gradient(jnp.max(scores, axis=-1, keepdims=True))
    row_max = jnp.where(jnp.isfinite(row_max), row_max, 0.0)
    exp = jnp.exp(scores - row_max)
    total = jnp.sum(exp, axis=-1, keepdims=True)
    seen = total > 0
    safe_total = jnp.where(seen, total, 1.0)
    lse = jnp.where(seen, row_max + jnp.log(safe_total), NEG_INF)
    return exp / safe_total, lse[..., 0]


def merge_partials(outs: list[jax.Array], lses: list[jax.Array]) -> jax.Array:
    """Σ_i e^(lse_i − lse) · out_i with lse = log Σ_i e^lse_i: the attention over the union of the parts'
    keys. outs: [..., H] each (normalised within its part); lses: [...] each. Returns fp32 [..., H]."""
    top = jax.lax.stop_gradient(jnp.maximum(*lses) if len(lses) == 2 else jnp.max(jnp.stack(lses), axis=0))
    top = jnp.where(jnp.isfinite(top), top, 0.0)
    weights = [jnp.exp(lse - top) for lse in lses]
    total = sum(weights)
    total = jnp.where(total > 0, total, 1.0)
    return sum(w[..., None] * o.astype(jnp.float32) for w, o in zip(weights, outs)) / total[..., None]


def lane_table(lane_b: jax.Array, num_regions: int, lanes: int) -> jax.Array:
    """[R, M] int32: the slot in each lane (B where the lane is empty), from lane_b [B] (R·M = no lane)."""
    batch = lane_b.shape[0]
    table = jnp.full((num_regions * lanes,), batch, jnp.int32)
    table = table.at[lane_b].set(jnp.arange(batch, dtype=jnp.int32), mode="drop")
    return table.reshape(num_regions, lanes)


def region_of(lane_b: jax.Array, lanes: int) -> jax.Array:
    """[B] the region each slot reads (R for a slot without a prefix)."""
    return lane_b // lanes
