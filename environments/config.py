"""EnvironmentConfig: how episodes are run and rewarded (step cap, reward kind, augmentation switches).

Loadable from YAML like every config (`envtune_jax.config.load(EnvironmentConfig, path, overrides)`).
Presets: `evaluation()` is the official protocol (20 tool steps per turn, no augmentation);
`training(augmented=...)` is the paper's (5 steps per turn, hints/feedback/warnings switchable per stage).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Literal, Optional

RewardKind = Literal["progress", "syntax", "binary"]
OFFICIAL_MAX_STEPS_PER_TURN = 20  # bfcl_eval.constants.default_prompts.MAXIMUM_STEP_LIMIT
TRAINING_MAX_STEPS_PER_TURN = 5


@dataclasses.dataclass
class EnvironmentConfig:
    # Tool-calling steps allowed per turn; one more force-quits the episode (official: 20). None: no cap
    # (used to replay recorded outputs, which the official evaluation scores without a cap).
    max_steps_per_turn: Optional[int] = OFFICIAL_MAX_STEPS_PER_TURN
    # Which reward EpisodeOutcome.reward carries: R_P ("progress"), stage-1 R1 ("syntax"), or 0/1 ("binary").
    reward: RewardKind = "progress"
    # Actionable hints appended to failing tool results (file system, travel, vehicle families).
    hints: bool = False
    # Format errors go back to the model as tool messages and the turn continues (off: the official
    # protocol, where a step without a decodable call ends the turn).
    format_feedback: bool = False
    # On turns whose ground truth is empty: calls are not executed, the turn ends (r_t = 0) and the next
    # user message starts with a system warning.
    empty_turn_warning: bool = False
    # Tools withheld until a later miss_func turn are callable (not offered) before it, as with the official
    # executor, which resolves every public method of the involved classes. The data needs it:
    # multi_turn_miss_func_49 expects `tail` in turn 1 although it is withheld until turn 3.
    execute_withheld_tools: bool = False
    # Wall-clock limit per tool call in seconds. Calls then run in a warm tool process that is killed and
    # replaced at the limit (the call becomes an error string without effect); None: no limit, calls run
    # in this process (envtune_jax.environments.hosted_backend).
    call_time_limit_s: Optional[float] = 5.0

    # Fields read only in some mode (envtune_jax.config.ReadOnlyWhen rows): none, every switch acts in every
    # reward mode and step cap.
    FIELD_USE: ClassVar[tuple] = ()

    def __post_init__(self) -> None:
        if self.max_steps_per_turn is not None and self.max_steps_per_turn < 1:
            raise ValueError(f"max_steps_per_turn must be >= 1 or None, got {self.max_steps_per_turn}")
        if self.reward not in ("progress", "syntax", "binary"):
            raise ValueError(f"reward must be 'progress', 'syntax' or 'binary', got {self.reward!r}")
        if self.call_time_limit_s is not None and self.call_time_limit_s <= 0:
            raise ValueError(f"call_time_limit_s must be positive or None, got {self.call_time_limit_s}")

    @property
    def augmented(self) -> bool:
        return self.hints or self.format_feedback or self.empty_turn_warning

    @classmethod
    def evaluation(cls) -> "EnvironmentConfig":
        """The official BFCL protocol: 20 tool steps per turn, no augmentation, official name resolution."""
        return cls(max_steps_per_turn=OFFICIAL_MAX_STEPS_PER_TURN, reward="binary", execute_withheld_tools=True)

    @classmethod
    def replay(cls) -> "EnvironmentConfig":
        """Scoring recorded outputs: the official evaluation applies no step cap."""
        return cls(max_steps_per_turn=None, reward="binary", execute_withheld_tools=True)

    @classmethod
    def training(cls, augmented: bool, reward: RewardKind = "progress") -> "EnvironmentConfig":
        """The paper's training protocol: 5 tool steps per turn; augmentation on in stages 2-3."""
        return cls(
            max_steps_per_turn=TRAINING_MAX_STEPS_PER_TURN,
            reward=reward,
            hints=augmented,
            format_feedback=augmented,
            empty_turn_warning=augmented,
        )
