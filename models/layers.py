"""Qwen3 building blocks: RMSNorm (fp32), rotary embeddings, SwiGLU MLP.

Each block declares its weights once through `envtune_jax.models.weights.declare_weight`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from envtune_jax.models.weights import WeightSpec, declare_weight
from envtune_jax.sharding import constrain


class RMSNorm(nnx.Module):
    """y = w · (x / sqrt(mean(x²) + eps)), normalised in fp32, scaled in the compute dtype (as HF)."""

    def __init__(self, size: int, eps: float, hf_key: str, letter: str, axis: str, param_dtype, rngs: nnx.Rngs):
        spec = WeightSpec(letter, (axis,), hf_key, letter, init="ones")
        self.weight = declare_weight(spec, (size,), param_dtype, rngs)
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return self.weight[...].astype(x.dtype) * normed.astype(x.dtype)


def rope_cos_sin(positions_bt: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """cos, sin of shape [B, T, H] (fp32) for the half-rotation RoPE used by Qwen3."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))  # [H/2]
    angles = positions_bt.astype(jnp.float32)[..., None] * inv_freq  # [B, T, H/2]
    angles = jnp.concatenate([angles, angles], axis=-1)  # [B, T, H]
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x_btnh: jax.Array, cos_bth: jax.Array, sin_bth: jax.Array) -> jax.Array:
    """Rotates x [B, T, N, H] by position; computed in fp32, returned in x's dtype."""
    half = x_btnh.shape[-1] // 2
    x32 = x_btnh.astype(jnp.float32)
    rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
    out = x32 * cos_bth[:, :, None, :] + rotated * sin_bth[:, :, None, :]
    return out.astype(x_btnh.dtype)


class MLP(nnx.Module):
    """SwiGLU: down(silu(x·gate) * (x·up))."""

    def __init__(self, hidden: int, intermediate: int, prefix: str, param_dtype, dtype, rngs: nnx.Rngs):
        self.gate = declare_weight(
            WeightSpec("D F", ("embed", "mlp"), f"{prefix}.gate_proj.weight", "F D"),
            (hidden, intermediate),
            param_dtype,
            rngs,
        )
        self.up = declare_weight(
            WeightSpec("D F", ("embed", "mlp"), f"{prefix}.up_proj.weight", "F D"),
            (hidden, intermediate),
            param_dtype,
            rngs,
        )
        self.down = declare_weight(
            WeightSpec("F D", ("mlp", "embed"), f"{prefix}.down_proj.weight", "D F"),
            (intermediate, hidden),
            param_dtype,
            rngs,
        )
        self.dtype = dtype

    def __call__(self, x_btd: jax.Array) -> jax.Array:
        gate_btf = jnp.einsum("BTD,DF->BTF", x_btd, self.gate[...].astype(self.dtype))
        up_btf = jnp.einsum("BTD,DF->BTF", x_btd, self.up[...].astype(self.dtype))
        act_btf = constrain(jax.nn.silu(gate_btf) * up_btf, ("act_batch", "act_seq", "act_mlp"))
        return jnp.einsum("BTF,FD->BTD", act_btf, self.down[...].astype(self.dtype))
