"""Critic-free GRPO advantages: group-normalised outcome rewards, broadcast to the model's tokens.

A = (R - mean_group) / (std_group + eps), or R - mean_group without std scaling (Dr. GRPO). A group
is the G rollouts of one prompt. Two layouts: rewards [P, G] (prompt-major, G per prompt) or
rewards [B] with integer group ids [B]. Rules shared by both: every group whose rewards are all
equal (including a group of one sample) gets advantage exactly 0, even where floating-point
rounding would leave a tiny non-zero std; the std uses `ddof` (1 = unbiased, as torch.std in verl).
Config fields: LossConfig.scale_advantages_by_std / advantage_eps / advantage_std_ddof.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np


def _normalise(
    centred: jax.Array,
    squared_sum: jax.Array,
    count: jax.Array,
    identical: jax.Array,
    scale_by_std: bool,
    eps: float,
    ddof: int,
) -> jax.Array:
    """Shared tail: divide by (std + eps) when asked; identical groups give 0."""
    if scale_by_std:
        std = jnp.sqrt(squared_sum / jnp.maximum(count - ddof, 1.0))
        centred = centred / (std + eps)
    return jnp.where(identical, 0.0, centred)


def group_advantages(
    rewards_pg: jax.Array, *, scale_by_std: bool = True, eps: float = 1e-6, ddof: int = 1
) -> jax.Array:
    """Advantages [P, G] from rewards [P, G] (row p holds the G rollouts of prompt p), float32."""
    chex.assert_rank(rewards_pg, 2)
    rewards_pg = rewards_pg.astype(jnp.float32)
    centred_pg = rewards_pg - jnp.mean(rewards_pg, axis=-1, keepdims=True)
    squared_sum_p1 = jnp.sum(centred_pg**2, axis=-1, keepdims=True)
    identical_p1 = jnp.max(rewards_pg, axis=-1, keepdims=True) == jnp.min(rewards_pg, axis=-1, keepdims=True)
    count = jnp.asarray(rewards_pg.shape[-1], jnp.float32)
    return _normalise(centred_pg, squared_sum_p1, count, identical_p1, scale_by_std, eps, ddof)


def group_advantages_from_ids(
    rewards_b: jax.Array,
    group_ids_b: jax.Array,
    num_groups: int,
    *,
    scale_by_std: bool = True,
    eps: float = 1e-6,
    ddof: int = 1,
) -> jax.Array:
    """Advantages [B] from rewards [B] and group ids [B] in [0, num_groups) (static int).

    Groups may have different sizes and need not be contiguous. Ids outside the range raise
    ValueError when the ids are concrete; under jit the affected samples get NaN advantages.
    """
    chex.assert_rank([rewards_b, group_ids_b], 1)
    chex.assert_equal_shape([rewards_b, group_ids_b])
    if not isinstance(group_ids_b, jax.core.Tracer):
        ids = np.asarray(group_ids_b)
        if ids.size and (ids.min() < 0 or ids.max() >= num_groups):
            raise ValueError(f"group ids must lie in [0, {num_groups}), got range [{ids.min()}, {ids.max()}]")
    rewards_b = rewards_b.astype(jnp.float32)

    def per_group(op, values_b: jax.Array) -> jax.Array:
        """Applies a segment reduction [B] -> [num_groups] and reads it back per sample [B]."""
        reduced_g = op(values_b, group_ids_b, num_segments=num_groups)
        return reduced_g.at[group_ids_b].get(mode="fill", fill_value=jnp.nan)

    count_b = per_group(jax.ops.segment_sum, jnp.ones_like(rewards_b))
    centred_b = rewards_b - per_group(jax.ops.segment_sum, rewards_b) / count_b
    squared_sum_b = per_group(jax.ops.segment_sum, centred_b**2)
    identical_b = per_group(jax.ops.segment_max, rewards_b) == per_group(jax.ops.segment_min, rewards_b)
    advantages_b = _normalise(centred_b, squared_sum_b, count_b, identical_b, scale_by_std, eps, ddof)
    in_range_b = (group_ids_b >= 0) & (group_ids_b < num_groups)
    return jnp.where(in_range_b, advantages_b, jnp.nan)


def token_advantages(advantages_b: jax.Array, mask_bt: jax.Array) -> jax.Array:
    """Broadcasts one advantage per trajectory [B] to its tokens [B, T]; 0 where mask_bt is 0."""
    chex.assert_rank([advantages_b, mask_bt], [1, 2])
    chex.assert_equal_shape_prefix([advantages_b, mask_bt], 1)
    return jnp.where(mask_bt > 0, advantages_b.astype(jnp.float32)[:, None], 0.0)
