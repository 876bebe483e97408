"""Shared-prefix attention: the two-level (log-sum-exp) paths against the plain einsum over the concatenated
keys, for decode and extends against prefix regions, the Pallas kernel path (interpret mode), and packed
training rows (prompt once, continuations after) with their gradients."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from envtune_jax.models.attention import MaskInfo, attend
from envtune_jax.models.prefix_attention import (PackedRowLayout, partial_attention, shared_prefix_attention,
                                     shared_prefix_attention_reference, two_level_packed_attention)
from envtune_jax.models.prefix_parts import merge_partials

N, K, H = 4, 2, 16


def _naive_rows(q_tnh, keys_snh, values_snh, visible_ts):
    """One sequence's attention in NumPy (float64), kv heads repeated: [T, N, H]."""
    group = q_tnh.shape[1] // keys_snh.shape[1]
    k = np.repeat(keys_snh, group, axis=1)
    v = np.repeat(values_snh, group, axis=1)
    scores = np.einsum("tnh,snh->nts", q_tnh, k) / np.sqrt(q_tnh.shape[-1])
    scores = np.where(visible_ts[None], scores, -np.inf)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    return np.einsum("nts,snh->tnh", probs, v)


def _regions_case(t, seed=0):
    """3 regions x 4 lanes, 8 slots: ragged prefix lengths across regions, ragged suffix lengths, a slot
    without any prefix, a slot whose suffix is empty before this call, and a slot whose tokens are padding."""
    rng = np.random.RandomState(seed)
    r, lanes, p, b, s = 3, 4, 32, 8, 16
    prefix_lengths = np.array([32, 9, 20], np.int32)
    lane_b = np.array([0, 1, 2, 4, 5, 8, 9, r * lanes], np.int32)  # regions 0,0,0,1,1,2,2, none
    before = np.array([3, 0, 7, 5, 2, 0, 6, 4], np.int32)  # suffix tokens cached before the call
    new = np.array([t, t, t, t, t, t, 0, t], np.int32)  # slot 6 appends nothing (ended / masked)
    prefix_k = rng.randn(r, K, p, H).astype(np.float32)
    prefix_v = rng.randn(r, K, p, H).astype(np.float32)
    suffix_k = rng.randn(b, K, s, H).astype(np.float32)
    suffix_v = rng.randn(b, K, s, H).astype(np.float32)
    q = rng.randn(b, t, N, H).astype(np.float32)
    offsets = np.where(lane_b < r * lanes, prefix_lengths[np.minimum(lane_b // lanes, r - 1)], 0)
    q_pos = offsets[:, None] + before[:, None] + np.arange(t)[None]
    kv_pos = offsets[:, None] + np.arange(s)[None]
    filled = (np.arange(s)[None] < (before + t)[:, None]).astype(np.int32)
    info = MaskInfo(jnp.asarray(q_pos), jnp.ones((b, t), jnp.int32), jnp.asarray(kv_pos), jnp.asarray(filled),
                    self_attention=False)
    args = (jnp.asarray(q), jnp.asarray(prefix_k), jnp.asarray(prefix_v), jnp.asarray(prefix_lengths),
            jnp.asarray(lane_b), lanes, jnp.asarray(suffix_k), jnp.asarray(suffix_v), info)
    naive = np.zeros_like(q)
    for slot in range(b):
        region = lane_b[slot] // lanes
        pre = prefix_lengths[region] if region < r else 0
        keys = np.concatenate([prefix_k[min(region, r - 1), :, :pre], suffix_k[slot]], 1).transpose(1, 0, 2)
        values = np.concatenate([prefix_v[min(region, r - 1), :, :pre], suffix_v[slot]], 1).transpose(1, 0, 2)
        positions = np.concatenate([np.arange(pre), kv_pos[slot]])
        valid = np.concatenate([np.ones(pre, bool), filled[slot] > 0])
        visible = valid[None] & (positions[None] <= q_pos[slot][:, None])
        naive[slot] = _naive_rows(q[slot].astype(np.float64), keys, values, visible)
    live = new > 0
    return args, naive, live, before + t


@pytest.mark.parametrize("t", [1, 3])
def test_two_level_equals_concatenated_einsum(t):
    args, naive, live, _ = _regions_case(t)
    fast = np.asarray(jax.jit(shared_prefix_attention, static_argnums=(5,))(*args))
    plain = np.asarray(jax.jit(shared_prefix_attention_reference, static_argnums=(5,))(*args))
    np.testing.assert_allclose(plain[live], naive[live], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fast[live], plain[live], rtol=1e-5, atol=1e-5)


def test_two_level_reads_each_prefix_once_per_region():
    """The prefix einsum's operand is the regions' cache as it lies (no per-slot copy in the fast path)."""
    args, _, _, _ = _regions_case(1)
    text = jax.jit(shared_prefix_attention, static_argnums=(5,)).lower(*args).as_text()
    plain = jax.jit(shared_prefix_attention_reference, static_argnums=(5,)).lower(*args).as_text()
    assert "tensor<8x2x48x16xf32>" in plain  # the reference concatenates [B, K, P + S, H]
    assert "tensor<8x2x48x16xf32>" not in text and "tensor<8x2x32x16xf32>" not in text  # never [B, K, P, H]


def test_pallas_kernel_path_matches_reference():
    args, naive, live, lengths = _regions_case(1, seed=3)
    run = jax.jit(shared_prefix_attention, static_argnums=(5,), static_argnames=("decode",))
    out = run(*args, decode="pallas", suffix_lengths_b=jnp.asarray(lengths))
    np.testing.assert_allclose(np.asarray(out)[live], naive[live], rtol=1e-5, atol=1e-5)


def test_merge_of_partials_is_the_union_softmax_and_ignores_empty_parts():
    rng = np.random.RandomState(1)
    q = jnp.asarray(rng.randn(2, 3, N, H), jnp.float32)
    k = jnp.asarray(rng.randn(2, 10, K, H), jnp.float32)
    v = jnp.asarray(rng.randn(2, 10, K, H), jnp.float32)
    full = np.ones((2, 3, 10), bool)
    first, second = full.copy(), full.copy()
    first[:, :, 6:] = False
    second[:, :, :6] = False
    part = jax.jit(partial_attention)
    whole, lse_whole = part(q, k, v, jnp.asarray(full))
    a, lse_a = part(q, k, v, jnp.asarray(first))
    b, lse_b = part(q, k, v, jnp.asarray(second))
    np.testing.assert_allclose(np.asarray(merge_partials([a, b], [lse_a, lse_b])), np.asarray(whole), rtol=1e-5,
                               atol=1e-6)
    empty, lse_empty = part(q, k, v, jnp.zeros((2, 3, 10), bool))
    assert np.isneginf(np.asarray(lse_empty)).all() and not np.asarray(empty).any()
    np.testing.assert_allclose(np.asarray(merge_partials([whole, empty], [lse_whole, lse_empty])), np.asarray(whole),
                               rtol=1e-6)


# ---------------------------------------------------------------- packed training rows
LAYOUT = PackedRowLayout(groups=2, prompt_width=8, branches=3, branch_width=5)


def _packed_rows(seed=0):
    """Two rows, two groups each; ragged prompts (8, 5 / 7, 3) and continuations (some empty, some full)."""
    rng = np.random.RandomState(seed)
    rows, t = 2, LAYOUT.row_width
    positions = np.zeros((rows, t), np.int32)
    segments = np.zeros((rows, t), np.int32)
    branches = np.zeros((rows, t), np.int32)
    prompts = [[8, 5], [7, 3]]
    conts = [[[5, 2, 4], [1, 0, 5]], [[3, 3, 3], [5, 5, 1]]]
    for row in range(rows):
        for g in range(LAYOUT.groups):
            base = g * LAYOUT.group_width
            plen = prompts[row][g]
            positions[row, base:base + plen] = np.arange(plen)
            segments[row, base:base + plen] = g + 1
            for c, clen in enumerate(conts[row][g]):
                start = base + LAYOUT.prompt_width + c * LAYOUT.branch_width
                positions[row, start:start + clen] = plen + np.arange(clen)
                segments[row, start:start + clen] = g + 1
                branches[row, start:start + LAYOUT.branch_width] = c + 1
    info = MaskInfo(jnp.asarray(positions), jnp.asarray(segments), jnp.asarray(positions), jnp.asarray(segments),
                    q_branches=jnp.asarray(branches), kv_branches=jnp.asarray(branches))
    q = jnp.asarray(rng.randn(rows, t, N, H), jnp.float32)
    k = jnp.asarray(rng.randn(rows, t, K, H), jnp.float32)
    v = jnp.asarray(rng.randn(rows, t, K, H), jnp.float32)
    return q, k, v, info, segments != 0


def test_branch_mask_sees_prompt_and_own_continuation_only():
    _, _, _, info, _ = _packed_rows()
    dense = np.asarray(info.dense())[0]
    first_branch = LAYOUT.prompt_width  # row 0, group 1, continuation 1, its first token
    second_branch = LAYOUT.prompt_width + LAYOUT.branch_width
    assert dense[first_branch, :8].all()  # the whole prompt (8 tokens)
    assert not dense[first_branch, second_branch:second_branch + 5].any()  # not a sibling continuation
    assert not dense[2, first_branch:].any()  # prompt tokens never see continuations
    assert not dense[first_branch, LAYOUT.group_width:].any()  # nor another group of the row


@pytest.mark.parametrize("impl", ["chunked", "xla"])
def test_backends_run_the_branch_mask(impl):
    q, k, v, info, valid = _packed_rows(seed=1)
    want = np.asarray(attend(q, k, v, info, "reference"))
    np.testing.assert_allclose(np.asarray(attend(q, k, v, info, impl))[valid], want[valid], rtol=1e-5, atol=1e-5)


def test_splash_refuses_branch_masks():
    q, k, v, info, _ = _packed_rows()
    with pytest.raises(ValueError, match="shared-prefix"):
        attend(q, k, v, info, "splash")


@pytest.mark.parametrize("query_block", [512, 4])
def test_two_level_rows_equal_masked_attention_with_gradients(query_block, monkeypatch):
    from envtune_jax.models import prefix_attention

    monkeypatch.setattr(prefix_attention, "TWO_LEVEL_QUERY_BLOCK", query_block)  # 4: blocks, a ragged last one
    q, k, v, info, valid = _packed_rows(seed=2)
    weights = jnp.asarray(np.random.RandomState(5).randn(*q.shape), jnp.float32) * jnp.asarray(valid)[..., None, None]

    def loss(fn, q, k, v):
        return jnp.sum(fn(q, k, v) * weights)

    reference = lambda q, k, v: attend(q, k, v, info, "reference")  # noqa: E731
    two_level = lambda q, k, v: two_level_packed_attention(q, k, v, info, LAYOUT)  # noqa: E731
    np.testing.assert_allclose(np.asarray(jax.jit(two_level)(q, k, v))[valid],
                               np.asarray(jax.jit(reference)(q, k, v))[valid], rtol=1e-5, atol=1e-5)
    grads_ref = jax.jit(jax.grad(lambda *a: loss(reference, *a), argnums=(0, 1, 2)))(q, k, v)
    grads_two = jax.jit(jax.grad(lambda *a: loss(two_level, *a), argnums=(0, 1, 2)))(q, k, v)
    for got, want in zip(grads_two, grads_ref):
        assert np.isfinite(np.asarray(got)).all()
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
