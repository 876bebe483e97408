"""The optimizer: gradient clipping by global norm, then AdamW (paper defaults: lr 1e-6 constant,
betas 0.9/0.999, weight decay 0.01, clip 1.0), with the moments' dtype selectable."""

from __future__ import annotations

import jax.numpy as jnp
import optax

from envtune_jax.rl.optimizer_config import OptimizerConfig


def make_optimizer(cfg: OptimizerConfig) -> optax.GradientTransformation:
    schedule = (
        optax.linear_schedule(0.0, cfg.learning_rate, cfg.warmup_steps)
        if cfg.warmup_steps
        else optax.constant_schedule(cfg.learning_rate)
    )
    adamw = optax.adamw(
        schedule,
        b1=cfg.b1,
        b2=cfg.b2,
        eps=cfg.eps,
        weight_decay=cfg.weight_decay,
        mu_dtype=jnp.dtype(cfg.moments_dtype),
    )
    if cfg.grad_clip and cfg.grad_clip > 0:
        return optax.chain(optax.clip_by_global_norm(cfg.grad_clip), adamw)
    return adamw
