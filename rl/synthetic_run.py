"""A complete small learning run on the synthetic multi-turn tool task, on the real code path.

tiny random Qwen3 with Qwen's BPE cut to its first 8,192 ranks (`compact_qwen_tokenizer`: the real
tokenizer and chat format, an 8,320-row output layer instead of 151,936, ~6x cheaper warm-up steps on
CPU) → warm-up on partly right demonstrations (rl/warmup.py: right call, mostly misspelt) → GRPO
iterations (rollouts through the generation engine, chat protocol and environment; group advantages; the
packed train step). With the defaults (seed 0) the mean reward goes from ~0.16 to ≥ 0.8 from about
iteration 6 (tests/test_rl_learning.py; the measured curves and the hints / progress-reward ablation over
3 seeds are in docs/training.md, "Synthetic learning run").
Used by the demo and benchmarks/synthetic_learning.py.
"""
from __future__ import annotations

import dataclasses
import random
import time
from pathlib import Path
from typing import Callable, ClassVar, Literal

import jax
import jax.numpy as jnp
from flax import nnx
from tqdm.auto import tqdm

from environments.config import EnvironmentConfig
from environments.synthetic import SyntheticConfig, SyntheticEpisode, make_synthetic_tasks
from envtune_jax.chat.tokenizer import check_tokenizer_fits_model, compact_qwen_tokenizer, stop_token_ids
from envtune_jax.chat.chat_config import ChatConfig
from envtune_jax.config import ReadOnlyWhen, check_field_use
from models.config import Qwen3Config
from models.generation.engine import GenerationEngine
from models.generation.sampling import SamplingParams
from models.qwen3 import init_model
from rl.grpo import PolicyLearner
from rl.metrics_log import MetricsWriter
from rl.optimizer import OptimizerConfig
from rl.rl_config import LossConfig
from rl.rollout import RolloutConfig
from rl.train_step import Trainer, TrainStepConfig
from rl.warmup import demos_batch, weak_prior_demos


# Four settings per device; every device name (at the start of a reply) and every " value" is one token
# of the cut tokenizer, so a call is two tokens. A policy that knows the device but guesses the value is
# right on 1/4 of the turns.
FOUR_VALUE_DEVICES = (("light", ("red", "green", "blue", "white")), ("window", ("open", "close", "half", "lock")),
                      ("screen", ("dim", "dark", "normal", "full")))
# 2 layers, hidden 64: hidden 32 does not learn even a supervised copy of the request in 100 steps.
# Vocabulary: the first 8,192 Qwen BPE ranks + 26 added tokens, padded to a multiple of 128 rows.
SYNTHETIC_BPE_TOKENS = 8192
TINY_SYNTHETIC_MODEL = Qwen3Config(vocab_size=8320, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=1,
                                   head_dim=16, tie_word_embeddings=False, max_position_embeddings=4096)


@dataclasses.dataclass
class SyntheticRunConfig:
    seed: int = 0
    # task
    num_tasks: int = 256
    num_turns: int = 2
    doc_style: Literal["schema", "short", "system", "none"] = "none"
    hints: bool = True
    reward: Literal["progress", "binary"] = "progress"
    # model: tiny Qwen3 over the cut tokenizer (model.vocab_size must cover its bpe_tokens + 26 ids)
    bpe_tokens: int = SYNTHETIC_BPE_TOKENS
    model: Qwen3Config = TINY_SYNTHETIC_MODEL  # frozen, so safe as a shared default
    # warm-up (supervised, partly right demonstrations: rl/warmup.py)
    warmup_steps: int = 240  # to nll ~0.23 (the demonstrations' own entropy is ~0.2); 80 steps left 0.55
    warmup_batch: int = 16
    warmup_learning_rate: float = 1e-2
    device_accuracy: float = 1.0  # demonstrated turns that call the requested device
    value_accuracy: float = 1.0  # ... and set it to the requested value (else a random value of it)
    syntax_accuracy: float = 0.05  # demonstrated calls spelt as the parser accepts (else MISSPELT_CALLS)
    demo_attempts: int = 2  # attempts per demonstrated turn when format feedback answers a misspelt call
    # GRPO
    rl_steps: int = 30
    prompts_per_step: int = 4
    samples_per_prompt: int = 8
    learning_rate: float = 2e-3
    # Adam's epsilon: with many output rows, most gradients are tiny; eps 1e-8 would scale those up to
    # full-size steps and lift the whole tail of the vocabulary at once (entropy blow-up; seen with the
    # full 151,936-row vocabulary, kept for the cut one)
    adam_eps: float = 1e-5
    kl_coef: float = 0.0
    entropy_coef: float = 0.0
    max_new_tokens: int = 4
    temperature: float = 1.0
    max_cache_len: int = 256

    FIELD_USE: ClassVar[tuple[ReadOnlyWhen, ...]] = tuple(
        ReadOnlyWhen(name, "there is no warm-up (warmup_steps is 0)", lambda c: c.warmup_steps > 0)
        for name in ("warmup_batch", "warmup_learning_rate", "device_accuracy", "value_accuracy", "syntax_accuracy",
                     "demo_attempts"))

    def __post_init__(self) -> None:
        check_field_use(self)

    def task_config(self) -> SyntheticConfig:
        return SyntheticConfig(devices=FOUR_VALUE_DEVICES, num_turns=self.num_turns, doc_style=self.doc_style)

    def environment_config(self) -> EnvironmentConfig:
        return dataclasses.replace(EnvironmentConfig.training(augmented=self.hints), reward=self.reward)

    def tokenizer(self):
        """Qwen's BPE cut to `bpe_tokens` ranks; checks that the model's vocabulary covers it."""
        tokenizer = compact_qwen_tokenizer(self.bpe_tokens)
        check_tokenizer_fits_model(tokenizer, self.model.vocab_size)
        return tokenizer


@dataclasses.dataclass
class SyntheticRunResult:
    history: list[dict]  # one metrics dict per GRPO iteration
    warmup: dict  # final warm-up nll, wall time
    total_s: float
    engine_compilations: int
    train_compilations: int  # compiled variants of the GRPO train step (one per batch shape)


@dataclasses.dataclass
class WarmedUp:
    """A model after the warm-up, with what the GRPO phase needs to start from it (any number of times)."""
    model: nnx.Module
    params: nnx.State  # the warmed-up weights (GRPO runs start from a copy)
    tasks: list
    info: dict  # final warm-up nll, wall time


def warm_up(cfg: SyntheticRunConfig, progress: bool = False) -> WarmedUp:
    """A tiny random Qwen3 trained on partly-right demonstrations (rl/warmup.py). The demonstrations are
    played with format feedback on whatever the GRPO environment, so every GRPO variant starts from the
    same weights. `progress` shows a console bar (the default warm-up takes minutes on CPU)."""
    start = time.perf_counter()
    tokenizer, chat = cfg.tokenizer(), ChatConfig()
    task_cfg = cfg.task_config()
    demo_env = EnvironmentConfig.training(augmented=True)
    tasks = make_synthetic_tasks(cfg.num_tasks, task_cfg, seed=cfg.seed)
    model = init_model(cfg.model, seed=cfg.seed)
    graphdef, params = nnx.split(model, nnx.Param)
    trainer = Trainer(graphdef, LossConfig(kl_coef=0.0, entropy_coef=0.0),
                      OptimizerConfig(learning_rate=cfg.warmup_learning_rate, weight_decay=0.0, eps=cfg.adam_eps),
                      TrainStepConfig())
    state = trainer.init(params)
    rng = random.Random(cfg.seed)
    metrics = {}
    bar = tqdm(total=cfg.warmup_steps, desc="warm-up", unit="step", disable=not progress)
    for _ in range(cfg.warmup_steps):
        episodes = [SyntheticEpisode(tasks[rng.randrange(len(tasks))], task_cfg, demo_env)
                    for _ in range(cfg.warmup_batch)]
        demos = weak_prior_demos(episodes, tokenizer, chat, cfg.device_accuracy, cfg.value_accuracy, rng,
                                 syntax_accuracy=cfg.syntax_accuracy, max_attempts=cfg.demo_attempts)
        state, metrics = trainer.supervised_step(state, demos_batch(demos))
        if progress:  # wait for the step, so the bar shows real progress (steps are dispatched asynchronously)
            jax.block_until_ready(metrics)
        bar.update(1)
        if bar.n % 20 == 0:
            bar.set_postfix(nll=f"{float(metrics['nll']):.3f}")
    bar.close()
    nnx.update(model, state.params)
    info = {"nll": float(metrics.get("nll", float("nan"))), "seconds": time.perf_counter() - start}
    return WarmedUp(model, jax.tree.map(jnp.copy, state.params), tasks, info)


def grpo(cfg: SyntheticRunConfig, warmed: WarmedUp, out_dir: str | Path | None = None,
         on_step: Callable[[int, dict], None] | None = None) -> SyntheticRunResult:
    """GRPO iterations from the warmed-up weights (reset to them first), in `cfg`'s environment
    (hints on/off, reward kind). The task draws and sampling keys depend only on cfg.seed."""
    start = time.perf_counter()
    tokenizer, chat = cfg.tokenizer(), ChatConfig()
    task_cfg, env_cfg = cfg.task_config(), cfg.environment_config()
    model, tasks = warmed.model, warmed.tasks
    nnx.update(model, jax.tree.map(jnp.copy, warmed.params))
    loss_cfg = LossConfig(kl_coef=cfg.kl_coef, entropy_coef=cfg.entropy_coef)
    graphdef, _ = nnx.split(model, nnx.Param)
    engine = GenerationEngine(model, batch_size=cfg.prompts_per_step * cfg.samples_per_prompt,
                              max_cache_len=cfg.max_cache_len, cache_dtype="float32")
    # old log-probs from the sampler (float32 cache here, so they equal the trainer's to ~1e-6): the setting
    # the documented curves were measured with
    trainer = Trainer(graphdef, loss_cfg, OptimizerConfig(learning_rate=cfg.learning_rate, weight_decay=0.0, eps=cfg.adam_eps),
                      TrainStepConfig(temperature=cfg.temperature, old_logprobs="sampler"))
    learner = PolicyLearner(model, engine, trainer, tokenizer, loss_cfg)
    sampling = SamplingParams(temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens,
                              stop_token_ids=stop_token_ids(tokenizer))
    rollout_cfg = RolloutConfig(max_new_tokens_per_step=cfg.max_new_tokens, max_response_tokens=cfg.max_cache_len,
                                max_context_tokens=cfg.max_cache_len)
    writer = MetricsWriter(out_dir, tensorboard=False) if out_dir is not None else None
    history = []
    rng = random.Random(cfg.seed + 1)
    key = jax.random.key(cfg.seed)
    for step in range(cfg.rl_steps):
        t0 = time.perf_counter()
        picked = [tasks[rng.randrange(len(tasks))] for _ in range(cfg.prompts_per_step)]
        groups = [[SyntheticEpisode(t, task_cfg, env_cfg) for _ in range(cfg.samples_per_prompt)] for t in picked]
        metrics, _ = learner.iterate(groups, chat, sampling, rollout_cfg, jax.random.fold_in(key, step))
        record = {"step": step, **metrics, "step_s": time.perf_counter() - t0,
                  "engine_compilations": engine.num_compilations, "train_compilations": _compiled_variants(trainer)}
        history.append(record)
        if writer is not None:
            writer.write(step, record)
        if on_step is not None:
            on_step(step, record)
    if writer is not None:
        writer.close()
    return SyntheticRunResult(history, warmed.info, time.perf_counter() - start, engine.num_compilations,
                              _compiled_variants(trainer))


def run_synthetic(cfg: SyntheticRunConfig, out_dir: str | Path | None = None,
                  on_step: Callable[[int, dict], None] | None = None, progress: bool = False) -> SyntheticRunResult:
    """Warm-up (with a console bar if `progress`) then GRPO; returns the per-iteration metrics (also JSONL in out_dir)."""
    start = time.perf_counter()
    result = grpo(cfg, warm_up(cfg, progress), out_dir, on_step)
    return dataclasses.replace(result, total_s=time.perf_counter() - start)


def _compiled_variants(trainer: Trainer) -> int:
    """How many shapes the GRPO step was compiled for (jax.jit's cache size; -1 if jax hides it)."""
    cache_size = getattr(trainer._step, "_cache_size", None)
    return int(cache_size()) if callable(cache_size) else -1
