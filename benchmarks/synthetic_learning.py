"""The learning curve of the synthetic run and the paper's ablation in miniature (docs/training.md: Synthetic
learning run).

Per seed: one warm-up (rl/synthetic_run.warm_up) of the synthetic recipe (configs/synthetic/), then GRPO
from the same warmed-up weights, with the same task draws and sampling keys, in four environments:
hints/format feedback on or off × progress or binary (all-turns-right) reward. Writes, under --out:
- curves.jsonl: one line per seed, variant and GRPO iteration (reward the variant trained on, progress
  reward R_P, accuracy, entropy, format-error and hint counters, seconds);
- learning.png: R_P per iteration of the default variant for the first seed (the run the learning test
  checks); ablation.png: R_P of every variant, mean over the seeds with a min-max band
  (when matplotlib is installed);
and prints one JSON summary line (per variant and seed: R_P at iterations 0/5/10, mean R_P, the first
iteration that starts a 3-iteration window averaging ≥ 0.8; means over seeds; wall times).

    python benchmarks/synthetic_learning.py --out docs/synthetic [--seeds 0,1,2] [--steps 40] \
        [--variants default,no_hints]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

from envtune_jax.rl.synthetic_run import grpo, load_synthetic_recipe, warm_up

# Overrides of the synthetic recipe (configs/synthetic/learning_run.yaml); "no hints" also turns format
# feedback and the empty-turn warning off (EnvironmentConfig.training(augmented=False))
NO_HINTS = [
    "stage.environment.hints=false",
    "stage.environment.format_feedback=false",
    "stage.environment.empty_turn_warning=false",
]
VARIANTS = {
    "default": [],  # the paper's stage 2-3 setting: hints, format feedback, progress reward
    "no_hints": NO_HINTS,
    "binary_reward": ["stage.environment.reward=binary"],
    "no_hints_binary_reward": [*NO_HINTS, "stage.environment.reward=binary"],
}
KEPT_METRICS = (
    "reward_mean",
    "progress_reward_mean",
    "accuracy",
    "entropy",
    "per_episode/format_errors",
    "per_episode/hints",
    "per_episode/steps",
    "step_s",
)


def first_window_reaching(values: list[float], level: float = 0.8, window: int = 3) -> int | None:
    """First index i with mean(values[i:i+window]) >= level (None if no full window does)."""
    for i in range(len(values) - window + 1):
        if sum(values[i : i + window]) / window >= level:
            return i
    return None


def curve_summary(curve: list[float]) -> dict:
    """The figures docs/training.md's ablation table shows for one run."""
    at = {f"at_{i}": round(curve[i], 3) for i in (0, 5, 10) if i < len(curve)}
    return {
        **at,
        "mean": round(sum(curve) / len(curve), 3),
        "last3": round(sum(curve[-3:]) / len(curve[-3:]), 3),
        "first_window_0.8": first_window_reaching(curve),
    }


def plot(curves: dict[str, list[list[float]]], path: Path, title: str) -> bool:
    """One line per entry (mean over its runs) with a min-max band when it has several runs."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    for name, runs in curves.items():
        steps = range(min(len(run) for run in runs))
        mean = [sum(run[i] for run in runs) / len(runs) for i in steps]
        (line,) = ax.plot(steps, mean, label=name, linewidth=1.6)
        if len(runs) > 1:
            ax.fill_between(
                steps,
                [min(run[i] for run in runs) for i in steps],
                [max(run[i] for run in runs) for i in steps],
                color=line.get_color(),
                alpha=0.15,
            )
    ax.set_xlabel("GRPO iteration (4 prompts x 8 samples)")
    ax.set_ylabel("mean progress reward R_P")
    ax.set_ylim(0, 1)
    ax.axhline(0.8, color="grey", linewidth=0.8, linestyle="--")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=None, help="GRPO iterations per variant (default: the recipe's)")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds, one warm-up each (e.g. 0,1,2)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {list(VARIANTS)}")
    args = parser.parse_args()
    names = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--seeds takes comma-separated integers, got {args.seeds!r}")
    args.out.mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
    curves: dict[str, list[list[float]]] = {name: [] for name in names}
    summary = {
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "seeds": seeds,
        "warmup": {},
        "variants": {name: {"runs": {}} for name in names},
    }
    with open(args.out / "curves.jsonl", "w") as jsonl:
        for seed in seeds:
            base = [f"run.seed={seed}", f"run.model.seed={seed}"]
            if args.steps is not None:
                base.append(f"stage.max_steps={args.steps}")
            warmed = warm_up(load_synthetic_recipe(base), progress=True)
            print(f"seed {seed} warm-up: nll {warmed.info['nll']:.3f} in {warmed.info['seconds']:.0f} s", flush=True)
            summary["warmup"][seed] = {k: round(v, 3) for k, v in warmed.info.items()}
            for name in names:
                recipe = load_synthetic_recipe(base + VARIANTS[name])

                def show(step: int, record: dict, name=name, seed=seed) -> None:
                    row = {
                        "seed": seed,
                        "variant": name,
                        "step": step,
                        **{k: record[k] for k in KEPT_METRICS if k in record},
                    }
                    jsonl.write(json.dumps(row) + "\n")
                    jsonl.flush()
                    print(
                        f"seed {seed} {name:>24} {step:3d}  R_P {record['progress_reward_mean']:.3f}  "
                        f"trained-on reward {record['reward_mean']:.3f}  {record['step_s']:.1f} s",
                        flush=True,
                    )

                result = grpo(recipe, warmed, on_step=show)
                curve = [r["progress_reward_mean"] for r in result.history]
                curves[name].append(curve)
                summary["variants"][name]["runs"][seed] = {**curve_summary(curve), "seconds": round(result.total_s, 1)}
    for name in names:
        runs = list(summary["variants"][name]["runs"].values())
        for key in ("at_5", "at_10", "mean"):
            if all(key in run for run in runs):
                summary["variants"][name][f"{key}_over_seeds"] = round(sum(run[key] for run in runs) / len(runs), 3)
    summary["total_s"] = round(time.perf_counter() - start, 1)
    if "default" in curves:
        summary["learning_png"] = plot(
            {"default (hints, progress reward)": curves["default"][:1]},
            args.out / "learning.png",
            "Synthetic task: tiny Qwen3, GRPO (seed %d)" % seeds[0],
        )
    if len(curves) > 1:
        seeds_text = ", ".join(map(str, seeds))
        summary["ablation_png"] = plot(
            curves, args.out / "ablation.png", f"Hints and progress reward, same warm-up per seed (seeds {seeds_text})"
        )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
