"""`TrainStepConfig`: how the policy-gradient step is computed (the `train_step:` section of a recipe).

Kept apart from the jit-compiled step (rl/train_step.py) so that a recipe loads and is checked without JAX.
"""
from __future__ import annotations

import dataclasses
from typing import Literal

from envtune_jax.config import require_at_least


@dataclasses.dataclass(frozen=True)
class TrainStepConfig:
    micro_batch_size: int = 0  # 0: the whole batch at once
    temperature: float = 1.0  # must equal the sampler's, so log-probs agree
    logprob_chunk_t: int = 512
    logprob_chunk_v: int = 16384
    old_logprobs: Literal["sampler", "recompute"] = "sampler"

    def __post_init__(self):
        require_at_least(self, 0, "micro_batch_size")
        require_at_least(self, 1, "logprob_chunk_t", "logprob_chunk_v")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
