"""`SyntheticRecipe`: the synthetic learning run's settings, a training recipe plus what only it has.

`run` (a RunConfig: model, sampler, rollout limits, loss, optimizer, train step, logging) and `stage` (a
StageConfig: prompts and samples per step, `max_steps` iterations, environment, chat) mean what they mean for
`envtune train`; `tasks` (how many synthetic tasks, turns, how the devices are described) and `warmup` (the
supervised warm-up on partly right demonstrations, rl/warmup.py) are the run's own. The defaults are
configs/synthetic/learning_run.yaml (`load_synthetic_recipe`); a field the run does not read (the BFCL data,
checkpoints, validation, the stage's epochs or advance rule, ...) is an error, as in every config.
JAX-free.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import ClassVar, Literal, Sequence

from envtune_jax.config import ConfigError, ReadOnlyWhen, check_field_use, load, require_at_least
from envtune_jax.environments.synthetic import SyntheticConfig
from envtune_jax.rl.curriculum import StageConfig
from envtune_jax.rl.run_config import RunConfig, stage_rollout

SYNTHETIC_RECIPE = Path(__file__).resolve().parents[1] / "configs" / "synthetic" / "learning_run.yaml"

# Four settings per device; every device name (at the start of a reply) and every " value" is one token
# of the cut tokenizer, so a call is two tokens. A policy that knows the device but guesses the value is
# right on 1/4 of the turns.
FOUR_VALUE_DEVICES = (
    ("light", ("red", "green", "blue", "white")),
    ("window", ("open", "close", "half", "lock")),
    ("screen", ("dim", "dark", "normal", "full")),
)


@dataclasses.dataclass
class SyntheticTasksConfig:
    count: int = 256  # tasks drawn once from the seed; each step samples its prompts from them
    num_turns: int = 2
    doc_style: Literal["schema", "short", "system", "none"] = (
        "none"  # envtune_jax.environments.synthetic.SyntheticConfig
    )

    FIELD_USE: ClassVar[tuple] = ()

    def __post_init__(self) -> None:
        require_at_least(self, 1, "count", "num_turns")
        self.task_config()

    def task_config(self) -> SyntheticConfig:
        return SyntheticConfig(devices=FOUR_VALUE_DEVICES, num_turns=self.num_turns, doc_style=self.doc_style)


@dataclasses.dataclass
class WarmupConfig:
    """The supervised warm-up (rl/warmup.py) on partly right demonstrations, before GRPO."""

    steps: int = 240  # to nll ~0.23 (the demonstrations' own entropy is ~0.2); 80 steps left 0.55
    batch: int = 16
    learning_rate: float = 1e-2  # with the run's optimizer otherwise (Adam eps, no weight decay)
    device_accuracy: float = 1.0  # demonstrated turns that call the requested device
    value_accuracy: float = 1.0  # ... and set it to the requested value (else a random value of it)
    syntax_accuracy: float = (
        0.05  # demonstrated calls spelt as the parser accepts (else envtune_jax.rl.warmup.MISSPELT_CALLS)
    )
    attempts: int = 2  # attempts per demonstrated turn when format feedback answers a misspelt call

    FIELD_USE: ClassVar[tuple[ReadOnlyWhen, ...]] = tuple(
        ReadOnlyWhen(name, "there is no warm-up (steps is 0)", lambda c: c.steps > 0)
        for name in ("batch", "learning_rate", "device_accuracy", "value_accuracy", "syntax_accuracy", "attempts")
    )

    def __post_init__(self) -> None:
        require_at_least(self, 0, "steps")
        require_at_least(self, 1, "batch", "attempts")
        for name in ("device_accuracy", "value_accuracy", "syntax_accuracy"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} must lie in [0, 1], got {getattr(self, name)}")
        check_field_use(self)


_NOT_READ = (
    ("run.run_dir", "the synthetic run writes into the folder it is given (out_dir)"),
    ("run.data", "the synthetic run draws its own tasks (tasks: ...), not BFCL entries"),
    ("run.checkpoint", "the synthetic run keeps no checkpoints"),
    ("run.stages", "the synthetic run's one stage is its stage: section"),
    ("run.stage_overrides", "the synthetic run's one stage is its stage: section"),
    ("run.logging.progress_bar", "the synthetic run reports each step through its callback"),
    ("stage.data", "the synthetic run draws its own tasks (tasks: ...)"),
    ("stage.epochs", "the synthetic run takes stage.max_steps iterations"),
    ("stage.export_hf", "the synthetic run exports nothing"),
)


@dataclasses.dataclass
class SyntheticRecipe:
    run: RunConfig = dataclasses.field(default_factory=RunConfig)
    stage: StageConfig = dataclasses.field(default_factory=StageConfig)
    tasks: SyntheticTasksConfig = dataclasses.field(default_factory=SyntheticTasksConfig)
    warmup: WarmupConfig = dataclasses.field(default_factory=WarmupConfig)

    FIELD_USE: ClassVar[tuple[ReadOnlyWhen, ...]] = tuple(
        ReadOnlyWhen(name, reason, lambda c: False) for name, reason in _NOT_READ
    )

    def __post_init__(self) -> None:
        # (stage.advance needs no row: any setting of it but kind is ignored under 'fixed', and 'plateau' needs
        # validation, which is refused below)
        if self.stage.max_steps is None:
            raise ConfigError("stage.max_steps: the synthetic run needs its number of GRPO iterations")
        if self.stage.validation_every:
            raise ConfigError(
                f"stage.validation_every={self.stage.validation_every}: the synthetic run does not "
                "validate (set it to 0)"
            )
        limits = stage_rollout(self.run, self.stage)
        if limits.max_context_tokens > self.run.sampler.max_cache_len:
            raise ConfigError(
                f"run.rollout.max_context_tokens {limits.max_context_tokens} exceeds "
                f"run.sampler.max_cache_len {self.run.sampler.max_cache_len}, which would be the real cap"
            )
        check_field_use(self)


def load_synthetic_recipe(overrides: Sequence[str] = (), path: str | Path = SYNTHETIC_RECIPE) -> SyntheticRecipe:
    """The synthetic run's settings: `path` (default: configs/synthetic/learning_run.yaml) with `key=value`
    overrides, e.g. `stage.max_steps=10` or `stage.environment.hints=false`."""
    return load(SyntheticRecipe, path, overrides)
