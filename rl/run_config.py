"""`RunConfig`: everything a training run needs, one dataclass per concern, loaded from a recipe YAML.

A recipe (configs/recipes/*.yaml) names the model source, mesh, sampler, rollout budgets, loss,
optimizer, train step, checkpointing and logging, and lists its stage files (paths relative to the
recipe). `stage_overrides` (key=value) apply to every stage, e.g. `max_steps=2` for a smoke run.
"""
from __future__ import annotations

import dataclasses
import os
import typing
from pathlib import Path
from typing import Optional

from envtune_jax.config import ConfigError, check_name, load, require_at_least
from envtune_jax.mesh import MeshConfig
from models.config import PRESETS, AttentionImpl, DecodeAttention
from models.generation.config import SamplerConfig
from rl.curriculum import StageConfig
from rl.optimizer_config import OptimizerConfig
from rl.rl_config import LossConfig
from rl.rollout_config import RolloutConfig
from rl.train_step_config import TrainStepConfig


@dataclasses.dataclass
class ModelSourceConfig:
    hf: Optional[str] = None  # HF checkpoint directory
    ckpt: Optional[str] = None  # envtune model checkpoint (from `envtune convert`)
    preset: Optional[str] = None  # random weights of a preset (tests, benchmarks, the demo)
    seed: int = 0
    param_dtype: str = "float32"  # the trained copy: fp32 (bf16 weights do not move at lr 1e-6)
    dtype: str = "bfloat16"  # compute
    attention_impl: str = "reference"
    decode_attention: str = "reference"  # one-token rollout steps: "reference" einsum or "pallas" (GPU kernel)
    remat: str = "none"

    def __post_init__(self):
        if self.preset is not None:
            check_name(PRESETS, self.preset, "preset")
        for name in ("param_dtype", "dtype"):
            if getattr(self, name) not in ("float32", "bfloat16"):
                raise ValueError(f"{name} must be float32 or bfloat16, got {getattr(self, name)!r}")
        check_name(typing.get_args(AttentionImpl), self.attention_impl, "attention_impl")
        check_name(typing.get_args(DecodeAttention), self.decode_attention, "decode_attention")


@dataclasses.dataclass
class DataConfig:
    source: str = "tfds"  # "tfds" (array_record through as_data_source) or "package"
    data_dir: Optional[str] = None
    limit_per_category: Optional[int] = None  # smoke runs: first N entries per category of each subset
    validation_limit_per_category: Optional[int] = None
    shortest_prompts_first: bool = False  # with the limits: keep the entries whose first prompt is shortest

    def __post_init__(self):
        if self.source not in ("tfds", "package"):
            raise ValueError(f"source must be 'tfds' or 'package', got {self.source!r}")
        require_at_least(self, 1, "limit_per_category", "validation_limit_per_category")


@dataclasses.dataclass
class CheckpointConfig:
    every_steps: int = 10
    keep: int = 3
    async_save: bool = True

    def __post_init__(self):
        require_at_least(self, 1, "every_steps", "keep")


@dataclasses.dataclass
class LoggingConfig:
    tensorboard: bool = True
    progress_bar: bool = True


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


def load_run_config(path: str | Path, overrides: list[str] = ()) -> tuple[RunConfig, list[StageConfig]]:
    """The run config and its stages (each stage file + `stage_overrides`), validated."""
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
                raise ConfigError(f"{path}: stage file {stage_path} not found (stage paths are relative to the "
                                  f"file that lists them)") from None
            with_overrides = f" with stage_overrides {cfg.stage_overrides}" if cfg.stage_overrides else ""
            raise ConfigError(f"{full}{with_overrides}: {exc}") from None
    names = [s.name for s in stages]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: stage names must be unique, got {names}")
    return cfg, stages
