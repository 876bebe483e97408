"""Entry point of `envtune`: builds the parser from the subcommand modules and dispatches.

Each subcommand lives in `envtune_jax/cli/<name>.py` and exposes `register(subparsers)`, which adds its
parser and sets `func` (called with the parsed namespace) and usually `validate`, which checks the
arguments before anything heavy is imported (envtune_jax/cli/validate.py); `uses_jax=False` marks a
subcommand that never starts JAX (`recipe`), which then skips the distributed and compile-cache set-up.
Bad input is answered with one line on stderr and exit status 2 (envtune_jax/cli/errors.py); `--debug`,
anywhere on the line, shows the traceback instead. Heavy imports (jax, transformers) happen inside `func`
so `envtune --help` stays fast.
"""

from __future__ import annotations

import argparse
import sys

from envtune_jax import __version__
from envtune_jax.cli import bench, convert, demo, export, generate, plot, recipe, train
from envtune_jax.cli import eval as evaluate
from envtune_jax.cli.errors import OneLineParser, is_user_error, report, split_debug

SUBCOMMANDS = (convert, export, generate, train, evaluate, plot, bench, demo, recipe)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="envtune",
        description="Environment Tuning for multi-turn tool-use agents (Qwen3, JAX/Flax NNX, BFCL V3).",
    )
    parser.add_argument("--version", action="version", version=f"envtune-jax {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help="show the full traceback of an error (accepted anywhere on the line)"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in SUBCOMMANDS:
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv, debug = split_debug(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.debug = debug
    try:
        validate = getattr(args, "validate", None)
        if validate is not None:
            validate(args)  # before JAX, transformers or any weights: a bad command fails in well under a second

        if getattr(args, "uses_jax", True):  # False: a subcommand that never starts JAX (`recipe show`)
            from envtune_jax import compile_cache
            from envtune_jax.mesh import initialize_distributed

            initialize_distributed()  # multi-host runs: every process must join before any JAX work
            compile_cache.enable(default_on=args.command != "bench")  # bench reports compile times: off by default
        result = args.func(args)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - narrowed just below
        if debug or not is_user_error(exc):
            raise
        return report(" ".join(filter(None, (args.command, getattr(args, "benchmark", None)))), exc)
    return int(result or 0)


def console() -> None:
    """The `envtune` program: `main()` under the Ctrl-C watchdog, ended without the interpreter's slow teardown
    (envtune_jax/interrupt.py says why)."""
    from envtune_jax import interrupt

    interrupt.install()
    try:
        code = main()
    except KeyboardInterrupt:  # before main's own handling (while the subcommands are imported)
        code = 130
        print("\ninterrupted", file=sys.stderr)
    interrupt.exit_now(code)


if __name__ == "__main__":
    console()
