"""`RunConfig`: everything a training run needs, one dataclass per concern, loaded from a recipe YAML.

A recipe (configs/recipes/*.yaml) names the model source, mesh, sampler, rollout limits, loss,
optimizer, train step, checkpointing and logging, and lists its stage files (paths relative to the
recipe). `stage_overrides` (key=value) apply to every stage, e.g. `max_steps=2` for a smoke run. A
stage's `rollout:` limits replace the recipe's (`stage_rollout`).

`load_run_config` validates the whole recipe before anything loads: every class's `FIELD_USE` table
(envtune_jax/config.py), the recipe-level table `RECIPE_FIELD_USE` (fields that only some stage setting
reads), each stage's budget against its plateau rule, and the context limit against the sampler's cache.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from pathlib import Path
from typing import Callable, ClassVar, Literal, Optional, Sequence

from envtune_jax.config import (
    ConfigError,
    IgnoredFieldError,
    ReadOnlyWhen,
    check_field_use,
    check_name,
    field_is_set,
    get_path,
    load,
    override_paths,
    require_at_least,
)
from envtune_jax.mesh import MeshConfig
from envtune_jax.models.config import PRESETS, AttentionImpl, DecodeAttention
from envtune_jax.models.dtype_rule import DTYPE_RULE, DTYPES
from envtune_jax.models.generation.config import SamplerConfig
from envtune_jax.rl.curriculum import StageBudget, StageConfig, check_plateau_can_fire, stage_budget
from envtune_jax.rl.optimizer_config import OptimizerConfig
from envtune_jax.rl.rl_config import LossConfig
from envtune_jax.rl.rollout_config import RolloutConfig
from envtune_jax.rl.stage_data import subset_size
from envtune_jax.rl.train_step_config import TrainStepConfig


@dataclasses.dataclass
class ModelSourceConfig:
    hf: Optional[str] = None  # HF checkpoint directory
    ckpt: Optional[str] = None  # envtune model checkpoint (from `envtune convert`)
    preset: Optional[str] = None  # random weights of a preset (tests, benchmarks, the demo)
    seed: int = 0
    # random weights: the bundled Qwen3 tokenizer cut to its first N BPE ranks (a small output layer)
    bpe_ranks: Optional[int] = None
    param_dtype: str = DTYPE_RULE["train"].param  # the trained copy: fp32 (bf16 weights do not move at lr 1e-6)
    dtype: str = DTYPE_RULE["train"].compute  # compute
    attention_impl: str = "reference"
    decode_attention: str = "reference"  # one-token rollout steps: "reference" einsum or "pallas" (GPU kernel)
    remat: str = "none"

    FIELD_USE: ClassVar[tuple[ReadOnlyWhen, ...]] = (
        ReadOnlyWhen(
            "seed", "only random weights (model.preset) are drawn from a seed", lambda c: c.preset is not None
        ),
        ReadOnlyWhen(
            "bpe_ranks",
            "only random weights (model.preset) take the bundled tokenizer; a checkpoint brings its own",
            lambda c: c.preset is not None,
        ),
    )

    def __post_init__(self) -> None:
        if self.preset is not None:
            check_name(PRESETS, self.preset, "preset")
        for name in ("param_dtype", "dtype"):
            if getattr(self, name) not in DTYPES:
                raise ValueError(f"{name} must be float32 or bfloat16, got {getattr(self, name)!r}")
        require_at_least(self, 256, "bpe_ranks")  # the single bytes at least
        check_name(typing.get_args(AttentionImpl), self.attention_impl, "attention_impl")
        check_name(typing.get_args(DecodeAttention), self.decode_attention, "decode_attention")
        check_field_use(self)


@dataclasses.dataclass
class DataConfig:
    source: Literal["tfds", "package"] = "tfds"  # "tfds" (array_record through as_data_source) or "package"
    data_dir: Optional[str] = None
    limit_per_category: Optional[int] = None  # smoke runs: first N entries per category of each subset
    validation_limit_per_category: Optional[int] = None
    shortest_prompts_first: bool = False  # with the limits: keep the entries whose first prompt is shortest

    FIELD_USE: ClassVar[tuple[ReadOnlyWhen, ...]] = (
        ReadOnlyWhen("data_dir", "only data.source 'tfds' reads a data directory", lambda c: c.source == "tfds"),
        ReadOnlyWhen(
            "shortest_prompts_first",
            "it only decides which entries a per-category limit keeps "
            "(set limit_per_category or validation_limit_per_category)",
            lambda c: c.limit_per_category is not None or c.validation_limit_per_category is not None,
        ),
    )

    def __post_init__(self) -> None:
        if self.source not in ("tfds", "package"):
            raise ValueError(f"source must be 'tfds' or 'package', got {self.source!r}")
        require_at_least(self, 1, "limit_per_category", "validation_limit_per_category")
        check_field_use(self)


@dataclasses.dataclass
class CheckpointConfig:
    every_steps: int = 10
    keep: int = 3
    async_save: bool = True

    FIELD_USE: ClassVar[tuple] = ()

    def __post_init__(self):
        require_at_least(self, 1, "every_steps", "keep")


@dataclasses.dataclass
class LoggingConfig:
    tensorboard: bool = True
    progress_bar: bool = True

    FIELD_USE: ClassVar[tuple] = ()


@dataclasses.dataclass
class RunConfig:
    run_dir: str = "runs/recipe"
    seed: int = 0
    model: ModelSourceConfig = dataclasses.field(default_factory=ModelSourceConfig)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
    sampler: SamplerConfig = dataclasses.field(default_factory=SamplerConfig)
    rollout: RolloutConfig = dataclasses.field(default_factory=RolloutConfig)
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    train_step: TrainStepConfig = dataclasses.field(default_factory=TrainStepConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
    logging: LoggingConfig = dataclasses.field(default_factory=LoggingConfig)
    stages: list[str] = dataclasses.field(default_factory=list)
    stage_overrides: list[str] = dataclasses.field(default_factory=list)

    FIELD_USE: ClassVar[tuple[ReadOnlyWhen, ...]] = (
        ReadOnlyWhen(
            "train_step.temperature",
            "a run's train step takes sampler.temperature (its log-probs must be the sampler's)",
            lambda c: False,
        ),
        ReadOnlyWhen(
            "sampler.max_new_tokens",
            "a run's step budget is rollout.max_new_tokens_per_step (a stage may set its own)",
            lambda c: False,
        ),
        ReadOnlyWhen(
            "rollout.decode_chunk",
            "only an engine that compacts rows (sampler.compact_rows: true) decodes in chunks",
            lambda c: c.sampler.compact_rows,
        ),
    )

    def __post_init__(self) -> None:
        check_field_use(self)


@dataclasses.dataclass(frozen=True)
class RecipeFieldUse:
    """A row of `RECIPE_FIELD_USE`: recipe field `field` is read only when `applies(run, stages)`."""

    field: str
    reason: str
    applies: Callable[[RunConfig, Sequence[StageConfig]], bool]


def _some_stage_keeps(limit: str) -> Callable[[RunConfig, Sequence[StageConfig]], bool]:
    return lambda run, stages: any(getattr(stage.rollout, limit) is None for stage in stages)


RECIPE_FIELD_USE: tuple[RecipeFieldUse, ...] = (
    RecipeFieldUse(
        "data.validation_limit_per_category",
        "no stage validates (validation_every is 0 in all)",
        lambda run, stages: any(stage.validation_every > 0 for stage in stages),
    ),
    *(
        RecipeFieldUse(f"rollout.{limit}", f"every stage sets its own rollout.{limit}", _some_stage_keeps(limit))
        for limit in ("max_prompt_tokens", "max_response_tokens", "max_context_tokens", "max_new_tokens_per_step")
    ),
)


def stage_rollout(run: RunConfig, stage: StageConfig) -> RolloutConfig:
    """The rollout limits in effect for `stage`: the recipe's, with the stage's own limits replacing them."""
    return dataclasses.replace(run.rollout, **stage.rollout.set_fields())


def stage_budgets(run: RunConfig, stages: Sequence[StageConfig]) -> list[StageBudget]:
    """Each stage's step budget on its subset's size (from the split rule, with the recipe's data limits)."""
    return [stage_budget(stage, subset_size(stage.data, run.data.limit_per_category)) for stage in stages]


def check_recipe(run: RunConfig, stages: Sequence[StageConfig], explicit: Sequence[str] = ()) -> None:
    """The checks that need the recipe and its stages together (ConfigError naming the setting)."""
    if not stages:
        raise ConfigError("the recipe lists no stages")
    names = [s.name for s in stages]
    if len(set(names)) != len(names):
        raise ConfigError(f"stage names must be unique, got {names}")
    for row in RECIPE_FIELD_USE:
        if field_is_set(run, row.field, explicit) and not row.applies(run, stages):
            raise IgnoredFieldError(row.field, get_path(run, row.field), row.reason)
    for stage, budget in zip(stages, stage_budgets(run, stages)):
        check_plateau_can_fire(stage, budget)
        limits = stage_rollout(run, stage)
        if limits.max_context_tokens > run.sampler.max_cache_len:
            raise ConfigError(
                f"stage {stage.name}: rollout.max_context_tokens {limits.max_context_tokens} exceeds "
                f"sampler.max_cache_len {run.sampler.max_cache_len}, which would be the real cap"
            )


def load_run_config(path: str | Path, overrides: Sequence[str] = ()) -> tuple[RunConfig, list[StageConfig]]:
    """The run config and its stages (each stage file + `stage_overrides`), validated together."""
    path = Path(path)
    cfg = load(RunConfig, path, overrides, path_fields=("stages",))
    if not cfg.stages:
        raise ConfigError(f"{path}: lists no stages")
    stages = []
    for stage_path in cfg.stages:
        full = Path(os.path.normpath(path.parent / stage_path))
        try:
            stages.append(load(StageConfig, full, cfg.stage_overrides))
        except ConfigError as exc:
            if str(exc).startswith("config file not found"):
                raise ConfigError(
                    f"{path}: stage file {stage_path} not found (stage paths are relative to the file that lists them)"
                ) from None
            with_overrides = f" with stage_overrides {cfg.stage_overrides}" if cfg.stage_overrides else ""
            raise ConfigError(f"{full}{with_overrides}: {exc}") from None
    try:
        check_recipe(cfg, stages, override_paths(overrides))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return cfg, stages
