"""Every import inside the CLI's functions resolves (they run only when a subcommand runs, so a renamed
helper would otherwise surface only in a long run such as `envtune demo`)."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

CLI_DIR = Path(__file__).resolve().parents[2] / "envtune_jax" / "cli"


def _deferred_imports(path: Path) -> list[tuple[str, str]]:
    """(module, name) of every `from module import name` inside a function of `path`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for inner in ast.walk(node):
                if isinstance(inner, ast.ImportFrom) and inner.level == 0 and inner.module:
                    found.extend((inner.module, alias.name) for alias in inner.names)
    return found


@pytest.mark.parametrize("path", sorted(CLI_DIR.glob("*.py")), ids=lambda p: p.name)
def test_every_deferred_import_of_the_cli_resolves(path):
    missing = []
    for module_name, name in _deferred_imports(path):
        module = importlib.import_module(module_name)
        if not hasattr(module, name):
            try:
                importlib.import_module(f"{module_name}.{name}")
            except ImportError:
                missing.append(f"{module_name}.{name}")
    assert not missing, f"{path.name}: {missing}"
