"""Entry point of `envtune`: builds the parser from the subcommand modules and dispatches.

Each subcommand lives in `envtune_jax/cli/<name>.py` and exposes `register(subparsers)`, which adds
its parser and sets `func` (called with the parsed namespace). Heavy imports (jax, transformers)
happen inside those functions so `envtune --help` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS = ("convert", "export", "generate", "train", "eval", "plot", "bench", "demo")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="envtune",
        description="Environment Tuning for multi-turn tool-use agents (Qwen3, JAX/Flax NNX, BFCL V3).",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"envtune_jax.cli.{name}")
        except ModuleNotFoundError as exc:  # a subcommand still being built on this branch
            if exc.name != f"envtune_jax.cli.{name}":
                raise
            continue
        module.register(subparsers)
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input: printed as one line, no traceback (unless --debug)."""
    from envtune_jax.config import ConfigError
    from models.config import NotAQwen3Checkpoint
    from models.hf_io import CheckpointError

    errors: list[type[BaseException]] = [ConfigError, NotAQwen3Checkpoint, CheckpointError, FileNotFoundError]
    try:
        from environments.bfcl_data import BfclDataMissingError
        errors.append(BfclDataMissingError)
    except ImportError:
        pass
    return tuple(errors)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    args = parser.parse_args(argv)
    try:
        from envtune_jax import compile_cache
        from envtune_jax.mesh import initialize_distributed

        initialize_distributed()  # multi-host runs: every process must join before any JAX work
        compile_cache.enable(default_on=args.command != "bench")  # bench reports compile times: off by default
        result = args.func(args)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - narrowed just below
        if args.debug or not isinstance(exc, _user_errors()):
            raise
        print(f"envtune {args.command}: error: {exc}", file=sys.stderr)
        return 2
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
