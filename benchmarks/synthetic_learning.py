"""The learning curve of the synthetic run and the paper's ablation in miniature (README: Synthetic learning run).

One warm-up (rl/synthetic_run.warm_up), then GRPO from the same warmed-up weights, with the same task
draws and sampling keys, in four environments: hints/format feedback on or off × progress or binary
(all-turns-right) reward. Writes, under --out:
- curves.jsonl: one line per variant and GRPO iteration (reward the variant trained on, progress
  reward R_P, accuracy, entropy, format-error and hint counters, seconds);
- learning.png / ablation.png (when matplotlib is installed): R_P per iteration of the default
  variant, and of all four;
and prints one JSON summary line (first / last R_P of each variant, wall times).

    python benchmarks/synthetic_learning.py --out docs/synthetic [--steps 40] [--variants default,no_hints]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from pathlib import Path

from rl.synthetic_run import SyntheticRunConfig, grpo, warm_up

VARIANTS = {
    "default": {"hints": True, "reward": "progress"},  # the paper's stage 2-3 setting
    "no_hints": {"hints": False, "reward": "progress"},
    "binary_reward": {"hints": True, "reward": "binary"},
    "no_hints_binary_reward": {"hints": False, "reward": "binary"},
}
KEPT_METRICS = ("reward_mean", "progress_reward_mean", "accuracy", "entropy", "per_episode/format_errors",
                "per_episode/hints", "per_episode/steps", "step_s")


def first_last(values: list[float], window: int = 3) -> tuple[float, float]:
    """Mean of the first and of the last `window` values."""
    head, tail = values[:window], values[-window:]
    return sum(head) / len(head), sum(tail) / len(tail)


def plot(curves: dict[str, list[float]], path: Path, title: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    for name, values in curves.items():
        ax.plot(range(len(values)), values, label=name, linewidth=1.6)
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
    parser.add_argument("--steps", type=int, default=None, help="GRPO iterations per variant (default: the config's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {list(VARIANTS)}")
    args = parser.parse_args()
    names = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    base = SyntheticRunConfig(seed=args.seed)
    if args.steps is not None:
        base = dataclasses.replace(base, rl_steps=args.steps)
    args.out.mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
    warmed = warm_up(base, progress=True)
    print(f"warm-up: nll {warmed.info['nll']:.3f} in {warmed.info['seconds']:.0f} s", flush=True)
    curves: dict[str, list[float]] = {}
    summary = {"machine": f"{platform.machine()} {platform.processor() or ''}".strip(), "seed": args.seed,
               "warmup": warmed.info, "variants": {}}
    with open(args.out / "curves.jsonl", "w") as jsonl:
        for name in names:
            cfg = dataclasses.replace(base, **VARIANTS[name])

            def show(step: int, record: dict, name=name) -> None:
                row = {"variant": name, "step": step, **{k: record[k] for k in KEPT_METRICS if k in record}}
                jsonl.write(json.dumps(row) + "\n")
                jsonl.flush()
                print(f"{name:>24} {step:3d}  R_P {record['progress_reward_mean']:.3f}  "
                      f"trained-on reward {record['reward_mean']:.3f}  {record['step_s']:.1f} s", flush=True)

            result = grpo(cfg, warmed, on_step=show)
            curve = [r["progress_reward_mean"] for r in result.history]
            curves[name] = curve
            first, last = first_last(curve)
            summary["variants"][name] = {"first3_progress": round(first, 3), "last3_progress": round(last, 3),
                                         "max_progress": round(max(curve), 3), "seconds": round(result.total_s, 1)}
    summary["total_s"] = round(time.perf_counter() - start, 1)
    if "default" in curves:
        summary["learning_png"] = plot({"default (hints, progress reward)": curves["default"]},
                                       args.out / "learning.png", "Synthetic task: tiny Qwen3, GRPO (seed %d)" % args.seed)
    if len(curves) > 1:
        summary["ablation_png"] = plot(curves, args.out / "ablation.png",
                                       "Hints and progress reward, same warm-up and seed %d" % args.seed)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
