"""Attention for sequences that share a prompt: read the shared prefix once, merge by log-sum-exp.

A GRPO group's G samples continue one prompt. Attention over [prompt; own tokens] splits exactly into
two partial softmaxes, one over the prompt's keys and one over the sample's own keys, recombined by
their log-sum-exps (out = Σ_i e^(lse_i − lse) · out_i, lse = log Σ_i e^lse_i). Splitting lets the prompt
part run once for all samples of the group:

- Decode and extend (`shared_prefix_attention`): a group's prompt keys/values live once in a prefix
  region [R, K, P, H]; each slot b has its own suffix cache [B, K, S, H] and a lane `lane_b[b]` =
  r·M + m (region r, lane m < M; R·M = no prefix). The queries of a region's lanes are stacked
  [R, M, T, N, H] and attend the region's P keys in one einsum, so a decode step reads each prompt
  once for its M slots; each slot attends its own suffix; the two parts are merged per query.
  `shared_prefix_attention_reference` is the plain path: each slot's prefix gathered, concatenated
  before its suffix, one einsum with the dense mask. With decode="pallas", one-token steps run JAX's
  Pallas GPU decode kernel for both parts (the region's lanes stacked as extra query heads), with
  its log-sum-exp residuals (Pallas interpret mode off GPU, for tests).
- Training rows (`two_level_packed_attention`): a packed row holds n groups, each as its prompt
  block (P tokens) followed by G continuation blocks (C tokens each). Prompt queries attend their
  prompt causally; a continuation's queries attend its group's prompt (one [G·C, P] block per
  group instead of G copies of the prompt) and its own block causally, merged by log-sum-exp.
  Query blocks of TWO_LEVEL_QUERY_BLOCK are rematerialised (memory bounded like "chunked").
  The same rows also run as one masked attention (MaskInfo with branch ids: any back-end that takes
  a dense mask, and splash with the static mask of the rows' layout, models/row_layout.py), which
  is the reference the two-level path is tested against.
Softmaxes are fp32; a query with no visible key in a part gets lse = -inf there (weight 0).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from envtune_jax.models import prefix_kernels
from envtune_jax.models.attention import MaskInfo, reference_attention
from envtune_jax.models.prefix_parts import NEG_INF, lane_table, masked_softmax_lse, merge_partials, region_of
from envtune_jax.models.row_layout import PackedRowLayout


def _grouped(q_btnh: jax.Array, num_kv_heads: int) -> jax.Array:
    b, t, n, h = q_btnh.shape
    return q_btnh.reshape(b, t, num_kv_heads, n // num_kv_heads, h)


def partial_attention(q_btnh: jax.Array, k, v, mask_bts: jax.Array, kv_layout: str = "BSKH"):
    """GQA attention of q [B, T, N, H] over keys/values ([B, S, K, H] or [B, K, S, H] per kv_layout) where
    mask_bts [B, T, S]. Returns (out [B, T, N, H] fp32, lse [B, T, N] fp32)."""
    b, t, n, h = q_btnh.shape
    kv = k.shape[kv_layout.index("K")]
    scores = jnp.einsum(f"BTKGH,{kv_layout}->BKGTS", _grouped(q_btnh, kv), k, preferred_element_type=jnp.float32)
    probs, lse_bkgt = masked_softmax_lse(scores * (h**-0.5), mask_bts[:, None, None, :, :])
    out = jnp.einsum(f"BKGTS,{kv_layout}->BTKGH", probs.astype(v.dtype), v)
    return out.reshape(b, t, n, h).astype(jnp.float32), jnp.transpose(lse_bkgt, (0, 3, 1, 2)).reshape(b, t, n)


# Query blocks of the two-level training path: each block's scores are rematerialised in the backward pass,
# so memory stays O(block · keys) per head however long a row's prompt or continuations are.
TWO_LEVEL_QUERY_BLOCK = 512


def blocked_partial_attention(q_btnh, k_bskh, v_bskh, mask_bts, block: int | None = None):
    """partial_attention over query blocks of `block` (default TWO_LEVEL_QUERY_BLOCK; each in jax.checkpoint):
    the same result, with the scores of one block at a time. (out [B, T, N, H] fp32, lse [B, T, N])."""
    block = block or TWO_LEVEL_QUERY_BLOCK
    b, t, n, h = q_btnh.shape
    if t <= block:
        return partial_attention(q_btnh, k_bskh, v_bskh, mask_bts)
    pad = (-t) % block
    num = (t + pad) // block

    def blocks(x):
        x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
        return jnp.swapaxes(x.reshape(b, num, block, *x.shape[2:]), 0, 1)

    one = jax.checkpoint(lambda args: partial_attention(args[0], k_bskh, v_bskh, args[1]))
    out, lse = jax.lax.map(one, (blocks(q_btnh), blocks(mask_bts)))
    return (
        jnp.swapaxes(out, 0, 1).reshape(b, num * block, n, h)[:, :t],
        jnp.swapaxes(lse, 0, 1).reshape(b, num * block, n)[:, :t],
    )


# ---------------------------------------------------------------- decode / extend against prefix regions
def _prefix_part_einsum(q_btnh, prefix_k_rkph, prefix_v_rkph, prefix_lengths_r, lane_b, lanes):
    """The prefix part: each region's lanes' queries stacked against its keys. (out [B, T, N, H], lse [B, T, N])."""
    b, t, n, h = q_btnh.shape
    r, kv, p, _ = prefix_k_rkph.shape
    table_rm = lane_table(lane_b, r, lanes)
    q_rmtkgh = jnp.take(q_btnh, table_rm.reshape(-1), axis=0, mode="fill", fill_value=0)
    q_rmtkgh = q_rmtkgh.reshape(r, lanes, t, kv, n // kv, h)
    scores = jnp.einsum("RMTKGH,RKPH->RKGMTP", q_rmtkgh, prefix_k_rkph, preferred_element_type=jnp.float32)
    visible_rp = jnp.arange(p, dtype=jnp.int32)[None, :] < prefix_lengths_r[:, None]
    probs, lse_rkgmt = masked_softmax_lse(scores * (h**-0.5), visible_rp[:, None, None, None, None, :])
    out = jnp.einsum("RKGMTP,RKPH->RMTKGH", probs.astype(prefix_v_rkph.dtype), prefix_v_rkph)
    out_lanes = out.reshape(r * lanes, t, n, h).astype(jnp.float32)
    lse_lanes = jnp.transpose(lse_rkgmt, (0, 3, 4, 1, 2)).reshape(r * lanes, t, n)
    out_b = jnp.take(out_lanes, lane_b, axis=0, mode="fill", fill_value=0)
    lse_b = jnp.take(lse_lanes, lane_b, axis=0, mode="fill", fill_value=NEG_INF)
    return out_b, lse_b


def shared_prefix_attention(
    q_btnh,
    prefix_k_rkph,
    prefix_v_rkph,
    prefix_lengths_r,
    lane_b,
    lanes: int,
    suffix_k_bksh,
    suffix_v_bksh,
    suffix_info: MaskInfo,
    decode: str = "reference",
    suffix_lengths_b=None,
) -> jax.Array:
    """Queries [B, T, N, H] of slots whose sequence is [prefix of region lane_b // lanes; own suffix].

    prefix_k/v [R, K, P, H] with prefix_lengths_r [R] filled slots; lane_b [B] (R·lanes: no prefix);
    suffix_k/v [B, K, S, H] (the queries' own keys already written) with suffix_info the mask over them
    (positions absolute). Every query sees its whole prefix: prefix positions precede the suffix's.
    decode="pallas" with T = 1 and suffix_lengths_b [B]: both parts by the Pallas decode kernel (one device,
    capacities in whole kernel blocks; otherwise the einsums).
    Returns [B, T, N, H] in q's dtype.
    """
    if decode == "pallas" and q_btnh.shape[1] == 1 and suffix_lengths_b is not None:
        fits = prefix_kernels.kernel_fits(
            prefix_k_rkph.shape[2],
            suffix_k_bksh.shape[2],
            prefix_k_rkph.shape[0],
            q_btnh.shape[0],
            prefix_k_rkph.shape[1],
        )
        mesh = jax.sharding.get_abstract_mesh()
        if fits and (mesh is None or mesh.empty or mesh.size == 1):
            out = prefix_kernels.pallas_prefix_decode(
                q_btnh[:, 0],
                prefix_k_rkph,
                prefix_v_rkph,
                prefix_lengths_r,
                lane_b,
                lanes,
                suffix_k_bksh,
                suffix_v_bksh,
                suffix_lengths_b,
            )
            return out[:, None]
    out_p, lse_p = _prefix_part_einsum(q_btnh, prefix_k_rkph, prefix_v_rkph, prefix_lengths_r, lane_b, lanes)
    out_s, lse_s = partial_attention(q_btnh, suffix_k_bksh, suffix_v_bksh, suffix_info.dense(), "BKSH")
    return merge_partials([out_p, out_s], [lse_p, lse_s]).astype(q_btnh.dtype)


def shared_prefix_attention_reference(
    q_btnh,
    prefix_k_rkph,
    prefix_v_rkph,
    prefix_lengths_r,
    lane_b,
    lanes: int,
    suffix_k_bksh,
    suffix_v_bksh,
    suffix_info: MaskInfo,
) -> jax.Array:
    """The plain path: each slot's prefix gathered [B, K, P, H], concatenated before its suffix, one
    einsum over [B, K, P + S, H] with the dense mask. Same arguments and result as shared_prefix_attention."""
    b = q_btnh.shape[0]
    p = prefix_k_rkph.shape[2]
    region_b = region_of(lane_b, lanes)
    keys = jnp.concatenate([jnp.take(prefix_k_rkph, region_b, axis=0, mode="fill", fill_value=0), suffix_k_bksh], 2)
    values = jnp.concatenate([jnp.take(prefix_v_rkph, region_b, axis=0, mode="fill", fill_value=0), suffix_v_bksh], 2)
    prefix_lengths_b = jnp.take(prefix_lengths_r, region_b, mode="fill", fill_value=0)
    slots_bp = jnp.broadcast_to(jnp.arange(p, dtype=jnp.int32)[None, :], (b, p))
    prefix_segments_bp = (slots_bp < prefix_lengths_b[:, None]).astype(jnp.int32)
    info = MaskInfo(
        suffix_info.q_positions,
        jnp.ones_like(suffix_info.q_segments),
        jnp.concatenate([slots_bp, suffix_info.kv_positions], axis=1),
        jnp.concatenate([prefix_segments_bp, (suffix_info.kv_segments != 0).astype(jnp.int32)], axis=1),
        self_attention=False,
    )
    return reference_attention(q_btnh, keys, values, info, kv_layout="BKSH")


# ---------------------------------------------------------------- training rows: prompt once, continuations after
def _blocks(x_bt, layout: PackedRowLayout):
    """Splits [B, T, ...] rows into prompt blocks [B·n, P, ...] and continuation blocks [B·n, G, C, ...]."""
    b = x_bt.shape[0]
    rest = x_bt.shape[2:]
    groups = x_bt.reshape(b * layout.groups, layout.group_width, *rest)
    prompt = groups[:, : layout.prompt_width]
    branches = groups[:, layout.prompt_width :].reshape(b * layout.groups, layout.branches, layout.branch_width, *rest)
    return prompt, branches


def two_level_packed_attention(q_btnh, k_btkh, v_btkh, info: MaskInfo, layout: PackedRowLayout) -> jax.Array:
    """Self-attention over shared-prefix rows laid out as `layout`, mask `info` (segments, positions, branch
    ids), computed per block: prompt vs its prompt (causal); continuation vs its group's prompt and vs its
    own block (causal), merged by log-sum-exp. Equals attend(q, k, v, info, "reference") wherever the
    branch ids follow the layout (rl/prefix_packing.py builds such rows). Returns [B, T, N, H] in q's dtype."""
    b, t, n, h = q_btnh.shape
    if t != layout.row_width:
        raise ValueError(f"rows of {t} tokens do not match the layout's {layout.row_width}")
    u, g, c = b * layout.groups, layout.branches, layout.branch_width
    q_p, q_c = _blocks(q_btnh, layout)
    k_p, k_c = _blocks(k_btkh, layout)
    v_p, v_c = _blocks(v_btkh, layout)
    pos_p, pos_c = _blocks(info.q_positions, layout)
    seg_p, seg_c = _blocks(info.q_segments, layout)

    def mask(q_pos, q_seg, kv_pos, kv_seg):
        return MaskInfo(q_pos, q_seg, kv_pos, kv_seg).dense()

    out_prompt, _ = blocked_partial_attention(q_p, k_p, v_p, mask(pos_p, seg_p, pos_p, seg_p))  # [U, P, N, H]
    q_c_flat = q_c.reshape(u, g * c, n, h)
    pos_c_flat, seg_c_flat = pos_c.reshape(u, g * c), seg_c.reshape(u, g * c)
    out_a, lse_a = blocked_partial_attention(q_c_flat, k_p, v_p, mask(pos_c_flat, seg_c_flat, pos_p, seg_p))
    pos_own, seg_own = pos_c.reshape(u * g, c), seg_c.reshape(u * g, c)
    out_b, lse_b = blocked_partial_attention(
        q_c.reshape(u * g, c, n, h),
        k_c.reshape(u * g, c, *k_c.shape[3:]),
        v_c.reshape(u * g, c, *v_c.shape[3:]),
        mask(pos_own, seg_own, pos_own, seg_own),
    )
    out_cont = merge_partials([out_a, out_b.reshape(u, g * c, n, h)], [lse_a, lse_b.reshape(u, g * c, n)])
    out = jnp.concatenate([out_prompt, out_cont], axis=1)  # [U, P + G·C, N, H]
    return out.reshape(b, t, n, h).astype(q_btnh.dtype)


@dataclasses.dataclass
class RowBranches:
    """What `Qwen3.hidden_states(..., branches=...)` takes for shared-prefix rows: each token's branch id
    [B, T] (0 = its group's prompt, c ≥ 1 = continuation c), the rows' static layout (every back-end but
    splash can do without it: None), and whether attention runs two-level (needs the layout) or as one
    masked attention on the model's attention back-end (splash runs the layout's static mask)."""

    branches_bt: jax.Array
    layout: PackedRowLayout | None = None
    two_level: bool = False

    def __post_init__(self):
        if self.two_level and self.layout is None:
            raise ValueError("two-level attention over shared-prefix rows needs the rows' layout")


jax.tree_util.register_dataclass(RowBranches, data_fields=["branches_bt"], meta_fields=["layout", "two_level"])
