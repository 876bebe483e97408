"""How the command line answers bad input: one line on stderr, exit status 2, no traceback.

`OneLineParser` makes argparse's own errors one line too. `is_user_error` says which exceptions mean bad
input (a config value, a missing or malformed file, a checkpoint of another model); it looks the typed
errors up among the modules already imported, so that answering an error imports nothing heavy. Anything
else is a bug and keeps its traceback. `--debug`, anywhere on the line, shows the traceback of a user error.
"""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn, Sequence

EXIT_BAD_INPUT = 2
DEBUG_FLAG = "--debug"

# (module, class): exceptions that mean the input is wrong, not the program.
USER_ERRORS = (
    ("envtune_jax.config", "ConfigError"),
    ("envtune_jax.models.config", "NotAQwen3Checkpoint"),
    ("envtune_jax.models.hf_files", "CheckpointError"),
    ("envtune_jax.models.checkpointing", "CheckpointNotFound"),
    ("envtune_jax.environments.bfcl_data", "BfclDataMissingError"),
    ("envtune_jax.environments.eval_report", "EvalProgressMismatchError"),
    ("envtune_jax.environments.replay_files", "ReplayFileError"),
    ("envtune_jax.chat.tokenizer", "TokenizerLoadError"),
)


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line (`envtune eval: error: ... (see --help)`)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")


def split_debug(argv: Sequence[str]) -> tuple[list[str], bool]:
    """`argv` without `--debug` (accepted anywhere before a `--`), and whether it was there."""
    argv = list(argv)
    end = argv.index("--") if "--" in argv else len(argv)
    kept = [arg for arg in argv[:end] if arg != DEBUG_FLAG] + argv[end:]
    return kept, len(kept) != len(argv)


def is_user_error(exc: BaseException) -> bool:
    user_errors = [FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError]
    for module_name, class_name in USER_ERRORS:
        module = sys.modules.get(module_name)
        if module is not None and isinstance(getattr(module, class_name, None), type):
            user_errors.append(getattr(module, class_name))
    return isinstance(exc, tuple(user_errors))


def one_line(message: object) -> str:
    """`message` on one line (a multi-line message's lines joined with '; ')."""
    return "; ".join(part.strip() for part in str(message).splitlines() if part.strip())


def report(command: str | None, exc: BaseException) -> int:
    """Prints `exc` as the one line of a user error and returns the exit status."""
    prog = f"envtune {command}" if command else "envtune"
    print(f"{prog}: error: {one_line(exc)}", file=sys.stderr)
    return EXIT_BAD_INPUT
