"""A complete small learning run on the synthetic multi-turn tool task, on the real code path.

tiny random Qwen3 (real tokenizer) → format warm-up (rl/warmup.py) → GRPO iterations
(rollouts through the generation engine, chat protocol and environment; group advantages; the
sharded train step). Used by the learning test, the demo and the hints/progress-reward ablation.
"""
from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import Callable, Literal

import jax
from flax import nnx

from environments.config import EnvironmentConfig
from environments.synthetic import SyntheticConfig, SyntheticEpisode, make_synthetic_tasks
from envtune_jax.chat import default_tokenizer
from envtune_jax.chat.chat_config import ChatConfig
from models.config import Qwen3Config, preset
from models.generation.engine import GenerationEngine
from models.generation.sampling import SamplingParams
from models.qwen3 import init_model
from rl.grpo import PolicyLearner
from rl.metrics_log import MetricsWriter
from rl.optimizer import OptimizerConfig
from rl.rl_config import LossConfig
from rl.rollout import RolloutConfig
from rl.train_step import Trainer, TrainStepConfig
from rl.warmup import demos_batch, synthetic_format_demos


@dataclasses.dataclass
class SyntheticRunConfig:
    seed: int = 0
    num_tasks: int = 256
    num_turns: int = 2
    prompts_per_step: int = 8
    samples_per_prompt: int = 8
    warmup_steps: int = 40
    warmup_batch: int = 16
    warmup_learning_rate: float = 3e-3
    rl_steps: int = 60
    learning_rate: float = 2e-3
    kl_coef: float = 0.0
    entropy_coef: float = 0.0
    hints: bool = True
    reward: Literal["progress", "binary"] = "progress"
    max_new_tokens: int = 8
    temperature: float = 1.0
    model_preset: str = "tiny"


def run_synthetic(cfg: SyntheticRunConfig, out_dir: str | Path | None = None,
                  on_step: Callable[[int, dict], None] | None = None) -> list[dict]:
    """Runs warm-up then GRPO; returns one metrics dict per RL iteration (also JSONL in out_dir)."""
    tokenizer = default_tokenizer()
    chat = ChatConfig()
    task_cfg = SyntheticConfig(num_turns=cfg.num_turns)
    env_cfg = dataclasses.replace(EnvironmentConfig.training(augmented=cfg.hints), reward=cfg.reward)
    tasks = make_synthetic_tasks(cfg.num_tasks, task_cfg, seed=cfg.seed)
    model_cfg: Qwen3Config = preset(cfg.model_preset)
    model = init_model(model_cfg, seed=cfg.seed)
    loss_cfg = LossConfig(kl_coef=cfg.kl_coef, entropy_coef=cfg.entropy_coef)
    graphdef, _ = nnx.split(model, nnx.Param)
    batch_size = cfg.prompts_per_step * cfg.samples_per_prompt
    engine = GenerationEngine(model, batch_size=batch_size, max_cache_len=1024, cache_dtype="float32")
    writer = MetricsWriter(out_dir, tensorboard=False) if out_dir is not None else None

    warm = Trainer(graphdef, loss_cfg, OptimizerConfig(learning_rate=cfg.warmup_learning_rate, weight_decay=0.0), TrainStepConfig())
    learner = PolicyLearner(model, engine, warm, tokenizer, loss_cfg)
    rng = random.Random(cfg.seed)
    for step in range(cfg.warmup_steps):
        picked = [tasks[rng.randrange(len(tasks))] for _ in range(cfg.warmup_batch)]
        demos = synthetic_format_demos([SyntheticEpisode(t, task_cfg, env_cfg) for t in picked], tokenizer, chat,
                                       task_cfg, seed=cfg.seed * 100003 + step)
        learner.state, _ = warm.supervised_step(learner.state, demos_batch(demos))
    nnx.update(model, learner.state.params)

    trainer = Trainer(graphdef, loss_cfg, OptimizerConfig(learning_rate=cfg.learning_rate, weight_decay=0.0),
                      TrainStepConfig(temperature=cfg.temperature))
    learner = PolicyLearner(model, engine, trainer, tokenizer, loss_cfg)
    sampling = SamplingParams(temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens)
    rollout_cfg = RolloutConfig(max_new_tokens_per_step=cfg.max_new_tokens, max_response_tokens=512)
    history = []
    key = jax.random.key(cfg.seed)
    for step in range(cfg.rl_steps):
        picked = [tasks[rng.randrange(len(tasks))] for _ in range(cfg.prompts_per_step)]
        groups = [[SyntheticEpisode(t, task_cfg, env_cfg) for _ in range(cfg.samples_per_prompt)] for t in picked]
        metrics, _ = learner.iterate(groups, chat, sampling, rollout_cfg, jax.random.fold_in(key, step))
        record = {"step": step, **metrics}
        history.append(record)
        if writer is not None:
            writer.write(step, metrics)
        if on_step is not None:
            on_step(step, record)
    if writer is not None:
        writer.close()
    return history
