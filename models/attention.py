"""Attention behind one interface, with interchangeable back-ends.

`attend(q, k, v, mask_info, impl)`:
- "reference": plain einsum, fp32 softmax (always available; the parity tests' ground truth).
- "chunked": the same over query blocks, rematerialised per block (long sequences on CPU).
- "xla" / "cudnn": `jax.nn.dot_product_attention` (cuDNN flash attention on GPU).
- "splash": the TPU Pallas splash-attention kernel (self-attention over packed/padded sequences
  only; runs in Pallas interpret mode off TPU, which is slow and meant for tests).
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


def reference_attention(q_btnh, k_bskh, v_bskh, mask_info: MaskInfo) -> jax.Array:
    """Plain GQA attention: softmax in fp32; output [B, T, N, H] in q's dtype."""
    b, t, n, h = q_btnh.shape
    kv = k_bskh.shape[2]
    q_btkgh = q_btnh.reshape(b, t, kv, n // kv, h)
    scores = jnp.einsum("BTKGH,BSKH->BKGTS", q_btkgh, k_bskh, preferred_element_type=jnp.float32)
    scores = scores * (h ** -0.5)
    mask_bts = mask_info.dense()
    scores = jnp.where(mask_bts[:, None, None, :, :], scores, _MASKED)
    probs = jax.nn.softmax(scores, axis=-1).astype(v_bskh.dtype)
    out = jnp.einsum("BKGTS,BSKH->BTKGH", probs, v_bskh, preferred_element_type=jnp.float32)
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
