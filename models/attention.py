"""Attention behind one interface, with interchangeable back-ends.

`attend(q, k, v, mask_info, impl)` (self-attention, keys/values [B, S, K, H]):
- "reference": plain einsum, fp32 softmax (always available; the parity tests' ground truth).
- "chunked": the same over query blocks, rematerialised per block (long sequences on CPU).
- "xla" / "cudnn": `jax.nn.dot_product_attention` (cuDNN flash attention on GPU).
- "splash": the TPU Pallas splash-attention kernel (self-attention only; runs in Pallas interpret
  mode off TPU, which is slow and meant for tests). Its mask is static: causal by index for plain
  packed/padded sequences, or, for shared-prefix training rows, the block pattern of the rows' static
  layout (`MaskInfo.row_layout`, models/row_layout.py: a prompt causal, a continuation against its
  group's prompt and itself causally), either way with segment ids for packing and padding. Rows are
  padded up to whole kernel blocks of SPLASH_BLOCK tokens. Branch ids without a layout are refused.
`attend_cache(q, keys, values, mask_info, impl, ...)` (queries against a KV cache laid out [B, K, S, H]):
query blocks shorter than `CACHE_KERNEL_MIN_QUERIES` (decode steps, short extends) use the reference
einsums on the cache as it lies; longer ones (prefill chunks) use the chosen back-end on the cache
viewed as [B, S, K, H] (a transposed copy, amortised over the block). With `decode="pallas"`, one-token
steps run JAX's Pallas GPU decode kernel instead (`pallas_decode_attention`: split-K flash decoding
that reads each sequence's filled slots only; Pallas interpret mode off GPU, for tests).
Masks come from the caller as positions and segment ids, so padded and packed batches work:
query t may attend to key s iff same segment, key segment ≠ 0, and key position ≤ query position.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from envtune_jax.models.row_layout import PackedRowLayout

_MASKED = float(jnp.finfo(jnp.float32).min)


@dataclasses.dataclass(frozen=True)
class MaskInfo:
    q_positions: jax.Array  # [B, T] int32
    q_segments: jax.Array  # [B, T] int32 (0 = padding)
    kv_positions: jax.Array  # [B, S] int32
    kv_segments: jax.Array  # [B, S] int32 (0 = empty / padding)
    self_attention: bool = True  # kv are the same tokens as q (no cache)
    plain_causal: bool = False  # positions are 0..T-1 and every token is in one segment: the mask is causal
    # Shared-prefix packing (models/prefix_attention.py): 0 = a segment's shared prompt, c ≥ 1 = its
    # continuation c; a query also needs the key's branch to be 0 or its own. None: no branches.
    q_branches: jax.Array | None = None  # [B, T] int32
    kv_branches: jax.Array | None = None  # [B, S] int32
    # The static layout the branch ids follow (every row laid out alike): lets kernels that take a static
    # mask (splash) run the branch mask. None: the branch ids are all there is (dense-mask back-ends only).
    row_layout: PackedRowLayout | None = None

    def dense(self) -> jax.Array:
        """Boolean mask [B, T, S]."""
        same = self.q_segments[:, :, None] == self.kv_segments[:, None, :]
        causal = self.kv_positions[:, None, :] <= self.q_positions[:, :, None]
        mask = same & causal & (self.kv_segments[:, None, :] != 0)
        if self.q_branches is not None:
            kv_branches = self.kv_branches[:, None, :]
            mask = mask & ((kv_branches == 0) | (kv_branches == self.q_branches[:, :, None]))
        return mask


jax.tree_util.register_dataclass(
    MaskInfo,
    data_fields=["q_positions", "q_segments", "kv_positions", "kv_segments", "q_branches", "kv_branches"],
    meta_fields=["self_attention", "plain_causal", "row_layout"],
)


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
    scores = scores * (h**-0.5)
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
        q_chunk, positions, segments, branches = args
        info = MaskInfo(
            positions,
            segments,
            mask_info.kv_positions,
            mask_info.kv_segments,
            mask_info.self_attention,
            q_branches=branches,
            kv_branches=mask_info.kv_branches,
        )
        return reference_attention(q_chunk, k_bskh, v_bskh, info)

    branches = None if mask_info.q_branches is None else blocks(mask_info.q_branches)
    out = jax.lax.map(one, (blocks(q_btnh), blocks(mask_info.q_positions), blocks(mask_info.q_segments), branches))
    return jnp.swapaxes(out, 0, 1).reshape(b, num * chunk, n, h)[:, :t]


def xla_attention(q_btnh, k_bskh, v_bskh, mask_info: MaskInfo, implementation: str | None = "xla") -> jax.Array:
    """jax.nn.dot_product_attention; a plain causal mask is passed as `is_causal` (cuDNN's causal kernel,
    which skips masked blocks), any other as a dense [B, 1, T, S] mask (cuDNN adds it as a bias)."""
    if mask_info.plain_causal:
        return jax.nn.dot_product_attention(q_btnh, k_bskh, v_bskh, is_causal=True, implementation=implementation)
    mask = mask_info.dense()[:, None, :, :]  # [B, 1, T, S]
    return jax.nn.dot_product_attention(q_btnh, k_bskh, v_bskh, mask=mask, implementation=implementation)


# Query and key block of the splash kernel (all its forward and backward blocks): rows are padded up to a
# multiple of it. 128 is the TPU's lane width, the smallest key block a computed mask allows.
SPLASH_BLOCK = 128


@functools.lru_cache(maxsize=16)
def _splash_kernel(num_heads: int, seq_len: int, interpret: bool, layout: PackedRowLayout | None = None):
    """The splash kernel for rows of seq_len tokens (a multiple of SPLASH_BLOCK): causal by index, or the
    block pattern of `layout` (shared-prefix rows). Built (and its mask's tiles classified) once per key,
    with concrete arrays even when first asked for inside a trace, so every later program can reuse it."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    if layout is None:
        head_mask = sm.CausalMask((seq_len, seq_len))
    else:
        from envtune_jax.models.splash_masks import PackedRowMask

        head_mask = PackedRowMask(layout, seq_len)
    mask = sm.MultiHeadMask([head_mask] * num_heads)
    block = SPLASH_BLOCK
    sizes = sk.BlockSizes(
        block_q=block,
        block_kv=block,
        block_kv_compute=block,
        block_q_dkv=block,
        block_kv_dkv=block,
        block_kv_dkv_compute=block,
        block_q_dq=block,
        block_kv_dq=block,
    )
    with jax.ensure_compile_time_eval():  # its mask tables would otherwise be tracers of the first program
        return sk.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret)


def splash_attention(q_btnh, k_bskh, v_bskh, mask_info: MaskInfo) -> jax.Array:
    """TPU splash attention with segment ids, and a static mask: causal by index (positions must rise with
    index), or for shared-prefix rows (branch ids) the block pattern of mask_info.row_layout (rows must be
    laid out as it says, as rl/prefix_packing.py lays them out). Returns [B, T, N, H] in q's dtype."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk

    if not mask_info.self_attention:
        raise ValueError("splash attention supports self-attention only (no KV cache); use 'reference' or 'xla'")
    layout = mask_info.row_layout
    _, t, n, h = q_btnh.shape
    if mask_info.q_branches is not None and layout is None:
        raise ValueError(
            "splash attention runs shared-prefix rows (branch ids) only with their static layout "
            "(MaskInfo.row_layout): its mask is fixed when the kernel is built, and branch ids are "
            "traced values; pass the rows' PackedRowLayout, or use 'reference', 'chunked', 'xla' "
            "or 'cudnn', or two-level attention"
        )
    if layout is not None and (mask_info.q_branches is None or t != layout.row_width):
        raise ValueError(
            f"a row layout needs branch ids and rows of its width {layout.row_width} "
            f"(got {t} tokens{'' if mask_info.q_branches is not None else ', no branch ids'})"
        )
    width = -(-t // SPLASH_BLOCK) * SPLASH_BLOCK
    kernel = _splash_kernel(n, width, jax.default_backend() != "tpu", layout)
    group = n // k_bskh.shape[2]

    def heads_first(x_btxh):  # [B, T, X, H] -> [B, X, width, H], padded with zeros
        return jnp.pad(jnp.swapaxes(x_btxh, 1, 2), [(0, 0), (0, 0), (0, width - t), (0, 0)])

    q = heads_first(q_btnh) * (h**-0.5)  # [B, N, width, H]
    k = jnp.repeat(heads_first(k_bskh), group, axis=1)
    v = jnp.repeat(heads_first(v_bskh), group, axis=1)
    pad_segments = [(0, 0), (0, width - t)]  # segment 0: padding sees only padding
    segments = sk.SegmentIds(
        q=jnp.pad(mask_info.q_segments, pad_segments), kv=jnp.pad(mask_info.kv_segments, pad_segments)
    )
    out = jax.vmap(kernel)(q, k, v, segment_ids=segments)  # [B, N, width, H]
    return jnp.swapaxes(out[:, :, :t], 1, 2).astype(q_btnh.dtype)


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


# Grid programs the decode kernel aims for (two per SM of an H100's 132): with few sequences x kv heads,
# each sequence's slots are split over more programs (split-K), so a batch of 1 still fills the GPU.
DECODE_KERNEL_PROGRAMS = 264


def decode_kernel_blocks(capacity: int, batch: int, num_kv_heads: int) -> tuple[int, int] | None:
    """(block_k, k_splits) for the Pallas decode kernel over `capacity` cache slots, or None when no block
    of 16-128 slots divides the capacity (the kernel needs whole blocks; callers fall back to the einsum).

    Each split holds a power-of-two number of blocks (every array a Triton program touches then has
    power-of-two sides); of those, the fewest splits that give DECODE_KERNEL_PROGRAMS programs over
    batch x kv heads, or as many as there are blocks."""
    block_k = next((size for size in (128, 64, 32, 16) if capacity % size == 0), None)
    if block_k is None:
        return None
    blocks = capacity // block_k
    target = -(-DECODE_KERNEL_PROGRAMS // (batch * num_kv_heads))
    candidates = sorted(blocks // 2**j for j in range(blocks.bit_length()) if blocks % 2**j == 0)
    k_splits = next((d for d in candidates if d >= target), candidates[-1])
    return block_k, k_splits


def pallas_decode_attention(q_bnh, k_bksh, v_bksh, kv_lengths_b) -> jax.Array:
    """One query per sequence [B, N, H] against the first kv_lengths_b [B] slots of a cache [B, K, S, H].
    Returns [B, N, H] in q's dtype (softmax in fp32). Needs decode_kernel_blocks(S, ...) to be defined.

    JAX's Pallas GPU kernel (`jax.experimental.pallas.ops.gpu.decode_attention.gqa`: split-K flash
    decoding, whole blocks past a sequence's length skipped); it takes [B, S, K, H] and swaps to
    [B, K, S, H] itself, so the swap here cancels. On a mesh it runs per shard (shard_map: batch over
    data/fsdp, kv heads, and their q-head groups, over tensor, as the cache is laid out).
    """
    from jax.experimental.pallas.ops.gpu import decode_attention

    capacity = k_bksh.shape[2]
    interpret = jax.default_backend() != "gpu"

    def local(q, k, v, lengths):
        block_k, k_splits = decode_kernel_blocks(capacity, q.shape[0], k.shape[1])
        out = decode_attention.gqa(
            q,
            jnp.swapaxes(k, 1, 2),
            jnp.swapaxes(v, 1, 2),
            None,
            lengths,
            block_k=block_k,
            k_splits=k_splits,
            interpret=interpret,
        )
        return out.astype(q.dtype)  # its final normalisation promotes 16-bit outputs to fp32

    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty or mesh.size == 1:
        return local(q_bnh, k_bksh, v_bksh, kv_lengths_b)
    from envtune_jax.models.kv_cache import CACHE_AXES
    from envtune_jax.sharding import logical_to_spec

    cache_spec = logical_to_spec(CACHE_AXES, k_bksh.shape, mesh)
    batch_axes, head_axes = cache_spec[0], cache_spec[1]
    q_spec = jax.sharding.PartitionSpec(batch_axes, head_axes, None)  # N = K x G, K-major: groups follow K
    return jax.shard_map(
        local,
        in_specs=(q_spec, cache_spec, cache_spec, jax.sharding.PartitionSpec(batch_axes)),
        out_specs=q_spec,
        check_vma=False,
    )(q_bnh, k_bksh, v_bksh, kv_lengths_b)


def attend_cache(
    q_btnh, k_bksh, v_bksh, mask_info: MaskInfo, impl: str = "reference", decode: str = "reference", kv_lengths_b=None
) -> jax.Array:
    """Queries [B, T, N, H] against a KV cache [B, K, S, H]. Returns [B, T, N, H].

    decode="pallas" with T = 1 and kv_lengths_b [B] (filled slots per sequence, the query's own
    included): the Pallas decode kernel, when a block size divides S. Otherwise xla / cudnn run for
    blocks of ≥ CACHE_KERNEL_MIN_QUERIES queries (on the [B, S, K, H] view); every other case, and every
    other impl (splash and chunked are self-attention kernels), is the reference einsum on the cache layout.
    """
    b, t, _, _ = q_btnh.shape
    if decode not in ("reference", "pallas"):
        raise ValueError(f"unknown decode attention '{decode}' (reference, pallas)")
    if (
        decode == "pallas"
        and t == 1
        and kv_lengths_b is not None
        and decode_kernel_blocks(k_bksh.shape[2], b, k_bksh.shape[1]) is not None
    ):
        return pallas_decode_attention(q_btnh[:, 0], k_bksh, v_bksh, kv_lengths_b)[:, None]
    if impl in ("xla", "cudnn") and t >= CACHE_KERNEL_MIN_QUERIES:
        return xla_attention(q_btnh, jnp.swapaxes(k_bksh, 1, 2), jnp.swapaxes(v_bksh, 1, 2), mask_info, impl)
    return reference_attention(q_btnh, k_bksh, v_bksh, mask_info, kv_layout="BKSH")
