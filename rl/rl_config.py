"""`LossConfig`: every knob of the GRPO-family objective (advantages, PPO clip, KL, entropy, aggregation).

Defaults are the Environment Tuning settings (verl 0.4.1 run of the paper): decoupled clip 0.2 / 0.28,
dual-clip c = 10, KL to the reference with the clamped k3 ("low_var_kl") estimator and coefficient 0.1,
entropy bonus 0.001, token-mean aggregation, std-normalised group advantages. The dataclass is frozen
(hashable) so it can be a static argument of `jax.jit`; load it from YAML with
`envtune_jax.config.load(LossConfig, path, overrides)`.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from envtune_jax.config import ConfigError, ReadOnlyWhen, check_field_use, check_name

SUM_NORM_MODE = "seq-mean-token-sum-norm"

# The names the registries of envtune_jax.rl.losses hold (tests/core/test_config.py checks that they agree), so that a
# config is checked without importing JAX.
KL_ESTIMATOR_NAMES = ("k1", "k3", "low_var_kl")
AGGREGATION_NAMES = ("token-mean", "seq-mean-token-mean", SUM_NORM_MODE)
RATIO_NAMES = ("token", "sequence")


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Hyper-parameters of `envtune_jax.rl.losses.policy_loss` and `envtune_jax.rl.advantages`.

    Attributes:
      eps_low: lower clip bound, the ratio is clipped at 1 - eps_low (PPO / DAPO "clip_ratio_low").
      eps_high: upper clip bound, the ratio is clipped at 1 + eps_high ("clip-higher").
      dual_clip_c: dual-clip bound for negative advantages (per-token loss capped at -A * c);
        None disables it. Must be > 1.
      kl_coef: weight of the KL(policy || reference) penalty in the loss; 0 disables it (and
        `ref_logp_bt` may then be None).
      kl_estimator: name in `envtune_jax.rl.losses.KL_ESTIMATORS` ("k1", "k3" or its alias "low_var_kl").
      kl_clamp: the per-token KL estimate is clamped to [-kl_clamp, kl_clamp]; None disables.
      entropy_coef: weight of the entropy bonus (subtracted from the loss); 0 disables it (and
        `entropy_bt` may then be None).
      loss_agg_mode: name in `envtune_jax.rl.losses.AGGREGATIONS` ("token-mean", "seq-mean-token-mean",
        "seq-mean-token-sum-norm").
      seq_sum_norm_length: the constant divisor of "seq-mean-token-sum-norm" (Dr. GRPO): the maximum
        response length. Required by that mode (a divisor that followed the batch's padded length
        would rescale every step differently); read by no other mode.
      ratio_level: name in `envtune_jax.rl.losses.RATIOS`: "token" (PPO/GRPO) or "sequence" (GSPO-token: the
        length-normalised sequence ratio in the per-token stop-gradient form).
      scale_advantages_by_std: divide group-centred rewards by the group std (GRPO) or not (Dr. GRPO).
      advantage_eps: added to the group std before dividing.
      advantage_std_ddof: delta degrees of freedom of the group std; 1 (unbiased, as torch.std in
        verl) by default.
    """

    eps_low: float = 0.2
    eps_high: float = 0.28
    dual_clip_c: float | None = 10.0
    kl_coef: float = 0.1
    kl_estimator: str = "low_var_kl"
    kl_clamp: float | None = 10.0
    entropy_coef: float = 0.001
    loss_agg_mode: str = "token-mean"
    seq_sum_norm_length: int | None = None
    ratio_level: str = "token"
    scale_advantages_by_std: bool = True
    advantage_eps: float = 1e-6
    advantage_std_ddof: int = 1

    FIELD_USE: ClassVar[tuple[ReadOnlyWhen, ...]] = (
        ReadOnlyWhen("kl_estimator", "the KL term is off (kl_coef is 0)", lambda c: c.kl_coef > 0),
        ReadOnlyWhen("kl_clamp", "the KL term is off (kl_coef is 0)", lambda c: c.kl_coef > 0),
        ReadOnlyWhen(
            "seq_sum_norm_length",
            f"only loss_agg_mode '{SUM_NORM_MODE}' divides by it",
            lambda c: c.loss_agg_mode == SUM_NORM_MODE,
        ),
        ReadOnlyWhen(
            "advantage_eps",
            "advantages are not divided by the group std (scale_advantages_by_std is false)",
            lambda c: c.scale_advantages_by_std,
        ),
        ReadOnlyWhen(
            "advantage_std_ddof",
            "advantages are not divided by the group std (scale_advantages_by_std is false)",
            lambda c: c.scale_advantages_by_std,
        ),
    )

    def __post_init__(self) -> None:
        if not 0.0 <= self.eps_low < 1.0:
            raise ConfigError(f"eps_low must lie in [0, 1), got {self.eps_low}")
        if self.eps_high < 0.0:
            raise ConfigError(f"eps_high must be >= 0, got {self.eps_high}")
        if self.dual_clip_c is not None and self.dual_clip_c <= 1.0:
            raise ConfigError(f"dual_clip_c must be > 1 (or None to disable), got {self.dual_clip_c}")
        if self.kl_coef < 0.0 or self.entropy_coef < 0.0:
            raise ConfigError(f"kl_coef and entropy_coef must be >= 0, got {self.kl_coef}, {self.entropy_coef}")
        if self.kl_clamp is not None and self.kl_clamp <= 0.0:
            raise ConfigError(f"kl_clamp must be > 0 (or None to disable), got {self.kl_clamp}")
        if self.seq_sum_norm_length is not None and self.seq_sum_norm_length <= 0:
            raise ConfigError(f"seq_sum_norm_length must be > 0 (or None), got {self.seq_sum_norm_length}")
        if self.advantage_eps < 0.0 or self.advantage_std_ddof < 0:
            raise ConfigError("advantage_eps and advantage_std_ddof must be >= 0")
        check_name(KL_ESTIMATOR_NAMES, self.kl_estimator, "kl_estimator")
        check_name(AGGREGATION_NAMES, self.loss_agg_mode, "loss_agg_mode")
        check_name(RATIO_NAMES, self.ratio_level, "ratio_level")
        if self.loss_agg_mode == SUM_NORM_MODE and self.seq_sum_norm_length is None:
            raise ConfigError(
                f"loss_agg_mode '{SUM_NORM_MODE}' divides by a constant: set seq_sum_norm_length "
                "to the maximum response length (Dr. GRPO), e.g. 24576"
            )
        check_field_use(self)
