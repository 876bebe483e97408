"""The one GRPO loop: `envtune train`'s curriculum, the synthetic learning run and `envtune bench rollout` all
run their iterations through `run_grpo`, with other hooks and other data.

`run_grpo(learner, steps, groups_for, settings, key, hooks, on_phase)`: for each index of `steps` (the
caller's schedule: a range, a list, or a generator that stops when the curriculum advances), every hook's
`before_step`, then `groups_for(step)` (the data: G episodes of each prompt), one `PolicyLearner.iterate`
(rollouts, advantages, one optimizer step) with the key `fold_in(key, step)`, the timing (`step_s`, and the
engine's and train step's compilations so far), then every hook's `after_step` in order: a hook may add to
the metrics that the hooks after it (the log, the bar) see. What a run adds is a hook: validation and
periodic checkpoints (the trainer's), a metrics log (`MetricsLog`), a progress bar (`ProgressBar`), a
per-step callback (`EachStep`), profiling (the benchmark's).

`build_learner` makes the PolicyLearner every GRPO run uses (tokenizer checked against the model and the
sampler's stop ids, trainer, engine); `stage_settings` what one stage's iterations use.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, Iterable, Sequence

import jax
from flax import nnx

from envtune_jax import config as config_lib
from envtune_jax.chat.chat_config import ChatConfig
from envtune_jax.chat.tokenizer import check_tokenizer_fits_model, stop_token_ids
from envtune_jax.environments.base import ToolEnvironment
from envtune_jax.models.generation.sampling import SamplingParams
from envtune_jax.progress import OnPhase, PhaseDisplay
from envtune_jax.rl.curriculum import StageConfig
from envtune_jax.rl.grpo import PolicyLearner
from envtune_jax.rl.metrics_log import MetricsWriter
from envtune_jax.rl.model_loader import LoadedModel
from envtune_jax.rl.rollout import RolloutConfig, Trajectory
from envtune_jax.rl.run_config import RunConfig, stage_rollout
from envtune_jax.rl.train_step import Trainer

Groups = Sequence[Sequence[ToolEnvironment]]  # G episodes of each prompt


@dataclasses.dataclass(frozen=True)
class StepSettings:
    """What every iteration of a stage uses: the chat template, the sampler and the rollout limits."""

    chat: ChatConfig
    sampling: SamplingParams
    rollout: RolloutConfig


class GrpoHook:
    """What a run adds around its iterations; both methods are optional."""

    def before_step(self, step: int) -> None:
        """Before the step's data is drawn."""

    def after_step(self, step: int, metrics: dict, trajectories: list[Trajectory]) -> None:
        """After the optimizer step; `metrics` may be added to."""


def run_grpo(
    learner: PolicyLearner,
    steps: Iterable[int],
    groups_for: Callable[[int], Groups],
    settings: StepSettings,
    key: jax.Array,
    hooks: Sequence[GrpoHook] = (),
    on_phase: OnPhase | None = None,
) -> int:
    """Runs one GRPO iteration per index of `steps`; returns how many ran."""
    done = 0
    for step in steps:
        for hook in hooks:
            hook.before_step(step)
        groups = groups_for(step)
        start = time.perf_counter()
        metrics, trajectories = learner.iterate(
            groups, settings.chat, settings.sampling, settings.rollout, jax.random.fold_in(key, step), on_phase=on_phase
        )
        metrics.update(
            step_s=time.perf_counter() - start,
            engine_compilations=learner.engine.num_compilations,
            train_compilations=learner.trainer.compiled_variants(),
        )
        for hook in hooks:
            hook.after_step(step, metrics, trajectories)
        done += 1
    return done


class MetricsLog(GrpoHook):
    """Writes each iteration's metrics as the line of step `step + 1` (the optimizer steps taken) of `writer`."""

    def __init__(self, writer: MetricsWriter):
        self.writer = writer

    def after_step(self, step: int, metrics: dict, trajectories: list[Trajectory]) -> None:
        self.writer.write(step + 1, metrics)


class ProgressBar(GrpoHook):
    """Advances a tqdm bar per iteration; its phase display keeps the last reward and loss in front."""

    def __init__(self, bar, display: PhaseDisplay):
        self.bar, self.display = bar, display

    def after_step(self, step: int, metrics: dict, trajectories: list[Trajectory]) -> None:
        self.bar.update(1)
        self.display.prefix = f"reward {metrics['reward_mean']:.3f} loss {metrics['loss']:+.4f} | "


class EachStep(GrpoHook):
    """Calls `callback(step, record)` after each iteration, record = {"step": step + 1, **metrics}."""

    def __init__(self, callback: Callable[[int, dict], None]):
        self.callback = callback

    def after_step(self, step: int, metrics: dict, trajectories: list[Trajectory]) -> None:
        self.callback(step, {"step": step + 1, **metrics})


def check_tokenizer(tokenizer, model_vocab_size: int, sampler_stop_ids) -> None:
    """Clear errors before any rollout: a tokenizer from another model (ids the embedding lacks, no chat
    tokens), or sampler stop ids that miss this tokenizer's <|im_end|> (episodes would never end a step)."""
    check_tokenizer_fits_model(tokenizer, model_vocab_size)
    im_end, end_of_text = stop_token_ids(tokenizer)
    if im_end not in tuple(sampler_stop_ids):
        raise config_lib.ConfigError(
            f"sampler.stop_token_ids {list(sampler_stop_ids)} lack this tokenizer's <|im_end|> id {im_end}; "
            f"set sampler.stop_token_ids=[{im_end},{end_of_text}]"
        )


def build_learner(cfg: RunConfig, loaded: LoadedModel, mesh) -> PolicyLearner:
    """The run's PolicyLearner around the loaded model: its tokenizer (checked against the model and the
    sampler's stop ids), the trainer of cfg's loss, optimizer and train step at the sampler's temperature,
    and the generation engine of cfg's sampler on `mesh`."""
    model, tokenizer = loaded.model, loaded.tokenizer
    check_tokenizer(tokenizer, model.config.vocab_size, cfg.sampler.stop_token_ids)
    graphdef, _ = nnx.split(model, nnx.Param)
    trainer = Trainer(
        graphdef, cfg.loss, cfg.optimizer, dataclasses.replace(cfg.train_step, temperature=cfg.sampler.temperature)
    )
    return PolicyLearner(model, cfg.sampler.build_engine(model, mesh), trainer, tokenizer, cfg.loss)


def stage_sampling(cfg: RunConfig, stage: StageConfig) -> SamplingParams:
    """The sampler's settings with the stage's per-step token budget."""
    return dataclasses.replace(
        cfg.sampler.sampling_params(), max_new_tokens=stage_rollout(cfg, stage).max_new_tokens_per_step
    )


def stage_settings(cfg: RunConfig, stage: StageConfig) -> StepSettings:
    """What the iterations of `stage` use: its chat template, the sampler with its step budget, its limits."""
    return StepSettings(stage.chat, stage_sampling(cfg, stage), stage_rollout(cfg, stage))
