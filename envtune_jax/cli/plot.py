"""`envtune plot RUN_DIR`: a training run's curves (reward, accuracy, KL, entropy, gradient norm) as a PNG."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

INSTALL_HINT = "pip install 'envtune-jax[plot]'"


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "plot",
        help="draw a training run's curves to a PNG (needs matplotlib: the plot extra)",
        description="Reads RUN_DIR/logs/metrics.jsonl (what `envtune train` writes, also while it runs) and draws "
        "reward, train and validation accuracy, KL, entropy and gradient norm per optimizer step, "
        "with the stage boundaries marked.",
        epilog="examples:\n  envtune plot runs/qwen3-4b-envtuning\n"
        "  envtune plot runs/qwen3-4b-envtuning --out curves.png",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "run_dir", type=Path, metavar="RUN_DIR", help="a run folder of `envtune train` (or its metrics.jsonl)"
    )
    parser.add_argument("--out", type=Path, default=None, help="PNG to write (default: RUN_DIR/curves.png)")
    parser.set_defaults(func=run, validate=validate, uses_jax=False)


def validate(args) -> None:
    """Before anything is drawn: the metrics file exists, matplotlib is installed."""
    from envtune_jax.config import ConfigError

    args.metrics = args.run_dir / "logs" / "metrics.jsonl" if args.run_dir.is_dir() else args.run_dir
    if not args.metrics.is_file():
        raise FileNotFoundError(f"{args.metrics} does not exist: RUN_DIR is the run_dir of `envtune train`")
    if importlib.util.find_spec("matplotlib") is None:
        raise ConfigError(f"matplotlib is not installed; {INSTALL_HINT}")


def run(args) -> int:
    from envtune_jax.config import ConfigError
    from envtune_jax.rl.run_plot import plot_run

    out = args.out or (args.run_dir if args.run_dir.is_dir() else args.run_dir.parent) / "curves.png"
    try:
        written = plot_run(args.metrics, out)
    except ValueError as exc:  # no step logged yet
        raise ConfigError(str(exc)) from exc
    print(f"wrote {written}")
    return 0
