"""Every attention back-end against the plain einsum reference, on padded and packed masks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from envtune_jax.models.attention import CACHE_KERNEL_MIN_QUERIES, MaskInfo, attend, attend_cache, decode_kernel_blocks


def _inputs(b=2, t=128, n=4, k=2, h=16, seed=0):
    rng = np.random.RandomState(seed)
    q = jnp.asarray(rng.randn(b, t, n, h), jnp.float32)
    kk = jnp.asarray(rng.randn(b, t, k, h), jnp.float32)
    v = jnp.asarray(rng.randn(b, t, k, h), jnp.float32)
    segments = np.ones((b, t), np.int32)
    segments[0, 100:] = 0  # padding
    segments[1, 60:] = 2  # packed second sequence
    positions = np.tile(np.arange(t), (b, 1))
    positions[1, 60:] = np.arange(t - 60)
    info = MaskInfo(jnp.asarray(positions), jnp.asarray(segments), jnp.asarray(positions), jnp.asarray(segments))
    return q, kk, v, info, segments


def _naive(q, k, v, info):
    """Loop-free NumPy attention with explicit head repetition (an independent formulation)."""
    q, k, v = map(np.asarray, (q, k, v))
    group = q.shape[2] // k.shape[2]
    k, v = np.repeat(k, group, axis=2), np.repeat(v, group, axis=2)
    scores = np.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(q.shape[-1])
    mask = np.asarray(info.dense())[:, None]
    scores = np.where(mask, scores, -1e30)  # fully masked (padding) rows become uniform, never NaN
    scores = scores - scores.max(-1, keepdims=True)
    probs = np.where(mask, np.exp(scores), 0.0)
    probs /= np.maximum(probs.sum(-1, keepdims=True), 1e-30)
    return np.einsum("bnts,bsnh->btnh", probs, v)


def test_reference_matches_numpy():
    q, k, v, info, segments = _inputs()
    out = np.asarray(attend(q, k, v, info, "reference"))
    valid = segments != 0
    np.testing.assert_allclose(out[valid], _naive(q, k, v, info)[valid], rtol=1e-5, atol=1e-5)


def test_xla_backend_matches_reference():
    q, k, v, info, segments = _inputs(seed=1)
    valid = segments != 0
    ref = np.asarray(attend(q, k, v, info, "reference"))
    np.testing.assert_allclose(np.asarray(attend(q, k, v, info, "xla"))[valid], ref[valid], rtol=1e-5, atol=1e-5)


def test_plain_causal_flag_gives_the_dense_causal_result():
    import dataclasses

    q, k, v, _, _ = _inputs(seed=2)
    b, t = q.shape[:2]
    positions = jnp.tile(jnp.arange(t, dtype=jnp.int32), (b, 1))
    ones = jnp.ones((b, t), jnp.int32)
    dense = MaskInfo(positions, ones, positions, ones)
    plain = dataclasses.replace(dense, plain_causal=True)
    want = np.asarray(attend(q, k, v, dense, "reference"))
    np.testing.assert_allclose(want, _naive(q, k, v, dense), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(attend(q, k, v, plain, "xla")), want, rtol=1e-5, atol=1e-5)


def test_model_without_positions_or_segments_uses_the_plain_causal_path():
    from flax import nnx

    from envtune_jax.models.config import Qwen3Config
    from envtune_jax.models.qwen3 import Qwen3, init_model

    cfg = Qwen3Config(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=8,
        param_dtype="float32",
        dtype="float32",
        attention_impl="xla",
    )
    model = init_model(cfg, seed=0)
    tokens = jnp.asarray(np.random.RandomState(0).randint(0, 64, (2, 12)), jnp.int32)
    seen = []
    real = jax.nn.dot_product_attention
    try:
        jax.nn.dot_product_attention = lambda *a, **kw: seen.append(kw.get("is_causal")) or real(*a, **kw)
        plain = np.asarray(model(tokens))
        explicit = np.asarray(model(tokens, jnp.tile(jnp.arange(12), (2, 1)), jnp.ones((2, 12), jnp.int32)))
    finally:
        jax.nn.dot_product_attention = real
    assert seen == [True, True, None, None]  # two layers each: is_causal (no mask), then the dense-mask path
    np.testing.assert_allclose(plain, explicit, rtol=1e-5, atol=1e-5)
    reference = nnx.merge(*nnx.split(Qwen3(cfg.replace(attention_impl="reference"), rngs=nnx.Rngs(0))))
    nnx.update(reference, nnx.state(model))
    np.testing.assert_allclose(np.asarray(reference(tokens)), plain, rtol=1e-5, atol=1e-5)


def test_chunked_backend_matches_reference_values_and_gradients():
    q, k, v, info, segments = _inputs(t=200, seed=3)
    valid = jnp.asarray(segments != 0)[:, :, None, None]

    def loss(impl, q, k, v):
        from envtune_jax.models.attention import chunked_attention

        out = chunked_attention(q, k, v, info, chunk=64) if impl == "chunked" else attend(q, k, v, info, impl)
        return jnp.sum(jnp.where(valid, out, 0.0) ** 2), out

    (ref_loss, ref_out), ref_grads = jax.value_and_grad(loss, argnums=(1, 2, 3), has_aux=True)("reference", q, k, v)
    (ch_loss, ch_out), ch_grads = jax.value_and_grad(loss, argnums=(1, 2, 3), has_aux=True)("chunked", q, k, v)
    mask = np.asarray(segments != 0)
    np.testing.assert_allclose(np.asarray(ch_out)[mask], np.asarray(ref_out)[mask], rtol=1e-5, atol=1e-5)
    for a, b in zip(ch_grads, ref_grads):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


# 80: padded up to one 128-token block, so it reuses the kernel the first case built in another program
@pytest.mark.parametrize("t", [128, 80])
def test_splash_backend_in_interpret_mode_matches_reference(t):
    q, k, v, info, segments = _inputs(t=t, seed=2)
    try:
        out = np.asarray(jax.jit(lambda *a: attend(*a, "splash"))(q, k, v, info))
    except NotImplementedError as exc:  # pragma: no cover - depends on the installed JAX
        pytest.skip(f"Pallas TPU interpret mode unavailable in this JAX: {exc}")
    valid = segments != 0
    ref = np.asarray(attend(q, k, v, info, "reference"))
    np.testing.assert_allclose(out[valid], ref[valid], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("queries", [1, 3, CACHE_KERNEL_MIN_QUERIES])
@pytest.mark.parametrize("impl", ["reference", "xla", "splash"])
def test_attention_against_a_cache_layout_matches_numpy(queries, impl):
    """attend_cache reads keys/values laid out [B, K, S, H]: decode-sized query blocks take the einsum on
    that layout, blocks of CACHE_KERNEL_MIN_QUERIES+ the back-end on the [B, S, K, H] view; both equal the
    NumPy attention of the same cache. Sequences hold 70 and 90 cached tokens of 96 slots; the queries
    are the last `queries` of them."""
    b, s, n, k, h = 2, 96, 4, 2, 16
    rng = np.random.RandomState(queries)
    keys_bksh = jnp.asarray(rng.randn(b, k, s, h), jnp.float32)
    values_bksh = jnp.asarray(rng.randn(b, k, s, h), jnp.float32)
    q = jnp.asarray(rng.randn(b, queries, n, h), jnp.float32)
    lengths = np.array([70, 90])
    q_positions = lengths[:, None] - queries + np.arange(queries)[None, :]
    slots = np.tile(np.arange(s), (b, 1))
    filled = (slots < lengths[:, None]).astype(np.int32)
    info = MaskInfo(
        jnp.asarray(q_positions),
        jnp.ones((b, queries), jnp.int32),
        jnp.asarray(slots),
        jnp.asarray(filled),
        self_attention=False,
    )
    got = np.asarray(attend_cache(q, keys_bksh, values_bksh, info, impl))
    want = _naive(q, np.swapaxes(keys_bksh, 1, 2), np.swapaxes(values_bksh, 1, 2), info)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("capacity", [96, 256])
def test_pallas_decode_kernel_matches_the_einsum_on_ragged_lengths(capacity):
    """One query per sequence against a cache whose rows hold 1, 37, capacity / 2 and capacity tokens: the
    Pallas decode kernel (interpret mode here) equals the reference einsum and the NumPy attention,
    whatever lies in the slots past each length (filled with large garbage here)."""
    b, n, k, h = 4, 8, 2, 32
    rng = np.random.RandomState(capacity)
    lengths = np.array([1, 37, capacity // 2, capacity])
    slots = np.tile(np.arange(capacity), (b, 1))
    filled = slots < lengths[:, None]
    keys = np.where(filled[:, None, :, None], rng.randn(b, k, capacity, h), 1e3).astype(np.float32)
    values = np.where(filled[:, None, :, None], rng.randn(b, k, capacity, h), 1e3).astype(np.float32)
    q = jnp.asarray(rng.randn(b, 1, n, h), jnp.float32)
    info = MaskInfo(
        jnp.asarray(lengths[:, None] - 1),
        jnp.ones((b, 1), jnp.int32),
        jnp.asarray(slots),
        jnp.asarray(filled.astype(np.int32)),
        self_attention=False,
    )
    keys, values = jnp.asarray(keys), jnp.asarray(values)
    einsum = np.asarray(attend_cache(q, keys, values, info, "reference"))
    kernel = np.asarray(
        attend_cache(q, keys, values, info, "reference", decode="pallas", kv_lengths_b=jnp.asarray(lengths, jnp.int32))
    )
    np.testing.assert_allclose(kernel, einsum, rtol=1e-5, atol=1e-5)
    want = _naive(q, np.swapaxes(keys, 1, 2), np.swapaxes(values, 1, 2), info)
    np.testing.assert_allclose(kernel, want, rtol=1e-5, atol=1e-5)

    # bf16 in, bf16 out (the decode loop's carry keeps its dtype), within bf16 rounding of the einsum
    q16, keys16, values16 = (x.astype(jnp.bfloat16) for x in (q, keys, values))
    kernel16 = attend_cache(
        q16, keys16, values16, info, "reference", decode="pallas", kv_lengths_b=jnp.asarray(lengths, jnp.int32)
    )
    assert kernel16.dtype == jnp.bfloat16
    einsum16 = attend_cache(q16, keys16, values16, info, "reference")
    np.testing.assert_allclose(np.asarray(kernel16, np.float32), np.asarray(einsum16, np.float32), atol=3e-2)


def test_decode_kernel_blocks_split_slots_to_fill_the_gpu():
    assert decode_kernel_blocks(640, 256, 8) == (128, 5)  # 5 blocks: only single-block splits are powers of two
    assert decode_kernel_blocks(768, 256, 8) == (128, 3)  # 6 blocks: 3 splits of 2 (2,048 programs x 3)
    assert decode_kernel_blocks(4096, 256, 8) == (128, 1)  # one split of 32 blocks: enough programs already
    assert decode_kernel_blocks(640, 1, 8) == (128, 5)  # one sequence: every block its own program
    assert decode_kernel_blocks(4096, 1, 8) == (128, 32)  # 33 programs per (sequence, head) wanted: all 32
    assert decode_kernel_blocks(4096, 4, 8) == (128, 16)  # 9 wanted: 16 splits of 2 blocks
    assert decode_kernel_blocks(96, 1, 2) == (32, 3)
    assert decode_kernel_blocks(1000, 1, 8) is None  # no block of 16+ slots divides it: the einsum runs


def test_unknown_backend_is_rejected():
    q, k, v, info, _ = _inputs(t=8)
    with pytest.raises(ValueError, match="unknown attention implementation"):
        attend(q, k, v, info, "flash9000")
