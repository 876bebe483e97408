"""`envtune train`: one stage or the whole curriculum from a recipe YAML; resumable with the same command.
Ends with a summary: reward and accuracy per stage, and where everything was written."""
from __future__ import annotations

import argparse
from pathlib import Path

from envtune_jax.cli import validate as check


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", help="run a training recipe (curriculum of GRPO stages); rerun to resume",
        description="Runs the stages listed by a recipe (configs/recipes/*.yaml): rollouts on BFCL "
                    "environments, GRPO steps, validation, checkpoints, an HF export per stage. Running the "
                    "same command again resumes from the latest complete checkpoint in run_dir.",
        epilog="examples:\n"
               "  envtune train --config configs/recipes/tiny_cpu.yaml\n"
               "  envtune train --config configs/recipes/qwen3_4b_instruct_2507.yaml model.ckpt=ckpt/qwen3-4b-instruct-2507 "
               "optimizer.learning_rate=2e-6\n"
               "  envtune train --config configs/recipes/tiny_cpu.yaml 'stages=[../stages/stage2_hints.yaml]'",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True, help="recipe YAML")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    parser.set_defaults(func=run, validate=validate)


def validate(args) -> None:
    args.run_config = check.recipe(args.config, args.overrides)


def run(args) -> int:
    import jax

    from rl.run_summary import run_summary
    from rl.train_loop import train

    cfg, stages = getattr(args, "run_config", None) or check.recipe(args.config, args.overrides)
    run_dir = train(cfg, stages)
    if jax.process_index() == 0:
        print(run_summary(run_dir, [stage.name for stage in stages]), flush=True)
    return 0
