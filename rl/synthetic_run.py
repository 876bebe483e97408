"""A complete small learning run on the synthetic multi-turn tool task, on the real code path.

The settings are a training recipe plus the run's own tasks and warm-up (`SyntheticRecipe`,
configs/synthetic/learning_run.yaml). The model loads as every model does (rl/model_loader.py: the
`tiny-8k` preset's random weights and Qwen's BPE cut to its first 8,192 ranks: the real tokenizer and chat
format, with an 8,320-row output layer instead of 151,936, so a warm-up step is cheap on CPU), is warmed up on
partly right demonstrations (rl/warmup.py: right call, mostly misspelt), then trained by the one GRPO loop
of `envtune train` (rl/grpo_loop.py: the same learner, engine, rollouts and train step) on synthetic
episodes instead of BFCL entries, with a metrics log and a per-step callback as its hooks. With the defaults
(seed 0) the mean reward is at most 0.2 over the first two iterations and at least 0.8 over the last five
(tests/rl/test_rl_learning.py checks both); the measured curves and the hints / progress-reward ablation over
3 seeds are in docs/training.md, "Synthetic learning run". Used by the demo and benchmarks/synthetic_learning.py.
"""

from __future__ import annotations

import dataclasses
import random
import time
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx
from tqdm.auto import tqdm

from envtune_jax.chat.chat_config import ChatConfig
from envtune_jax.environments.config import EnvironmentConfig
from envtune_jax.environments.synthetic import SyntheticEpisode, make_synthetic_tasks
from envtune_jax.mesh import make_mesh
from envtune_jax.models.config import PRESETS
from envtune_jax.rl.grpo_loop import EachStep, MetricsLog, build_learner, run_grpo, stage_settings
from envtune_jax.rl.metrics_log import MetricsWriter
from envtune_jax.rl.model_loader import LoadedModel, load_run_model
from envtune_jax.rl.rl_config import LossConfig
from envtune_jax.rl.synthetic_config import FOUR_VALUE_DEVICES, SyntheticRecipe, load_synthetic_recipe
from envtune_jax.rl.train_step import Trainer, TrainStepConfig
from envtune_jax.rl.warmup import demos_batch, weak_prior_demos

__all__ = [
    "FOUR_VALUE_DEVICES",
    "SYNTHETIC_BPE_TOKENS",
    "TINY_SYNTHETIC_MODEL",
    "SyntheticRecipe",
    "load_synthetic_recipe",
    "warm_up",
    "grpo",
    "run_synthetic",
]

SYNTHETIC_BPE_TOKENS = 8192  # the recipe's model.bpe_ranks
TINY_SYNTHETIC_MODEL = PRESETS["tiny-8k"]  # the recipe's model.preset


@dataclasses.dataclass
class SyntheticRunResult:
    history: list[dict]  # one record per GRPO iteration: {"step": optimizer steps taken, **metrics}
    warmup: dict  # final warm-up nll, wall time
    total_s: float
    engine_compilations: int
    train_compilations: int  # compiled variants of the GRPO train step (one per batch shape)


@dataclasses.dataclass
class WarmedUp:
    """A model after the warm-up, with what the GRPO phase needs to start from it (any number of times)."""

    loaded: LoadedModel  # the model (warmed up) and its tokenizer
    params: nnx.State  # the warmed-up weights (GRPO runs start from a copy)
    tasks: list
    info: dict  # final warm-up nll, wall time


def _mesh(recipe: SyntheticRecipe):
    return make_mesh(recipe.run.mesh) if len(jax.devices()) > 1 else None


def warm_up(recipe: SyntheticRecipe, progress: bool = False) -> WarmedUp:
    """The recipe's model trained on partly-right demonstrations (rl/warmup.py) with the run's optimizer at
    the warm-up's learning rate. The demonstrations are played with format feedback on whatever the GRPO
    environment, so every GRPO variant starts from the same weights. `progress` shows a console bar (the
    default warm-up takes minutes on CPU)."""
    start = time.perf_counter()
    run, warmup = recipe.run, recipe.warmup
    loaded = load_run_model(run.model, _mesh(recipe))
    tokenizer, chat, task_cfg = loaded.tokenizer, ChatConfig(), recipe.tasks.task_config()
    demo_env = EnvironmentConfig.training(augmented=True)
    tasks = make_synthetic_tasks(recipe.tasks.count, task_cfg, seed=run.seed)
    graphdef, params = nnx.split(loaded.model, nnx.Param)
    trainer = Trainer(
        graphdef,
        LossConfig(kl_coef=0.0, entropy_coef=0.0),
        dataclasses.replace(run.optimizer, learning_rate=warmup.learning_rate),
        TrainStepConfig(),
    )
    state = trainer.init(params)
    rng = random.Random(run.seed)
    metrics = {}
    bar = tqdm(total=warmup.steps, desc="warm-up", unit="step", disable=not progress)
    for _ in range(warmup.steps):
        episodes = [SyntheticEpisode(tasks[rng.randrange(len(tasks))], task_cfg, demo_env) for _ in range(warmup.batch)]
        demos = weak_prior_demos(
            episodes,
            tokenizer,
            chat,
            warmup.device_accuracy,
            warmup.value_accuracy,
            rng,
            syntax_accuracy=warmup.syntax_accuracy,
            max_attempts=warmup.attempts,
        )
        state, metrics = trainer.supervised_step(state, demos_batch(demos))
        if progress:  # wait for the step, so the bar shows real progress (steps are dispatched asynchronously)
            jax.block_until_ready(metrics)
        bar.update(1)
        if bar.n % 20 == 0:
            bar.set_postfix(nll=f"{float(metrics['nll']):.3f}")
    bar.close()
    nnx.update(loaded.model, state.params)
    info = {"nll": float(metrics.get("nll", float("nan"))), "seconds": time.perf_counter() - start}
    return WarmedUp(loaded, jax.tree.map(jnp.copy, state.params), tasks, info)


def grpo(
    recipe: SyntheticRecipe,
    warmed: WarmedUp,
    out_dir: str | Path | None = None,
    on_step: Callable[[int, dict], None] | None = None,
) -> SyntheticRunResult:
    """`recipe.stage.max_steps` GRPO iterations from the warmed-up weights (reset to them first), in the
    stage's environment (hints on/off, reward kind); metrics to `out_dir`/metrics.jsonl, and
    `on_step(i, record)` after iteration i. The task draws and sampling keys depend only on run.seed."""
    start = time.perf_counter()
    run, stage = recipe.run, recipe.stage
    task_cfg, tasks = recipe.tasks.task_config(), warmed.tasks
    nnx.update(warmed.loaded.model, jax.tree.map(jnp.copy, warmed.params))
    learner = build_learner(run, warmed.loaded, _mesh(recipe))
    rng = random.Random(run.seed + 1)

    def groups_for(step: int):
        picked = [tasks[rng.randrange(len(tasks))] for _ in range(stage.prompts_per_step)]
        return [
            [SyntheticEpisode(t, task_cfg, stage.environment) for _ in range(stage.samples_per_prompt)] for t in picked
        ]

    history: list[dict] = []
    hooks = [EachStep(lambda step, record: history.append(record))]
    writer = MetricsWriter(out_dir, tensorboard=run.logging.tensorboard) if out_dir is not None else None
    if writer is not None:
        hooks.append(MetricsLog(writer))
    if on_step is not None:
        hooks.append(EachStep(on_step))
    try:
        run_grpo(
            learner, range(stage.max_steps), groups_for, stage_settings(run, stage), jax.random.key(run.seed), hooks
        )
    finally:
        if writer is not None:
            writer.close()
    return SyntheticRunResult(
        history,
        warmed.info,
        time.perf_counter() - start,
        learner.engine.num_compilations,
        learner.trainer.compiled_variants(),
    )


def run_synthetic(
    recipe: SyntheticRecipe | None = None,
    out_dir: str | Path | None = None,
    on_step: Callable[[int, dict], None] | None = None,
    progress: bool = False,
) -> SyntheticRunResult:
    """Warm-up (with a console bar if `progress`) then GRPO with `recipe` (default: load_synthetic_recipe());
    returns the per-iteration metrics (also JSONL in out_dir)."""
    recipe = recipe if recipe is not None else load_synthetic_recipe()
    start = time.perf_counter()
    result = grpo(recipe, warm_up(recipe, progress), out_dir, on_step)
    return dataclasses.replace(result, total_s=time.perf_counter() - start)
