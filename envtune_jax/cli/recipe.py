"""`envtune recipe show RECIPE.yaml`: every setting of every stage beside the paper's figure (the recipe card).

The recipe is loaded and checked in `validate` (bad input: one line, exit 2); the card needs no model and
no JAX, so the command skips the JAX set-up of the other subcommands. `--check` exits with status 1 when a
setting differs from the paper.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from envtune_jax.cli import validate as check

EXIT_DIFFERS = 1


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "recipe",
        help="inspect a training recipe",
        description="Inspect a training recipe (configs/recipes/*.yaml) without loading a model.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    show = actions.add_parser(
        "show",
        help="print every setting of every stage beside the paper's figure",
        description="Prints the recipe card: for each stage its data, budget (epochs, steps, which one binds), "
        "reward, feedback, prompt and instructions, limits, batch, sampling, loss, optimizer and old "
        "log-probs, each beside the paper's figure and whether they match. Overrides apply as in "
        "`envtune train`.",
        epilog="examples:\n  envtune recipe show configs/recipes/qwen3_4b_instruct_2507.yaml\n"
        "  envtune recipe show configs/recipes/tiny_cpu.yaml --check",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    show.add_argument("recipe", type=Path, help="recipe YAML")
    show.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    show.add_argument(
        "--check", action="store_true", help=f"exit with status {EXIT_DIFFERS} if a setting differs from the paper"
    )
    show.set_defaults(func=run_show, validate=validate, uses_jax=False)


def validate(args) -> None:
    args.run_config = check.recipe_settings(args.recipe, args.overrides, what="recipe")


def run_show(args) -> int:
    from envtune_jax.rl.recipe_card import card_rows, render_card

    cfg, stages = getattr(args, "run_config", None) or check.recipe_settings(args.recipe, args.overrides, "recipe")
    print(render_card(cfg, stages, str(args.recipe)))
    differs = any(row.status == "differs" for row in card_rows(cfg, stages))
    return EXIT_DIFFERS if args.check and differs else 0
