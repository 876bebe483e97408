"""`OptimizerConfig`: the AdamW settings of a run (the `optimizer:` section of a recipe).

Kept apart from `make_optimizer` (rl/optimizer.py, optax) so that a recipe loads and is checked without JAX.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from envtune_jax.config import require_at_least


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    learning_rate: float = 1e-6
    weight_decay: float = 0.01
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    grad_clip: float = 1.0  # ≤ 0: no clipping
    warmup_steps: int = 0
    moments_dtype: str = "float32"  # AdamW mu/nu; fp32 keeps bf16 params trainable

    FIELD_USE: ClassVar[tuple] = ()  # every field is read (grad_clip 0 and warmup_steps 0 switch those off)

    def __post_init__(self):
        require_at_least(self, 0, "learning_rate", "weight_decay", "eps", "warmup_steps")
        for name in ("b1", "b2"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must lie in [0, 1), got {getattr(self, name)}")
        if self.moments_dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"moments_dtype must be float32, bfloat16 or float16, got {self.moments_dtype!r}")
