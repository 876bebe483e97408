"""The staged curriculum: per-stage settings and the rule that decides when a stage is done.

A stage names its data subset, reward, augmentation switches, prompt variant, step cap per turn,
batch shape and lengths (`StageConfig`, one YAML per stage in configs/). A stage ends after a fixed
number of optimizer steps, or — with `advance: plateau` — once validation accuracy has stopped
improving for `patience` evaluations *and* the gradient norm is stable (coefficient of variation over
the last `grad_norm_window` steps below `grad_norm_cv_max`); the decision and its reason are logged.
"""
from __future__ import annotations

import dataclasses
import statistics
from typing import Literal, Sequence

from environments.config import EnvironmentConfig
from envtune_jax.chat.chat_config import ChatConfig
from envtune_jax.config import require_at_least

DataSubset = Literal["stage1_easy", "base_train", "train", "validation", "synthetic"]


@dataclasses.dataclass
class AdvanceRule:
    kind: Literal["fixed", "plateau"] = "fixed"
    patience: int = 3  # validation evaluations without improvement
    min_delta: float = 0.01  # an improvement smaller than this does not count
    grad_norm_window: int = 10
    grad_norm_cv_max: float = 0.5
    min_steps: int = 1

    def __post_init__(self):
        require_at_least(self, 1, "patience", "grad_norm_window")
        require_at_least(self, 0, "min_delta", "min_steps")
        if not self.grad_norm_cv_max > 0:
            raise ValueError(f"grad_norm_cv_max must be > 0, got {self.grad_norm_cv_max}")


@dataclasses.dataclass
class StageConfig:
    name: str = "stage"
    data: DataSubset = "train"
    max_steps: int = 100  # optimizer steps (the hard budget, also under the plateau rule)
    prompts_per_step: int = 32
    samples_per_prompt: int = 16
    validation_every: int = 10  # steps between validation runs (0: never)
    validation_entries: int = 0  # 0: the whole validation subset
    environment: EnvironmentConfig = dataclasses.field(default_factory=EnvironmentConfig)
    chat: ChatConfig = dataclasses.field(default_factory=ChatConfig)
    advance: AdvanceRule = dataclasses.field(default_factory=AdvanceRule)
    export_hf: bool = True  # write HF safetensors when the stage ends

    def __post_init__(self):
        require_at_least(self, 1, "max_steps", "prompts_per_step")
        require_at_least(self, 0, "validation_every", "validation_entries")
        if self.samples_per_prompt < 2:
            raise ValueError(f"samples_per_prompt must be ≥ 2 (GRPO compares the samples of a prompt), "
                             f"got {self.samples_per_prompt}")


@dataclasses.dataclass(frozen=True)
class AdvanceDecision:
    advance: bool
    reason: str


def decide_advance(stage: StageConfig, step_in_stage: int, validation_accuracy: Sequence[float],
                   grad_norms: Sequence[float]) -> AdvanceDecision:
    """Whether the stage is finished after `step_in_stage` optimizer steps, with the reason."""
    rule = stage.advance
    if step_in_stage >= stage.max_steps:
        return AdvanceDecision(True, f"step budget reached ({stage.max_steps} steps)")
    if rule.kind == "fixed" or step_in_stage < rule.min_steps:
        return AdvanceDecision(False, f"step {step_in_stage}/{stage.max_steps}")
    if len(validation_accuracy) <= rule.patience:
        return AdvanceDecision(False, f"only {len(validation_accuracy)} validation runs so far")
    best_before = max(validation_accuracy[:-rule.patience])
    recent_best = max(validation_accuracy[-rule.patience:])
    if recent_best >= best_before + rule.min_delta:
        return AdvanceDecision(False, f"validation still improving ({best_before:.3f} → {recent_best:.3f})")
    window = list(grad_norms[-rule.grad_norm_window:])
    if len(window) < rule.grad_norm_window:
        return AdvanceDecision(False, "validation plateaued, waiting for a full gradient-norm window")
    mean = statistics.fmean(window)
    cv = statistics.pstdev(window) / mean if mean > 0 else float("inf")
    if cv > rule.grad_norm_cv_max:
        return AdvanceDecision(False, f"validation plateaued but gradient norm unstable (cv {cv:.2f})")
    return AdvanceDecision(True, f"validation plateaued at {recent_best:.3f} for {rule.patience} runs, "
                                 f"gradient norm stable (cv {cv:.2f})")
