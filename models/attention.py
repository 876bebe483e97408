"""Attention behind one interface, with interchangeable back-ends.

`attend(q, k, v, mask_info, impl)` (self-attention, keys/values [B, S, K, H]):
- "reference": plain einsum, fp32 softmax (always available; the parity tests' ground truth).
- "chunked": the same over query blocks, rematerialised per block (long sequences on CPU).
- "xla" / "cudnn": `jax.nn.dot_product_attention` (cuDNN flash attention on GPU).
- "splash": the TPU Pallas splash-attention kernel (self-attention over packed/padded sequences
  only; runs in Pallas interpret mode off TPU, which is slow and meant for tests).
`attend_cache(q, keys, values, mask_info, impl)` (queries against a KV cache laid out [B, K, S, H]):
query blocks shorter than `CACHE_KERNEL_MIN_QUERIES` (decode steps, short extends) use the reference
einsums on the cache as it lies; longer ones (prefill chunks) use the chosen back-end on the cache
viewed as [B, S, K, H] (a transposed copy, amortised over the block).
Masks come from the caller as positions and segment ids, so padded and packed batches work:
query t may attend to key s iff same segment, key segment ≠ 0, and key position ≤ query position.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

_MASKED = float(jnp.finfo(jnp.float32).min)


@dataclasses.dataclass(frozen=True)
class MaskInfo:
    q_positions: jax.Array  # [B, T] int32
    q_segments: jax.Array  # [B, T] int32 (0 = padding)
    kv_positions: jax.Array  # [B, S] int32
    kv_segments: jax.Array  # [B, S] int32 (0 = empty / padding)
    self_attention: bool = True  # kv are the same tokens as q (no cache)
    plain_causal: bool = False  # positions are 0..T-1 and every token is in one segment: the mask is causal

    def dense(self) -> jax.Array:
        """Boolean mask [B, T, S]."""
        same = self.q_segments[:, :, None] == self.kv_segments[:, None, :]
        causal = self.kv_positions[:, None, :] <= self.q_positions[:, :, None]
        return same & causal & (self.kv_segments[:, None, :] != 0)


jax.tree_util.register_dataclass(
    MaskInfo, data_fields=["q_positions", "q_segments", "kv_positions", "kv_segments"],
    meta_fields=["self_attention", "plain_causal"])


# Below this many queries, attention against the cache is the reference einsum on the cache layout. A
# back-end on the [B, S, K, H] view first copies the keys and values transposed (reads and writes 2·K·H
# 16-bit values per slot: 8·K·H bytes), while the einsum's extra traffic is its fp32 scores (N·T·4 bytes
# per slot): the einsum moves less while T < 2·K·H / N, which is 64 for Qwen3-4B (K 8, H 128, N 32).
CACHE_KERNEL_MIN_QUERIES = 64


def reference_attention(q_btnh, k, v, mask_info: MaskInfo, kv_layout: str = "BSKH") -> jax.Array:
    """Plain GQA attention: softmax in fp32; output [B, T, N, H] in q's dtype.

    k, v: [B, S, K, H] (kv_layout "BSKH") or [B, K, S, H] ("BKSH", the KV cache's layout).
    """
    b, t, n, h = q_btnh.shape
    kv = k.shape[kv_layout.index("K")]
    q_btkgh = q_btnh.reshape(b, t, kv, n // kv, h)
    scores = jnp.einsum(f"BTKGH,{kv_layout}->BKGTS", q_btkgh, k, preferred_element_type=jnp.float32)
    scores = scores * (h ** -0.5)
    mask_bts = mask_info.dense()
    scores = jnp.where(mask_bts[:, None, None, :, :], scores, _MASKED)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    # out in v's dtype (matmuls accumulate in fp32 regardless); XLA:CPU has no bf16 x bf16 -> fp32 dot
    # kernel for this contraction on the [B, K, S, H] layout
    out = jnp.einsum(f"BKGTS,{kv_layout}->BTKGH", probs, v)
    return out.reshape(b, t, n, h).astype(q_btnh.dtype)


def chunked_attention(q_btnh, k_bskh, v_bskh, mask_info: MaskInfo, chunk: int = 512) -> jax.Array:
    """The reference computation over query blocks of `chunk`, each rematerialised in the backward
    pass: memory O(B·N·chunk·S) instead of O(B·N·T·S), for long training sequences off GPU/TPU."""
    b, t, n, h = q_btnh.shape
    if t <= chunk:
        return reference_attention(q_btnh, k_bskh, v_bskh, mask_info)
    pad = (-t) % chunk
    num = (t + pad) // chunk

    def blocks(x, fill=0):
        x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2), constant_values=fill)
        return jnp.swapaxes(x.reshape(b, num, chunk, *x.shape[2:]), 0, 1)

    @jax.checkpoint
    def one(args):
        q_chunk, positions, segments = args
        info = MaskInfo(positions, segments, mask_info.kv_positions, mask_info.kv_segments, mask_info.self_attention)
        return reference_attention(q_chunk, k_bskh, v_bskh, info)

    out = jax.lax.map(one, (blocks(q_btnh), blocks(mask_info.q_positions), blocks(mask_info.q_segments)))
    return jnp.swapaxes(out, 0, 1).reshape(b, num * chunk, n, h)[:, :t]


def xla_attention(q_btnh, k_bskh, v_bskh, mask_info: MaskInfo, implementation: str | None = "xla") -> jax.Array:
    """jax.nn.dot_product_attention; a plain causal mask is passed as `is_causal` (cuDNN's causal kernel,
    which skips masked blocks), any other as a dense [B, 1, T, S] mask (cuDNN adds it as a bias)."""
    if mask_info.plain_causal:
        return jax.nn.dot_product_attention(q_btnh, k_bskh, v_bskh, is_causal=True, implementation=implementation)
    mask = mask_info.dense()[:, None, :, :]  # [B, 1, T, S]
    return jax.nn.dot_product_attention(q_btnh, k_bskh, v_bskh, mask=mask, implementation=implementation)


@functools.lru_cache(maxsize=16)
def _splash_kernel(num_heads: int, seq_len: int, interpret: bool):
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    block = min(128, seq_len)
    mask = sm.MultiHeadMask([sm.CausalMask((seq_len, seq_len)) for _ in range(num_heads)])
    sizes = sk.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block,
                          block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
                          block_q_dq=block, block_kv_dq=block)
    return sk.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret)


def splash_attention(q_btnh, k_bskh, v_bskh, mask_info: MaskInfo) -> jax.Array:
    """TPU splash attention; causal by index plus segment ids (positions must rise with index)."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk

    if not mask_info.self_attention:
        raise ValueError("splash attention supports self-attention only (no KV cache); use 'reference' or 'xla'")
    b, t, n, h = q_btnh.shape
    group = n // k_bskh.shape[2]
    kernel = _splash_kernel(n, t, jax.default_backend() != "tpu")
    q = jnp.swapaxes(q_btnh, 1, 2) * (h ** -0.5)  # [B, N, T, H]
    k = jnp.repeat(jnp.swapaxes(k_bskh, 1, 2), group, axis=1)
    v = jnp.repeat(jnp.swapaxes(v_bskh, 1, 2), group, axis=1)
    segments = sk.SegmentIds(q=mask_info.q_segments, kv=mask_info.kv_segments)
    out = jax.vmap(kernel)(q, k, v, segment_ids=segments)  # [B, N, T, H]
    return jnp.swapaxes(out, 1, 2).astype(q_btnh.dtype)


def attend(q_btnh, k_bskh, v_bskh, mask_info: MaskInfo, impl: str = "reference") -> jax.Array:
    """Dispatches to the chosen attention back-end. Returns [B, T, N, H]."""
    if impl == "reference":
        return reference_attention(q_btnh, k_bskh, v_bskh, mask_info)
    if impl == "chunked":
        return chunked_attention(q_btnh, k_bskh, v_bskh, mask_info)
    if impl == "xla":
        return xla_attention(q_btnh, k_bskh, v_bskh, mask_info, "xla")
    if impl == "cudnn":
        return xla_attention(q_btnh, k_bskh, v_bskh, mask_info, "cudnn")
    if impl == "splash":
        return splash_attention(q_btnh, k_bskh, v_bskh, mask_info)
    raise ValueError(f"unknown attention implementation '{impl}' (reference, chunked, xla, cudnn, splash)")


def attend_cache(q_btnh, k_bksh, v_bksh, mask_info: MaskInfo, impl: str = "reference") -> jax.Array:
    """Queries [B, T, N, H] against a KV cache [B, K, S, H]. Returns [B, T, N, H].

    xla / cudnn run for blocks of ≥ CACHE_KERNEL_MIN_QUERIES queries (on the [B, S, K, H] view);
    every other case, and every other impl (splash and chunked are self-attention kernels), is the
    reference einsum on the cache layout.
    """
    if impl in ("xla", "cudnn") and q_btnh.shape[1] >= CACHE_KERNEL_MIN_QUERIES:
        return xla_attention(q_btnh, jnp.swapaxes(k_bksh, 1, 2), jnp.swapaxes(v_bksh, 1, 2), mask_info, impl)
    return reference_attention(q_btnh, k_bksh, v_bksh, mask_info, kv_layout="BKSH")
