"""`TrainStepConfig`: how the policy-gradient step is computed (the `train_step:` section of a recipe).

Kept apart from the jit-compiled step (rl/train_step.py) so that a recipe loads and is checked without JAX.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Literal

from envtune_jax.config import ConfigError, ReadOnlyWhen, check_field_use, require_at_least


@dataclasses.dataclass(frozen=True)
class TrainStepConfig:
    micro_batch_size: int = 0  # 0: the whole batch at once
    temperature: float = 1.0  # must equal the sampler's, so log-probs agree
    logprob_chunk_t: int = 512
    logprob_chunk_v: int = 16384
    old_logprobs: Literal["sampler", "recompute"] = "recompute"
    loss_weighting: Literal["batch", "per_micro_batch"] = "batch"
    weighting_micro_batch_rows: int = 0  # per_micro_batch only: rows per verl micro-batch
    # each GRPO group's prompt computed once (rl/prefix_packing.py): "mask" (one masked attention on the
    # model's back-end) or "two_level" (per block, log-sum-exp merge); "off": one row per trajectory
    shared_prefix: Literal["off", "mask", "two_level"] = "off"
    prefix_groups_per_row: int = 1  # groups packed in one shared-prefix row

    FIELD_USE: ClassVar[tuple[ReadOnlyWhen, ...]] = (
        ReadOnlyWhen(
            "weighting_micro_batch_rows",
            "only loss_weighting 'per_micro_batch' cuts the batch into weighting groups",
            lambda c: c.loss_weighting == "per_micro_batch",
        ),
        ReadOnlyWhen(
            "prefix_groups_per_row",
            "trajectories are not packed (shared_prefix is off)",
            lambda c: c.shared_prefix != "off",
        ),
    )

    def __post_init__(self) -> None:
        require_at_least(self, 0, "micro_batch_size", "weighting_micro_batch_rows")  # micro 0: the whole batch
        require_at_least(self, 1, "logprob_chunk_t", "logprob_chunk_v", "prefix_groups_per_row")
        if self.shared_prefix not in ("off", "mask", "two_level"):
            raise ValueError(f"shared_prefix must be off, mask or two_level, got {self.shared_prefix!r}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.loss_weighting == "per_micro_batch":
            rows, micro = self.weighting_micro_batch_rows, self.micro_batch_size
            if rows <= 0:
                raise ConfigError(
                    "loss_weighting 'per_micro_batch' needs weighting_micro_batch_rows > 0 (the rows of "
                    "one verl micro-batch, ppo_micro_batch_size_per_gpu)"
                )
            if micro and micro % rows:
                raise ConfigError(f"weighting_micro_batch_rows {rows} must divide micro_batch_size {micro}")
        check_field_use(self)
