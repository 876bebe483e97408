"""The optimizer: gradient clipping by global norm, then AdamW (paper defaults: lr 1e-6 constant,
betas 0.9/0.999, weight decay 0.01, clip 1.0), with the moments' dtype selectable."""
from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax.numpy as jnp
import optax


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    learning_rate: float = 1e-6
    weight_decay: float = 0.01
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    grad_clip: float = 1.0
    warmup_steps: int = 0
    moments_dtype: str = "float32"  # AdamW mu/nu; fp32 keeps bf16 params trainable

    FIELD_USE: ClassVar[tuple] = ()  # every field is read (grad_clip 0 and warmup_steps 0 switch those off)


def make_optimizer(cfg: OptimizerConfig) -> optax.GradientTransformation:
    schedule = (optax.linear_schedule(0.0, cfg.learning_rate, cfg.warmup_steps) if cfg.warmup_steps
                else optax.constant_schedule(cfg.learning_rate))
    adamw = optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay,
                        mu_dtype=jnp.dtype(cfg.moments_dtype))
    if cfg.grad_clip and cfg.grad_clip > 0:
        return optax.chain(optax.clip_by_global_norm(cfg.grad_clip), adamw)
    return adamw
