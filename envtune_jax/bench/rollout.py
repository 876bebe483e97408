"""`envtune bench rollout`: GRPO iterations on the real BFCL environments, as `envtune train` runs them.

A recipe (configs/recipes/*.yaml, with key=value overrides) names the model, sampler, rollout
budgets, loss and optimizer; one of its stages names the data subset, the environment (hints,
reward) and the chat template. Each iteration draws `--prompts` entries, plays `--samples` episodes
of each (G samples per prompt) through the generation engine and the tool environments, and takes
one optimizer step on them: the GRPO loop of `envtune train` (rl/grpo_loop.run_grpo) with this
benchmark's hook (`IterationHook`) instead of the curriculum's. The first
iteration compiles and is reported apart (`--no-warmup` skips it: the timed ones then include
compilation); then `--iterations` timed ones:
- episodes per minute = P·G / (rollout + train seconds) · 60;
- the share of the iteration's wall time in generation (prefill, extend, decode), environment (tool
  execution, parsing, rendering, hints, rewards), training (the optimizer step) and the rest
  (advantages, batch packing);
- sampled tokens per second of generation time, and the train step's model TFLOP/s (with its MFU on
  devices of envtune_jax/device_limits' table).
- decode calls per iteration and the slot occupancy: the share of the decode calls' slots that held a
  live episode (the driver refills a slot as soon as its episode ends).
With a preset model (`model.preset=qwen3-4b`) the weights are random and created on device: such a
model writes no tool calls, so every step runs to its budget (`rollout.max_new_tokens_per_step`) and the
environment's share is the least it can be. Prints one JSON line; a progress bar on stderr counts the
iterations and shows what the current one is doing (rollout episodes done / total, environment, update,
compiling).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipe", required=True, help="a recipe YAML (configs/recipes/...)")
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="recipe overrides, e.g. sampler.batch_size=64"
    )
    parser.add_argument("--stage", default=None, help="stage name (default: the recipe's first)")
    parser.add_argument("--prompts", type=int, default=None, help="prompts per iteration (default: the stage's)")
    parser.add_argument("--samples", type=int, default=None, help="samples per prompt G (default: the stage's)")
    parser.add_argument("--iterations", type=int, default=2, help="timed iterations after the first")
    parser.add_argument("--no-warmup", action="store_true", help="no untimed first iteration (smoke tests)")
    parser.add_argument(
        "--profile", default=None, metavar="DIR", help="write a jax.profiler trace of one extra iteration"
    )


def check_arguments(args) -> None:
    from envtune_jax.cli import validate as check

    args.run_config = check.recipe(args.recipe, args.overrides)
    check.at_least(args, 1, "prompts", "samples", "iterations")
    choose_stage(args.run_config[1], args.stage)


def choose_stage(stages, name: str | None):
    from envtune_jax.config import ConfigError

    if name is None:
        return stages[0]
    for stage in stages:
        if stage.name == name:
            return stage
    raise ConfigError(f"--stage {name!r}: the recipe's stages are {[s.name for s in stages]}")


def iteration_shares(metrics: dict, wall_s: float) -> dict:
    """Fractions of one iteration's wall time in generation, environment, training and the rest."""
    parts = {
        "generation": metrics["generation_s"],
        "environment": metrics["environment_s"],
        "train": metrics["train_s"],
    }
    shares = {name: seconds / wall_s for name, seconds in parts.items()}
    shares["other"] = max(0.0, 1.0 - sum(shares.values()))
    return shares


class IterationHook:
    """The benchmark's hook on the GRPO loop (rl/grpo_loop.py): labels each iteration on the bar (warm-up,
    timed i/N, profiled), traces the profiled one, and keeps each iteration's metrics with the episode
    figures the report averages (tokens, turns and steps per episode) and its wall time (`step_s`)."""

    def __init__(self, bar, display, iterations: int, profile_dir: str | None):
        self.bar, self.display, self.iterations, self.profile_dir = bar, display, iterations, profile_dir
        self.results: dict[int, tuple[dict, float]] = {}
        self._trace = contextlib.ExitStack()

    def before_step(self, index: int) -> None:
        from envtune_jax.bench.profiling import maybe_trace

        profiled = index > self.iterations
        self.display.prefix = (
            "warm-up | " if index == 0 else "profiled | " if profiled else f"timed {index}/{self.iterations} | "
        )
        if profiled:
            self._trace.enter_context(maybe_trace(self.profile_dir))

    def after_step(self, index: int, metrics: dict, trajectories) -> None:
        self._trace.close()
        self.bar.update(1)
        metrics["episode_tokens_mean"] = statistics.mean(len(t.token_ids) for t in trajectories)
        metrics["turns_mean"] = statistics.mean(t.outcome.counters.get("turns_completed", 0) for t in trajectories)
        metrics["steps_mean"] = statistics.mean(t.outcome.counters.get("steps", 0) for t in trajectories)
        self.results[index] = (metrics, metrics["step_s"])


def run(args) -> dict:
    import jax
    from tqdm.auto import tqdm

    from envtune_jax.cli.common import print_json
    from envtune_jax.config import ConfigError
    from envtune_jax.environments.bfcl_env import BfclEpisode
    from envtune_jax.mesh import make_mesh, resolve_mesh_shape
    from envtune_jax.progress import PhaseDisplay
    from envtune_jax.rl.grpo_loop import build_learner, run_grpo, stage_settings
    from envtune_jax.rl.model_loader import load_run_model
    from envtune_jax.rl.run_config import load_run_config
    from envtune_jax.rl.stage_data import draw, load_subset
    from envtune_jax.rl.train_loop import prompt_length

    if args.iterations < 1:
        raise ConfigError(f"--iterations must be ≥ 1, got {args.iterations}")
    cfg, stages = getattr(args, "run_config", None) or load_run_config(args.recipe, args.overrides)
    stage = choose_stage(stages, args.stage)
    prompts = args.prompts or stage.prompts_per_step
    samples = args.samples or stage.samples_per_prompt
    if prompts < 1 or samples < 1:
        raise ConfigError(f"--prompts and --samples must be ≥ 1, got {prompts} and {samples}")
    resolve_mesh_shape(cfg.mesh, len(jax.devices()))  # a mesh that does not fit the devices: ConfigError
    mesh = make_mesh(cfg.mesh) if len(jax.devices()) > 1 else None
    loaded = load_run_model(cfg.model, mesh)
    model = loaded.model
    learner = build_learner(cfg, loaded, mesh)
    length = prompt_length(learner.tokenizer, stage) if cfg.data.shortest_prompts_first else None
    entries = load_subset(stage.data, cfg.data.source, cfg.data.data_dir, cfg.data.limit_per_category, length)
    settings = stage_settings(cfg, stage)
    rollout_cfg = settings.rollout
    indices = (
        ([] if args.no_warmup else [0])
        + list(range(1, args.iterations + 1))
        + ([args.iterations + 1] if args.profile else [])
    )
    bar = tqdm(total=len(indices), desc="bench rollout", unit="iteration", file=sys.stderr)
    display = PhaseDisplay(bar)
    hook = IterationHook(bar, display, args.iterations, args.profile)

    def groups_for(index: int):
        picked = draw(entries, index * prompts, prompts, cfg.seed)
        return [[BfclEpisode(e, stage.environment) for _ in range(samples)] for e in picked]

    run_grpo(learner, indices, groups_for, settings, jax.random.key(cfg.seed), hooks=(hook,), on_phase=display)
    first, first_wall = hook.results.get(0, (None, None))
    timed = [hook.results[i] for i in range(1, args.iterations + 1)]
    display.prefix = ""
    display.close()
    bar.close()
    walls = [wall for _, wall in timed]
    wall = statistics.mean(walls)
    mean = {
        k: statistics.mean(m[k] for m, _ in timed)
        for k in (
            "generation_s",
            "environment_s",
            "train_s",
            "sampled_tokens",
            "tokens",
            "reward_mean",
            "train_tflops",
            "episode_tokens_mean",
            "turns_mean",
            "steps_mean",
            "decode_calls",
            "slot_occupancy",
        )
    }
    episodes = prompts * samples
    record = {
        "benchmark": "rollout",
        "recipe": str(args.recipe),
        "overrides": list(args.overrides),
        "stage": stage.name,
        "model": cfg.model.preset or cfg.model.hf or cfg.model.ckpt,
        "random_weights": bool(cfg.model.preset),
        "params": model.config.num_params,
        "prompts": prompts,
        "samples_per_prompt": samples,
        "episodes_per_iteration": episodes,
        "iterations": args.iterations,
        "sampler_batch_size": cfg.sampler.batch_size,
        "max_new_tokens_per_step": rollout_cfg.max_new_tokens_per_step,
        "episodes_per_min": 60.0 * episodes / wall,
        "iteration_s": wall,
        "shares": iteration_shares(mean, wall),
        "generation_s": mean["generation_s"],
        "environment_s": mean["environment_s"],
        "train_s": mean["train_s"],
        "sampled_tok_s": mean["sampled_tokens"] / max(mean["generation_s"], 1e-9),
        "sampled_tokens_per_iteration": mean["sampled_tokens"],
        "train_tokens_per_iteration": mean["tokens"],
        "episode_tokens_mean": mean["episode_tokens_mean"],
        "turns_mean": mean["turns_mean"],
        "steps_mean": mean["steps_mean"],
        "decode_calls": mean["decode_calls"],
        "slot_occupancy": mean["slot_occupancy"],
        "train_tflops_per_s": mean["train_tflops"],
        "mfu": statistics.mean(m["mfu"] for m, _ in timed) if "mfu" in timed[0][0] else None,
        "reward_mean": mean["reward_mean"],
        "first_iteration_s": first_wall,
        "first_iteration_shares": None if first is None else iteration_shares(first, first_wall),
        "compilations": dict(learner.engine.trace_counts),
        "profile_dir": args.profile,
        "device_kind": jax.devices()[0].device_kind,
        "num_devices": len(jax.devices()),
        "jax": jax.__version__,
    }
    print_json(record)
    return record
