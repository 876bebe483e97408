"""`envtune train`: one stage or the whole curriculum from a recipe YAML; resumable with the same command.
Ends with a summary: reward and accuracy per stage, and where everything was written."""

from __future__ import annotations

import argparse
from pathlib import Path

from envtune_jax.cli import validate as check


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="run a training recipe (curriculum of GRPO stages); rerun to resume",
        description="Runs the stages listed by a recipe (configs/recipes/*.yaml): rollouts on BFCL "
        "environments, GRPO steps, validation, checkpoints, an HF export per stage. Running the "
        "same command again resumes from the newest checkpoint in run_dir that restores; a run_dir "
        "is used by one process at a time, resumes only with the settings it was trained with, "
        "and a finished run is left alone (docs/runs-and-checkpoints.md).",
        epilog="examples:\n"
        "  envtune train --config configs/recipes/tiny_cpu.yaml\n"
        "  envtune train --config configs/recipes/qwen3_4b_instruct_2507.yaml model.ckpt=ckpt/qwen3-4b-instruct-2507 "
        "optimizer.learning_rate=2e-6\n"
        "  envtune train --config configs/recipes/tiny_cpu.yaml 'stages=[../stages/stage2_hints.yaml]'",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", type=Path, required=True, help="recipe YAML")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    parser.add_argument(
        "--allow-config-change",
        action="store_true",
        help="resume a run with settings that differ from the ones it was trained with (each set "
        "is kept in run_dir/configs/ with the step it started at)",
    )
    parser.add_argument(
        "--rewrite-final",
        action="store_true",
        help="on a finished run: write final/ again from its last checkpoint (nothing is trained)",
    )
    parser.set_defaults(func=run, validate=validate)


def validate(args) -> None:
    args.run_config = check.recipe(args.config, args.overrides)


def run(args) -> int:
    import jax

    from envtune_jax.rl.run_summary import run_summary
    from envtune_jax.rl.train_loop import train

    cfg, stages = getattr(args, "run_config", None) or check.recipe(args.config, args.overrides)
    result = train(cfg, stages, allow_config_change=args.allow_config_change, rewrite_final=args.rewrite_final)
    if not result.final_written:  # a finished run, left alone (train said so)
        return 0
    if args.rewrite_final:
        print(f"final model written again to {result.run_dir / 'final'} (from the run's last checkpoint)")
        return 0
    if jax.process_index() == 0:
        print(run_summary(result.run_dir, [stage.name for stage in stages]), flush=True)
    return 0
