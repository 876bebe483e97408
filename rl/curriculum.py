"""The staged curriculum: per-stage settings, the stage's budget, and the rule that decides when it is done.

A stage names its data subset, reward, augmentation switches, prompt variant, step cap per turn,
batch shape, rollout limits and budget (`StageConfig`, one YAML per stage in configs/). The budget is
stated in epochs over the stage's data (the paper trains up to 20 per stage); `max_steps` may cap it,
and `stage_budget` says which of the two binds. A stage ends when its budget is spent, or — with
`advance: plateau` — once validation accuracy has stopped improving for `patience` evaluations *and*
the gradient norm is stable (coefficient of variation over the last `grad_norm_window` steps below
`grad_norm_cv_max`); the decision and its reason are logged. `check_plateau_can_fire` rejects a
stage whose budget ends before the plateau rule could first fire.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from typing import ClassVar, Literal, Optional, Sequence

from envtune_jax.chat.chat_config import ChatConfig
from envtune_jax.config import ConfigError, ReadOnlyWhen, check_field_use, require_at_least
from envtune_jax.environments.config import EnvironmentConfig

DataSubset = Literal["stage1_easy", "base_train", "train", "validation"]

_PLATEAU_ONLY = "only advance.kind 'plateau' reads it"


@dataclasses.dataclass
class AdvanceRule:
    kind: Literal["fixed", "plateau"] = "fixed"
    patience: int = 3  # validation evaluations without improvement
    min_delta: float = 0.01  # an improvement smaller than this does not count
    grad_norm_window: int = 10
    grad_norm_cv_max: float = 0.5
    min_steps: int = 1

    FIELD_USE: ClassVar[tuple[ReadOnlyWhen, ...]] = tuple(
        ReadOnlyWhen(name, _PLATEAU_ONLY, lambda c: c.kind == "plateau")
        for name in ("patience", "min_delta", "grad_norm_window", "grad_norm_cv_max", "min_steps")
    )

    def __post_init__(self) -> None:
        require_at_least(self, 1, "patience", "grad_norm_window")
        require_at_least(self, 0, "min_delta", "min_steps")
        if not self.grad_norm_cv_max > 0:
            raise ValueError(f"grad_norm_cv_max must be > 0, got {self.grad_norm_cv_max}")
        check_field_use(self)


@dataclasses.dataclass
class StageRolloutLimits:
    """A stage's own rollout limits; None keeps the recipe's `rollout:` value
    (envtune_jax.rl.rollout_config.RolloutConfig)."""

    max_prompt_tokens: Optional[int] = None
    max_response_tokens: Optional[int] = None  # the paper: 10,000 in stage 1, 24,576 later
    max_context_tokens: Optional[int] = None
    max_new_tokens_per_step: Optional[int] = None

    FIELD_USE: ClassVar[tuple] = ()  # every limit set here replaces the recipe's

    def __post_init__(self) -> None:
        require_at_least(self, 1, *(field.name for field in dataclasses.fields(self)))  # None: unset

    def set_fields(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}


@dataclasses.dataclass
class StageConfig:
    name: str = "stage"
    data: DataSubset = "train"
    epochs: float = 20.0  # passes over the stage's data (the paper: up to 20 per stage)
    max_steps: Optional[int] = None  # optimizer steps; caps the epoch budget when smaller
    prompts_per_step: int = 32
    samples_per_prompt: int = 16
    validation_every: int = 10  # steps between validation runs (0: never)
    validation_entries: int = 0  # the first N entries of the validation subset; 0: all of it
    environment: EnvironmentConfig = dataclasses.field(default_factory=EnvironmentConfig)
    chat: ChatConfig = dataclasses.field(default_factory=ChatConfig)
    rollout: StageRolloutLimits = dataclasses.field(default_factory=StageRolloutLimits)
    advance: AdvanceRule = dataclasses.field(default_factory=AdvanceRule)
    export_hf: bool = True  # write HF safetensors when the stage ends

    FIELD_USE: ClassVar[tuple[ReadOnlyWhen, ...]] = (
        ReadOnlyWhen(
            "validation_entries", "the stage never validates (validation_every is 0)", lambda c: c.validation_every > 0
        ),
    )

    def __post_init__(self) -> None:
        if not self.epochs > 0:
            raise ConfigError(f"epochs must be > 0, got {self.epochs}")
        require_at_least(self, 1, "max_steps", "prompts_per_step")  # max_steps None: the epoch budget alone
        require_at_least(self, 0, "validation_every", "validation_entries")
        if self.samples_per_prompt < 2:
            raise ValueError(
                f"samples_per_prompt must be ≥ 2 (GRPO compares the samples of a prompt), got {self.samples_per_prompt}"
            )
        if self.advance.kind == "plateau" and self.validation_every == 0:
            raise ConfigError(
                "advance.kind 'plateau' needs validation (validation_every > 0): the rule watches validation accuracy"
            )
        check_field_use(self)


@dataclasses.dataclass(frozen=True)
class StageBudget:
    """How many optimizer steps a stage may take on `data_size` entries, and which setting decided it."""

    steps: int
    epoch_steps: int  # floor(epochs * data_size / prompts_per_step)
    data_size: int
    binding: Literal["epochs", "max_steps"]

    def epochs_covered(self, prompts_per_step: int) -> float:
        return self.steps * prompts_per_step / self.data_size


def stage_budget(stage: StageConfig, data_size: int) -> StageBudget:
    """The step budget: whole batches within `epochs` passes over the data, capped by `max_steps`."""
    if data_size < 1:
        raise ConfigError(f"stage {stage.name}: its data subset '{stage.data}' is empty")
    epoch_steps = max(1, math.floor(stage.epochs * data_size / stage.prompts_per_step + 1e-9))
    if stage.max_steps is not None and stage.max_steps < epoch_steps:
        return StageBudget(stage.max_steps, epoch_steps, data_size, "max_steps")
    return StageBudget(epoch_steps, epoch_steps, data_size, "epochs")


def plateau_first_step(stage: StageConfig) -> int:
    """The fewest optimizer steps after which the plateau rule can advance: `patience + 1` validation runs,
    a full gradient-norm window and `min_steps`."""
    rule = stage.advance
    return max(stage.validation_every * (rule.patience + 1), rule.grad_norm_window, rule.min_steps)


def check_plateau_can_fire(stage: StageConfig, budget: StageBudget) -> None:
    """ConfigError when the stage's budget is spent before its plateau rule could first advance it."""
    if stage.advance.kind != "plateau":
        return
    first = plateau_first_step(stage)
    if budget.steps <= first:
        setting = "max_steps" if budget.binding == "max_steps" else "epochs"
        raise ConfigError(
            f"stage {stage.name}: the plateau rule can first advance after {first} steps (validation_every "
            f"{stage.validation_every} x (patience {stage.advance.patience} + 1), grad_norm_window "
            f"{stage.advance.grad_norm_window}, min_steps {stage.advance.min_steps}) but the budget ({setting}) "
            f"ends the stage after {budget.steps}: raise {setting} or validate more often"
        )


@dataclasses.dataclass(frozen=True)
class AdvanceDecision:
    advance: bool
    reason: str


def decide_advance(
    stage: StageConfig,
    budget_steps: int,
    step_in_stage: int,
    validation_accuracy: Sequence[float],
    grad_norms: Sequence[float],
) -> AdvanceDecision:
    """Whether the stage is finished after `step_in_stage` of its `budget_steps` optimizer steps, with the reason."""
    rule = stage.advance
    if step_in_stage >= budget_steps:
        return AdvanceDecision(True, f"step budget reached ({budget_steps} steps)")
    if rule.kind == "fixed" or step_in_stage < rule.min_steps:
        return AdvanceDecision(False, f"step {step_in_stage}/{budget_steps}")
    if len(validation_accuracy) <= rule.patience:
        return AdvanceDecision(False, f"only {len(validation_accuracy)} validation runs so far")
    best_before = max(validation_accuracy[: -rule.patience])
    recent_best = max(validation_accuracy[-rule.patience :])
    if recent_best >= best_before + rule.min_delta:
        return AdvanceDecision(False, f"validation still improving ({best_before:.3f} → {recent_best:.3f})")
    window = list(grad_norms[-rule.grad_norm_window :])
    if len(window) < rule.grad_norm_window:
        return AdvanceDecision(False, "validation plateaued, waiting for a full gradient-norm window")
    mean = statistics.fmean(window)
    cv = statistics.pstdev(window) / mean if mean > 0 else float("inf")
    if cv > rule.grad_norm_cv_max:
        return AdvanceDecision(False, f"validation plateaued but gradient norm unstable (cv {cv:.2f})")
    return AdvanceDecision(
        True, f"validation plateaued at {recent_best:.3f} for {rule.patience} runs, gradient norm stable (cv {cv:.2f})"
    )
