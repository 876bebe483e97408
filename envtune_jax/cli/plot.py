"""`envtune plot RUN_DIR`: a training run's curves (reward, accuracy, KL, entropy, gradient norm) as a PNG."""
from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

INSTALL_HINT = "pip install 'envtune-jax[plot]'"


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "plot", help="draw a training run's curves to a PNG (needs matplotlib: the plot extra)",
        description="Reads RUN_DIR/logs/metrics.jsonl (what `envtune train` writes, also while it runs) and draws "
                    "reward, train and validation accuracy, KL, entropy and gradient norm per optimizer step, "
                    "with the stage boundaries marked.",
        epilog="examples:\n  envtune plot runs/qwen3-4b-envtuning\n  envtune plot runs/qwen3-4b-envtuning --out curves.png",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a run folder of `envtune train` (or its metrics.jsonl)")
    parser.add_argument("--out", type=Path, default=None, help="PNG to write (default: RUN_DIR/curves.png)")
    parser.set_defaults(func=run)


def run(args) -> int:
    metrics = args.run_dir / "logs" / "metrics.jsonl" if args.run_dir.is_dir() else args.run_dir
    if not metrics.is_file():
        print(f"envtune plot: error: {metrics} does not exist: RUN_DIR is the run_dir of `envtune train`", file=sys.stderr)
        return 2
    if importlib.util.find_spec("matplotlib") is None:
        print(f"envtune plot: error: matplotlib is not installed; {INSTALL_HINT}", file=sys.stderr)
        return 2
    from rl.run_plot import plot_run

    out = args.out or (args.run_dir if args.run_dir.is_dir() else args.run_dir.parent) / "curves.png"
    try:
        written = plot_run(metrics, out)
    except ValueError as exc:
        print(f"envtune plot: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {written}")
    return 0
