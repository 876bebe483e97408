"""GRPO-family policy loss as small pure functions: ratios, PPO clip, KL estimators, aggregation.

Sign convention: every loss here is to be MINIMISED. Shapes use B (batch of trajectories) and T
(tokens); `mask_bt` is 1 on the tokens the policy sampled (they count) and 0 on prompt,
environment/tool/user tokens and padding (they do not). Registries (`KL_ESTIMATORS`,
`AGGREGATIONS`, `RATIOS`) map config names to functions; `lookup` fails with the closest name.
"""

from __future__ import annotations

from typing import Callable, Mapping, NamedTuple, TypeVar

import chex
import jax
import jax.numpy as jnp

from envtune_jax.config import ConfigError, UnknownNameError, check_name  # noqa: F401 - UnknownNameError: lookup's error
from envtune_jax.rl.rl_config import LossConfig

# |log ratio| is clipped here before exp() so that exp never overflows (as verl does); the clip
# only changes values whose ratio is beyond e^20, where the clipped losses are flat anyway.
LOG_RATIO_LIMIT = 20.0

V = TypeVar("V")


def lookup(registry: Mapping[str, V], name: str, what: str) -> V:
    """Returns registry[name], or raises UnknownNameError naming the closest valid key."""
    check_name(registry, name, what)
    return registry[name]


# ---------------------------------------------------------------- aggregation over [B, T] -> scalar
def _masked_sums_b(loss_bt: jax.Array, mask_bt: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-sequence sum of masked losses [B] and per-sequence counted-token number [B]."""
    return jnp.sum(loss_bt * mask_bt, axis=-1), jnp.sum(mask_bt, axis=-1)


def token_mean(loss_bt: jax.Array, mask_bt: jax.Array, norm_length: int | None = None) -> jax.Array:
    """Sum over counted tokens / number of counted tokens (0 when nothing counts)."""
    del norm_length
    return jnp.sum(loss_bt * mask_bt) / jnp.maximum(jnp.sum(mask_bt), 1.0)


def seq_mean_token_mean(loss_bt: jax.Array, mask_bt: jax.Array, norm_length: int | None = None) -> jax.Array:
    """Token mean inside each sequence, then mean over sequences with >= 1 counted token."""
    del norm_length
    sums_b, counts_b = _masked_sums_b(loss_bt, mask_bt)
    valid_b = (counts_b > 0).astype(sums_b.dtype)
    per_seq_b = sums_b / jnp.maximum(counts_b, 1.0)
    return jnp.sum(per_seq_b * valid_b) / jnp.maximum(jnp.sum(valid_b), 1.0)


def seq_mean_token_sum_norm(loss_bt: jax.Array, mask_bt: jax.Array, norm_length: int | None = None) -> jax.Array:
    """Dr. GRPO: (1/B) * sum over the B sequences of (token sum / norm_length), where norm_length is a
    constant (the maximum response length) and B counts every sequence of the batch, empty ones too, so
    neither the padded length nor the number of non-empty sequences changes the scale between steps."""
    if norm_length is None:
        raise ConfigError(
            "seq-mean-token-sum-norm needs norm_length (LossConfig.seq_sum_norm_length): the maximum response length"
        )
    sums_b, _ = _masked_sums_b(loss_bt, mask_bt)
    return jnp.sum(sums_b) / float(norm_length) / max(loss_bt.shape[0], 1)


def _counted_tokens(mask_bt: jax.Array) -> jax.Array:
    return jnp.sum(mask_bt)


def _counted_sequences(mask_bt: jax.Array) -> jax.Array:
    return jnp.sum((jnp.sum(mask_bt, axis=-1) > 0).astype(jnp.float32))


def _all_sequences(mask_bt: jax.Array) -> jax.Array:
    return jnp.asarray(mask_bt.shape[0], jnp.float32)


class Aggregation(NamedTuple):
    """`reduce(loss_bt, mask_bt, norm_length) -> scalar`; `weight(mask_bt) -> scalar` is its denominator."""

    reduce: Callable[..., jax.Array]
    weight: Callable[[jax.Array], jax.Array]


AGGREGATIONS: dict[str, Aggregation] = {
    "token-mean": Aggregation(token_mean, _counted_tokens),
    "seq-mean-token-mean": Aggregation(seq_mean_token_mean, _counted_sequences),
    "seq-mean-token-sum-norm": Aggregation(seq_mean_token_sum_norm, _all_sequences),
}


def aggregate(loss_bt: jax.Array, mask_bt: jax.Array, mode: str, norm_length: int | None = None) -> jax.Array:
    """Reduces per-token losses [B, T] to a scalar with the named aggregation mode."""
    return lookup(AGGREGATIONS, mode, "loss_agg_mode").reduce(loss_bt, mask_bt.astype(jnp.float32), norm_length)


def aggregation_weight(mask_bt: jax.Array, mode: str) -> jax.Array:
    """The micro-batch's weight for exact gradient accumulation: sum_m loss_m * w_m / sum_m w_m
    equals the loss of the whole batch (counted tokens for token-mean, non-empty sequences for
    seq-mean-token-mean, all sequences for seq-mean-token-sum-norm)."""
    return lookup(AGGREGATIONS, mode, "loss_agg_mode").weight(mask_bt.astype(jnp.float32))


# ---------------------------------------------------------------- KL(policy || reference) per token
def kl_k1(logp_bt: jax.Array, ref_logp_bt: jax.Array) -> jax.Array:
    """k1 = logp - ref_logp (unbiased, high variance, can be negative)."""
    return logp_bt - ref_logp_bt


def kl_k3(logp_bt: jax.Array, ref_logp_bt: jax.Array) -> jax.Array:
    """k3 = exp(ref - logp) - (ref - logp) - 1 (unbiased, >= 0, low variance; verl "low_var_kl")."""
    log_ratio_bt = jnp.clip(ref_logp_bt - logp_bt, -LOG_RATIO_LIMIT, LOG_RATIO_LIMIT)
    return jnp.exp(log_ratio_bt) - log_ratio_bt - 1.0


KL_ESTIMATORS: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    "k1": kl_k1,
    "k3": kl_k3,
    "low_var_kl": kl_k3,
}


def kl_per_token(logp_bt: jax.Array, ref_logp_bt: jax.Array, estimator: str, clamp: float | None) -> jax.Array:
    """The named KL estimate per token [B, T], clamped to [-clamp, clamp] when clamp is not None."""
    kl_bt = lookup(KL_ESTIMATORS, estimator, "kl_estimator")(logp_bt, ref_logp_bt)
    return kl_bt if clamp is None else jnp.clip(kl_bt, -clamp, clamp)


# ---------------------------------------------------------------- importance ratios
def token_ratio(logp_bt: jax.Array, old_logp_bt: jax.Array, mask_bt: jax.Array) -> jax.Array:
    """PPO ratio per token [B, T] = exp(logp - old_logp); 1 on tokens that do not count."""
    log_ratio_bt = jnp.where(mask_bt > 0, logp_bt - old_logp_bt, 0.0)
    return jnp.exp(jnp.clip(log_ratio_bt, -LOG_RATIO_LIMIT, LOG_RATIO_LIMIT))


def sequence_ratio(logp_bt: jax.Array, old_logp_bt: jax.Array, mask_bt: jax.Array) -> jax.Array:
    """GSPO-token ratio [B, T]: value s_b = exp(mean over counted tokens of (logp - old_logp)) on
    every token of sequence b; gradient d ratio_bt / d logp_bt = s_b (stop-gradient form)."""
    log_ratio_bt = jnp.where(mask_bt > 0, logp_bt - old_logp_bt, 0.0)
    counts_b = jnp.maximum(jnp.sum(mask_bt, axis=-1), 1.0)
    seq_log_ratio_b = jnp.sum(log_ratio_bt * mask_bt, axis=-1) / counts_b
    seq_ratio_b1 = jnp.exp(jnp.clip(seq_log_ratio_b, -LOG_RATIO_LIMIT, LOG_RATIO_LIMIT))[:, None]
    own_logp_bt = jnp.where(mask_bt > 0, logp_bt, 0.0)
    return jax.lax.stop_gradient(seq_ratio_b1) * jnp.exp(own_logp_bt - jax.lax.stop_gradient(own_logp_bt))


RATIOS: dict[str, Callable[[jax.Array, jax.Array, jax.Array], jax.Array]] = {
    "token": token_ratio,
    "sequence": sequence_ratio,
}


def sampler_mismatch_sums(
    logp_bt: jax.Array, sampler_logp_bt: jax.Array, mask_bt: jax.Array, eps_low: float, eps_high: float
) -> tuple[jax.Array, jax.Array]:
    """How far the sampler's log-probs are from the trainer's on the counted tokens: (sum of |logp - sampler
    logp|, number of tokens whose ratio exp(logp - sampler logp) lies outside [1 - eps_low, 1 + eps_high])."""
    counted_bt = mask_bt > 0
    diff_bt = jnp.where(counted_bt, logp_bt - sampler_logp_bt, 0.0)
    ratio_bt = jnp.exp(jnp.clip(diff_bt, -LOG_RATIO_LIMIT, LOG_RATIO_LIMIT))
    outside_bt = counted_bt & ((ratio_bt < 1.0 - eps_low) | (ratio_bt > 1.0 + eps_high))
    return jnp.sum(jnp.abs(diff_bt)), jnp.sum(outside_bt.astype(jnp.float32))


# ---------------------------------------------------------------- PPO clip with dual clip
class ClippedObjective(NamedTuple):
    """Per-token PPO loss [B, T] and where each clip is active (gradient zero there) [B, T] bool."""

    loss_bt: jax.Array
    clipped_low_bt: jax.Array
    clipped_high_bt: jax.Array
    dual_clipped_bt: jax.Array


def ppo_clip_loss(
    ratio_bt: jax.Array, advantages_bt: jax.Array, eps_low: float, eps_high: float, dual_clip_c: float | None
) -> ClippedObjective:
    """max(-A r, -A clip(r, 1 - eps_low, 1 + eps_high)), and for A < 0 also min(., -A c)."""
    unclipped_bt = -advantages_bt * ratio_bt
    clipped_bt = -advantages_bt * jnp.clip(ratio_bt, 1.0 - eps_low, 1.0 + eps_high)
    loss_bt = jnp.maximum(unclipped_bt, clipped_bt)
    clipped_high_bt = (advantages_bt > 0) & (ratio_bt > 1.0 + eps_high)
    clipped_low_bt = (advantages_bt < 0) & (ratio_bt < 1.0 - eps_low)
    if dual_clip_c is None:
        dual_clipped_bt = jnp.zeros_like(clipped_low_bt)
    else:
        loss_bt = jnp.where(advantages_bt < 0, jnp.minimum(loss_bt, -advantages_bt * dual_clip_c), loss_bt)
        dual_clipped_bt = (advantages_bt < 0) & (ratio_bt > dual_clip_c)
    return ClippedObjective(loss_bt, clipped_low_bt, clipped_high_bt, dual_clipped_bt)


# ---------------------------------------------------------------- the composed loss
def policy_loss(
    logp_bt: jax.Array,
    old_logp_bt: jax.Array,
    ref_logp_bt: jax.Array | None,
    advantages_bt: jax.Array,
    entropy_bt: jax.Array | None,
    mask_bt: jax.Array,
    config: LossConfig,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Loss to MINIMISE = pg_loss + kl_coef * kl - entropy_coef * entropy, each aggregated with
    `config.loss_agg_mode` over the tokens where mask_bt > 0.

    Args (all [B, T]): logp_bt: current policy log-probs of the sampled tokens (differentiated);
      old_logp_bt: behaviour-policy log-probs; ref_logp_bt: reference log-probs (None allowed when
      kl_coef == 0); advantages_bt: per-token advantages; entropy_bt: policy entropy per position
      (None allowed when entropy_coef == 0); mask_bt: 1 / True where the token counts.
    Returns: (scalar loss, metrics) with pg_loss, kl, entropy (aggregated like the loss),
      clip_frac_low, clip_frac_high, dual_clip_frac, ratio_mean and approx_kl (k3 of old vs current)
      as token means over counted tokens. Use with `jax.jit(..., static_argnames="config")`.
    """
    chex.assert_rank(logp_bt, 2)
    chex.assert_equal_shape([logp_bt, old_logp_bt, advantages_bt, mask_bt])
    if ref_logp_bt is None and config.kl_coef > 0:
        raise ValueError("ref_logp_bt is required when config.kl_coef > 0")
    if entropy_bt is None and config.entropy_coef > 0:
        raise ValueError("entropy_bt is required when config.entropy_coef > 0")
    counted_bt = mask_bt > 0
    mask_bt = counted_bt.astype(jnp.float32)

    def counted_only(values_bt: jax.Array) -> jax.Array:
        # Uncounted positions may hold anything (even NaN from padding); zero them, values and gradients.
        return jnp.where(counted_bt, values_bt.astype(jnp.float32), 0.0)

    logp_bt, old_logp_bt, advantages_bt = counted_only(logp_bt), counted_only(old_logp_bt), counted_only(advantages_bt)
    reduce = lookup(AGGREGATIONS, config.loss_agg_mode, "loss_agg_mode").reduce

    def agg(values_bt: jax.Array) -> jax.Array:
        return reduce(values_bt, mask_bt, config.seq_sum_norm_length)

    ratio_bt = lookup(RATIOS, config.ratio_level, "ratio_level")(logp_bt, old_logp_bt, mask_bt)
    clip = ppo_clip_loss(ratio_bt, advantages_bt, config.eps_low, config.eps_high, config.dual_clip_c)
    pg_loss = agg(clip.loss_bt)
    loss = pg_loss
    zero = jnp.zeros((), jnp.float32)
    kl = entropy = zero
    if ref_logp_bt is not None:
        chex.assert_equal_shape([logp_bt, ref_logp_bt])
        kl = agg(kl_per_token(logp_bt, counted_only(ref_logp_bt), config.kl_estimator, config.kl_clamp))
        loss = loss + config.kl_coef * kl
    if entropy_bt is not None:
        chex.assert_equal_shape([logp_bt, entropy_bt])
        entropy = agg(counted_only(entropy_bt))
        loss = loss - config.entropy_coef * entropy

    def token_frac(values_bt: jax.Array) -> jax.Array:
        return token_mean(values_bt.astype(jnp.float32), mask_bt)

    behaviour_ratio_bt = token_ratio(logp_bt, old_logp_bt, mask_bt)
    metrics = {
        "pg_loss": pg_loss,
        "kl": kl,
        "entropy": entropy,
        "clip_frac_low": token_frac(clip.clipped_low_bt),
        "clip_frac_high": token_frac(clip.clipped_high_bt),
        "dual_clip_frac": token_frac(clip.dual_clipped_bt),
        "ratio_mean": token_frac(ratio_bt),
        "approx_kl": token_frac(behaviour_ratio_bt - 1.0 - jnp.log(behaviour_ratio_bt)),
    }
    return loss, jax.lax.stop_gradient(metrics)
