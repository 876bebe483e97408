"""One GRPO iteration: rollouts of G samples per prompt → group-normalised advantages → packed batch
→ one optimizer step → the sampler sees the new weights (same arrays, no copy).

`PolicyLearner` owns the model (the sampler reads it), the trainer state and the frozen reference
parameters of the current stage; `iterate(groups_of_episodes, rng)` does one iteration and returns
its metrics (reward statistics per category, rollout counters, the prompt tokens prefilled (each
group's prompt once when its samples share it), loss parts, timings, and the step's
model TFLOP/s = 6·params·tokens/s with its MFU on devices of envtune_jax/device_limits' table).
"""

from __future__ import annotations

import collections
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from envtune_jax.chat.chat_config import ChatConfig
from envtune_jax.device_limits import MEASURED
from envtune_jax.environments.base import ToolEnvironment
from envtune_jax.models.generation.sampling import SamplingParams
from envtune_jax.progress import OnPhase
from envtune_jax.rl.advantages import group_advantages
from envtune_jax.rl.batch import pack_batch, process_batch
from envtune_jax.rl.prefix_packing import pack_shared_prefix
from envtune_jax.rl.rl_config import LossConfig
from envtune_jax.rl.rollout import RolloutConfig, RolloutStats, Trajectory, run_rollouts
from envtune_jax.rl.train_step import Trainer, TrainState


def copy_tree(tree):
    return jax.tree.map(jnp.copy, tree)


def matmul_peak_flops(devices) -> float | None:
    """The measured bf16 matmul FLOP/s of `devices` together (device_limits.MEASURED); None for a device
    kind not in that table (CPU, for one): MFU is then not reported."""
    kind = devices[0].device_kind
    rate = next((figures[1] for key, figures in MEASURED.items() if key in kind), None)
    return None if rate is None else rate * len(devices)


class PolicyLearner:
    def __init__(self, model: nnx.Module, engine, trainer: Trainer, tokenizer, loss_cfg: LossConfig):
        self.model = model
        self.engine = engine
        self.trainer = trainer
        self.tokenizer = tokenizer
        self.loss_cfg = loss_cfg
        _, params = nnx.split(model, nnx.Param)
        self.state: TrainState = trainer.init(params)
        self.ref_params = copy_tree(params) if loss_cfg.kl_coef > 0 else None
        self.peak_flops = matmul_peak_flops(jax.devices())

    def reset_reference(self) -> None:
        """The KL reference becomes the current weights (at the start of every stage)."""
        if self.loss_cfg.kl_coef > 0:
            self.ref_params = copy_tree(self.state.params)

    def set_state(self, state: TrainState, ref_params) -> None:
        self.state, self.ref_params = state, ref_params
        nnx.update(self.model, state.params)

    def rollout(
        self,
        groups: Sequence[Sequence[ToolEnvironment]],
        chat: ChatConfig,
        sampling: SamplingParams,
        rollout_cfg: RolloutConfig,
        rng,
        stats: RolloutStats | None = None,
        keep_text: bool = False,
        on_phase: OnPhase | None = None,
    ) -> list[Trajectory]:
        episodes = [episode for group in groups for episode in group]
        group_ids = [g for g, group in enumerate(groups) for _ in group]
        return run_rollouts(
            self.engine,
            self.tokenizer,
            chat,
            episodes,
            group_ids,
            sampling,
            rollout_cfg,
            rng,
            keep_text=keep_text,
            stats=stats,
            on_phase=on_phase,
        )

    def _train_batch(self, trajectories: Sequence[Trajectory], advantages_b: np.ndarray):
        """(packed batch, rows this process supplied); across several processes, each supplies only the
        rows its devices hold (rl/batch.process_batch)."""
        columns = (
            [t.token_ids for t in trajectories],
            [t.loss_mask for t in trajectories],
            [t.sampler_logprobs for t in trajectories],
            advantages_b,
        )
        step_cfg = self.trainer.step_cfg
        if step_cfg.shared_prefix != "off":  # each group's prompt once per row (rl/prefix_packing.py)
            if jax.process_count() > 1:
                raise ValueError("train_step.shared_prefix runs on one process only (multi-host: 'off')")
            return pack_shared_prefix(
                *columns,
                [t.group for t in trajectories],
                groups_per_row=step_cfg.prefix_groups_per_row,
                rows_multiple=max(step_cfg.micro_batch_size, 1),
                two_level=step_cfg.shared_prefix == "two_level",
            ), len(trajectories)
        mesh = getattr(self.engine, "mesh", None)
        if mesh is None or jax.process_count() == 1:
            return pack_batch(*columns), len(trajectories)
        batch, (start, stop) = process_batch(mesh, *columns)
        return batch, stop - start

    def iterate(
        self,
        groups: Sequence[Sequence[ToolEnvironment]],
        chat: ChatConfig,
        sampling: SamplingParams,
        rollout_cfg: RolloutConfig,
        rng,
        on_phase: OnPhase | None = None,
    ) -> tuple[dict, list[Trajectory]]:
        """One rollout + optimizer step. All groups must have the same number of samples G. `on_phase` hears
        the rollout's progress (episodes done / total), then "update" (envtune_jax/progress.py)."""
        sizes = {len(group) for group in groups}
        if len(sizes) != 1:
            raise ValueError(f"every prompt needs the same number of samples, got group sizes {sorted(sizes)}")
        stats = RolloutStats()
        prefilled_before = prefilled_tokens(self.engine)
        t0 = time.perf_counter()
        trajectories = self.rollout(groups, chat, sampling, rollout_cfg, rng, stats, on_phase=on_phase)
        rollout_s = time.perf_counter() - t0
        prompt_prefilled = prompt_tokens_prefilled(self.engine, prefilled_before, stats)
        rewards_pg = np.asarray([t.reward for t in trajectories], np.float32).reshape(len(groups), -1)
        advantages = np.asarray(
            group_advantages(
                jnp.asarray(rewards_pg),
                scale_by_std=self.loss_cfg.scale_advantages_by_std,
                eps=self.loss_cfg.advantage_eps,
                ddof=self.loss_cfg.advantage_std_ddof,
            )
        )
        batch, local_rows = self._train_batch(trajectories, advantages.reshape(-1))
        if on_phase is not None:
            on_phase("update")
        t0 = time.perf_counter()
        self.state, train_metrics = self.trainer.step(self.state, self.ref_params, batch)
        nnx.update(self.model, self.state.params)
        train_metrics = {k: float(v) for k, v in jax.device_get(train_metrics).items()}
        train_s = time.perf_counter() - t0
        metrics = summarize(trajectories)
        metrics.update(train_metrics)
        total_tokens = int(sum(len(t.token_ids) for t in trajectories))
        metrics.update(
            rollout_s=rollout_s,
            generation_s=stats.generation_s,
            environment_s=stats.environment_s,
            train_s=train_s,
            tokens=total_tokens,
            train_tokens_per_s=total_tokens / max(train_s, 1e-9),
            sampled_tokens=stats.sampled_tokens,
            decode_calls=stats.decode_calls,
            slot_occupancy=stats.slot_occupancy,
            prompt_tokens_prefilled=prompt_prefilled,
            train_rows_supplied=local_rows,
        )
        train_flops_per_s = 6 * self.model.config.num_params * total_tokens / max(train_s, 1e-9)
        metrics["train_tflops"] = train_flops_per_s / 1e12
        if self.peak_flops is not None:
            metrics["mfu"] = train_flops_per_s / self.peak_flops
        return metrics, trajectories


def prefilled_tokens(engine) -> int:
    """Tokens the engine has run through prefill and extend so far: prompts (a prompt that several slots
    start from counts once, held in a prefix region or copied) and environment replies."""
    return engine.extend_tokens["appended"] + engine.extend_tokens["prefix_appended"]


def prompt_tokens_prefilled(engine, prefilled_before: int, stats: RolloutStats) -> int:
    """Prompt tokens the engine computed during a rollout that started at `prefilled_before` tokens
    (prefilled_tokens): all it prefilled and extended, less the environment replies appended."""
    return prefilled_tokens(engine) - prefilled_before - stats.environment_tokens


def summarize(trajectories: Sequence[Trajectory]) -> dict:
    """Reward mean/std (overall and per category), accuracy and rollout counters."""
    rewards = np.asarray([t.reward for t in trajectories], np.float64)
    metrics = {
        "reward_mean": float(rewards.mean()),
        "reward_std": float(rewards.std()),
        "accuracy": float(np.mean([t.outcome.correct for t in trajectories])),
        "progress_reward_mean": float(np.mean([t.outcome.progress_reward for t in trajectories])),
        "truncated_frac": float(np.mean([t.truncated for t in trajectories])),
    }
    by_category = collections.defaultdict(list)
    for t in trajectories:
        by_category[t.category].append(t.reward)
    for category, values in by_category.items():
        metrics[f"reward_mean/{category}"] = float(np.mean(values))
        metrics[f"reward_std/{category}"] = float(np.std(values))
    counters = collections.Counter()
    for t in trajectories:
        counters.update(t.outcome.counters)
    for name, total in counters.items():
        metrics[f"per_episode/{name}"] = total / len(trajectories)
    return metrics
