"""The Pallas GPU path of shared-prefix decode attention: both parts by JAX's split-K decode kernel.

`jax.experimental.pallas.ops.gpu.decode_attention.gqa` attends [batch, q heads, H] queries to
[batch, S, K, H] keys up to a per-row length and, with `return_residuals`, also returns each head's
softmax sum l and max m, i.e. its log-sum-exp m + log l. The prefix part runs with batch = regions:
a region's M lanes are stacked as extra query heads of each kv head (head k·M·G + m·G + g), so each
region's prompt is read once for all its slots, and only up to the region's filled length. The suffix
part runs per slot up to its own length. The two are merged by log-sum-exp (prefix_parts.py).
Off GPU the kernel runs in Pallas interpret mode (slow; for tests). One device only: on a mesh the
einsum path runs (the engine refuses decode="pallas" with shared prefixes on a multi-device mesh).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from envtune_jax.models.attention import decode_kernel_blocks
from envtune_jax.models.prefix_parts import lane_table, merge_partials


def kernel_fits(prefix_capacity: int, suffix_capacity: int, num_regions: int, batch: int, num_kv_heads: int) -> bool:
    """Whether both caches split into the kernel's whole blocks (else the einsum path runs)."""
    return (
        decode_kernel_blocks(prefix_capacity, num_regions, num_kv_heads) is not None
        and decode_kernel_blocks(suffix_capacity, batch, num_kv_heads) is not None
    )


def _gqa_with_lse(q_xnh, k_xksh, v_xksh, lengths_x):
    """(out [X, N, H] fp32, lse [X, N] fp32) of the decode kernel over the first lengths_x slots."""
    from jax.experimental.pallas.ops.gpu import decode_attention

    block_k, k_splits = decode_kernel_blocks(k_xksh.shape[2], q_xnh.shape[0], k_xksh.shape[1])
    out, (total, top) = decode_attention.gqa(
        q_xnh,
        jnp.swapaxes(k_xksh, 1, 2),
        jnp.swapaxes(v_xksh, 1, 2),
        None,
        lengths_x,
        block_k=block_k,
        k_splits=k_splits,
        interpret=jax.default_backend() != "gpu",
        return_residuals=True,
    )
    seen = total > 0
    lse = jnp.where(seen, top + jnp.log(jnp.where(seen, total, 1.0)), -jnp.inf)
    return out.astype(jnp.float32), lse


def pallas_prefix_decode(
    q_bnh,
    prefix_k_rkph,
    prefix_v_rkph,
    prefix_lengths_r,
    lane_b,
    lanes: int,
    suffix_k_bksh,
    suffix_v_bksh,
    suffix_lengths_b,
) -> jax.Array:
    """One query per slot [B, N, H] against its region's prefix and its own suffix (first suffix_lengths_b
    [B] slots, the query's own included). Returns [B, N, H] in q's dtype."""
    b, n, h = q_bnh.shape
    r, kv, _, _ = prefix_k_rkph.shape
    g = n // kv
    table_rm = lane_table(lane_b, r, lanes)
    q_lanes = jnp.take(q_bnh, table_rm.reshape(-1), axis=0, mode="fill", fill_value=0).reshape(r, lanes, kv, g, h)
    q_regions = jnp.transpose(q_lanes, (0, 2, 1, 3, 4)).reshape(r, kv * lanes * g, h)
    out_r, lse_r = _gqa_with_lse(q_regions, prefix_k_rkph, prefix_v_rkph, prefix_lengths_r)
    out_lanes = jnp.transpose(out_r.reshape(r, kv, lanes, g, h), (0, 2, 1, 3, 4)).reshape(r * lanes, n, h)
    lse_lanes = jnp.transpose(lse_r.reshape(r, kv, lanes, g), (0, 2, 1, 3)).reshape(r * lanes, n)
    out_p = jnp.take(out_lanes, lane_b, axis=0, mode="fill", fill_value=0)
    lse_p = jnp.take(lse_lanes, lane_b, axis=0, mode="fill", fill_value=-jnp.inf)
    out_s, lse_s = _gqa_with_lse(q_bnh, suffix_k_bksh, suffix_v_bksh, suffix_lengths_b)
    return merge_partials([out_p, out_s], [lse_p, lse_s]).astype(q_bnh.dtype)
