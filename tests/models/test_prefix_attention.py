"""Shared-prefix attention: the two-level (log-sum-exp) paths against the plain einsum over the concatenated
keys, for decode and extends against prefix regions, the Pallas kernel path (interpret mode), and packed
training rows (prompt once, continuations after) with their gradients."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from envtune_jax.models.attention import MaskInfo, attend
from envtune_jax.models.prefix_attention import (
    partial_attention,
    shared_prefix_attention,
    shared_prefix_attention_reference,
    two_level_packed_attention,
)
from envtune_jax.models.prefix_parts import merge_partials
from envtune_jax.models.row_layout import PackedRowLayout

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
    info = MaskInfo(
        jnp.asarray(q_pos), jnp.ones((b, t), jnp.int32), jnp.asarray(kv_pos), jnp.asarray(filled), self_attention=False
    )
    args = (
        jnp.asarray(q),
        jnp.asarray(prefix_k),
        jnp.asarray(prefix_v),
        jnp.asarray(prefix_lengths),
        jnp.asarray(lane_b),
        lanes,
        jnp.asarray(suffix_k),
        jnp.asarray(suffix_v),
        info,
    )
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
    np.testing.assert_allclose(
        np.asarray(merge_partials([a, b], [lse_a, lse_b])), np.asarray(whole), rtol=1e-5, atol=1e-6
    )
    empty, lse_empty = part(q, k, v, jnp.zeros((2, 3, 10), bool))
    assert np.isneginf(np.asarray(lse_empty)).all() and not np.asarray(empty).any()
    np.testing.assert_allclose(
        np.asarray(merge_partials([whole, empty], [lse_whole, lse_empty])), np.asarray(whole), rtol=1e-6
    )


# ---------------------------------------------------------------- packed training rows
LAYOUT = PackedRowLayout(groups=2, prompt_width=8, branches=3, branch_width=5)


# (layout, prompt lengths [row][group], continuation lengths [row][group][branch]) of two rows
NARROW = (LAYOUT, ((8, 5), (7, 3)), (((5, 2, 4), (1, 0, 5)), ((3, 3, 3), (5, 5, 1))))
# rows of 256 tokens (two splash blocks): a full prompt, a full continuation, and a group place left empty
WIDE = (
    PackedRowLayout(groups=2, prompt_width=32, branches=3, branch_width=32),
    [[32, 19], [26, 0]],
    [[[32, 2, 17], [1, 0, 30]], [[9, 32, 3], [0, 0, 0]]],
)


def _packed_rows(seed=0, layout=NARROW[0], prompts=NARROW[1], conts=NARROW[2], with_layout=False):
    """Two rows, two groups each; ragged prompts (8, 5 / 7, 3) and continuations (some empty, some full).
    with_layout: the MaskInfo also carries the rows' static layout (what splash needs)."""
    rng = np.random.RandomState(seed)
    rows, t = 2, layout.row_width
    positions = np.zeros((rows, t), np.int32)
    segments = np.zeros((rows, t), np.int32)
    branches = np.zeros((rows, t), np.int32)
    for row in range(rows):
        for g in range(layout.groups):
            base = g * layout.group_width
            plen = prompts[row][g]
            positions[row, base : base + plen] = np.arange(plen)
            segments[row, base : base + plen] = g + 1
            for c, clen in enumerate(conts[row][g]):
                start = base + layout.prompt_width + c * layout.branch_width
                positions[row, start : start + clen] = plen + np.arange(clen)
                segments[row, start : start + clen] = g + 1
                branches[row, start : start + layout.branch_width] = c + 1
    info = MaskInfo(
        jnp.asarray(positions),
        jnp.asarray(segments),
        jnp.asarray(positions),
        jnp.asarray(segments),
        q_branches=jnp.asarray(branches),
        kv_branches=jnp.asarray(branches),
        row_layout=layout if with_layout else None,
    )
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
    assert not dense[first_branch, second_branch : second_branch + 5].any()  # not a sibling continuation
    assert not dense[2, first_branch:].any()  # prompt tokens never see continuations
    assert not dense[first_branch, LAYOUT.group_width :].any()  # nor another group of the row


@pytest.mark.parametrize("impl", ["chunked", "xla"])
def test_backends_run_the_branch_mask(impl):
    q, k, v, info, valid = _packed_rows(seed=1)
    want = np.asarray(attend(q, k, v, info, "reference"))
    np.testing.assert_allclose(np.asarray(attend(q, k, v, info, impl))[valid], want[valid], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layout, prompts, conts", [NARROW, WIDE], ids=["narrow", "wide"])
def test_row_layout_pattern_is_the_branch_mask_on_real_tokens(layout, prompts, conts):
    """The layout's index pattern, with segment ids, is the (positions, segments, branches) mask for every real
    query; the pattern continues past the row (padding to a kernel block) without reaching into it."""
    _, _, _, info, valid = _packed_rows(0, layout, prompts, conts)
    index = np.arange(layout.row_width)
    segments = np.asarray(info.q_segments)
    pattern = layout.visible(index[:, None], index[None, :])[None] & (segments[:, :, None] == segments[:, None, :])
    dense = np.asarray(info.dense())
    np.testing.assert_array_equal(pattern[valid], dense[valid])
    assert pattern[~valid].any(axis=-1).all()  # a padding query sees at least itself (no empty softmax row)
    wide = np.arange(layout.row_width + 128)
    beyond = layout.visible(wide[:, None], wide[None, :])
    assert not beyond[layout.row_width :, : layout.row_width].any()
    np.testing.assert_array_equal(
        np.asarray(layout.visible(jnp.asarray(index[:, None]), jnp.asarray(index[None, :]))),
        beyond[: layout.row_width, : layout.row_width],
    )  # JAX arrays give the same


def test_splash_refuses_branch_ids_without_the_row_layout():
    q, k, v, info, _ = _packed_rows()
    with pytest.raises(ValueError, match="static layout"):
        attend(q, k, v, info, "splash")
    other = PackedRowLayout(groups=1, prompt_width=8, branches=3, branch_width=5)
    with pytest.raises(ValueError, match="width 23"):
        attend(q, k, v, dataclasses.replace(info, row_layout=other), "splash")


@pytest.mark.parametrize("layout, prompts, conts", [NARROW, WIDE], ids=["padded-to-a-block", "two-blocks"])
def test_splash_runs_the_row_layout_mask_with_gradients(layout, prompts, conts):
    """Splash (Pallas interpret mode) with the static mask of the rows' layout equals the reference masked
    attention, outputs and gradients of q, k and v (fp32): rows of 46 tokens padded up to one 128-token
    block, and rows of 256 tokens (two blocks per side, so whole tiles are skipped)."""
    q, k, v, info, valid = _packed_rows(3, layout, prompts, conts, with_layout=True)
    weights = jnp.asarray(np.random.RandomState(4).randn(*q.shape), jnp.float32) * jnp.asarray(valid)[..., None, None]

    def loss(impl, q, k, v):
        out = attend(q, k, v, info, impl)
        return jnp.sum(out * weights), out

    def grad(impl):
        return jax.jit(jax.value_and_grad(lambda *a: loss(impl, *a), argnums=(0, 1, 2), has_aux=True))

    try:
        (_, got), got_grads = grad("splash")(q, k, v)
    except NotImplementedError as exc:  # pragma: no cover - depends on the installed JAX
        pytest.skip(f"Pallas TPU interpret mode unavailable in this JAX: {exc}")
    (_, want), want_grads = grad("reference")(q, k, v)
    np.testing.assert_allclose(np.asarray(got)[valid], np.asarray(want)[valid], rtol=1e-4, atol=1e-4)
    for got_grad, want_grad in zip(got_grads, want_grads):
        np.testing.assert_allclose(np.asarray(got_grad), np.asarray(want_grad), rtol=1e-4, atol=1e-4)


def test_splash_kernel_computes_only_the_tiles_the_row_layout_keeps():
    """One group per row, a prompt of two 128-token blocks and four continuations of one block: of the 6 x 6
    tiles, the prompt keeps 1 + 2 and each continuation 3 (the prompt's two, its own), 15 in all (a causal
    mask would keep 21); the kernel's forward grid holds at most 3 key tiles per query tile."""
    from envtune_jax.models.attention import _splash_kernel

    layout = PackedRowLayout(groups=1, prompt_width=256, branches=4, branch_width=128)
    block_mask = np.asarray(_splash_kernel(N, layout.row_width, True, layout).fwd_mask_info.block_mask)
    assert block_mask.shape[-2:] == (6, 3)
    assert np.count_nonzero(block_mask) == 15


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
    np.testing.assert_allclose(
        np.asarray(jax.jit(two_level)(q, k, v))[valid],
        np.asarray(jax.jit(reference)(q, k, v))[valid],
        rtol=1e-5,
        atol=1e-5,
    )
    grads_ref = jax.jit(jax.grad(lambda *a: loss(reference, *a), argnums=(0, 1, 2)))(q, k, v)
    grads_two = jax.jit(jax.grad(lambda *a: loss(two_level, *a), argnums=(0, 1, 2)))(q, k, v)
    for got, want in zip(grads_two, grads_ref):
        assert np.isfinite(np.asarray(got)).all()
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
