"""`envtune recipe show RECIPE.yaml`: every setting of every stage beside the paper's figure (the recipe card)."""
from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "recipe", help="inspect a training recipe",
        description="Inspect a training recipe (configs/recipes/*.yaml) without loading a model.")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    show = actions.add_parser(
        "show", help="print every setting of every stage beside the paper's figure",
        description="Prints the recipe card: for each stage its data, budget (epochs, steps, which one binds), "
                    "reward, feedback, prompt and instructions, limits, batch, sampling, loss, optimizer and old "
                    "log-probs, each beside the paper's figure and whether they match. Overrides apply as in "
                    "`envtune train`.",
        epilog="examples:\n  envtune recipe show configs/recipes/qwen3_4b_instruct_2507.yaml\n"
               "  envtune recipe show configs/recipes/tiny_cpu.yaml --check",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    show.add_argument("recipe", type=Path, help="recipe YAML")
    show.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    show.add_argument("--check", action="store_true", help="exit with status 1 if a setting differs from the paper")
    show.set_defaults(func=run_show)


def run_show(args) -> int:
    from rl.recipe_card import card_rows, render_card
    from rl.run_config import load_run_config

    cfg, stages = load_run_config(args.recipe, args.overrides)
    print(render_card(cfg, stages, str(args.recipe)))
    differs = any(row.status == "differs" for row in card_rows(cfg, stages))
    return 1 if args.check and differs else 0
