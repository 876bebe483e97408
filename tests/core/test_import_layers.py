"""The layers import one way, no modules import each other in a circle, nothing is imported by a string,
and the installed distribution holds one top-level package.

Layers, lowest first (a module may import its own layer and the ones below it):
    core          envtune_jax/*.py: config, mesh, sharding, device limits, files, progress
    models, chat  models/ (Qwen3, generation engine, weights I/O), envtune_jax/chat/ (Qwen's text format)
    environments  environments/ (BFCL and synthetic tool environments, evaluation)
    rl            rl/ (rollouts, losses, trainer, the GRPO loop)
    commands      envtune_jax/cli/, envtune_jax/bench/, benchmarks/*.py
Imports inside functions count like any other (they only defer loading, they do not change the direction).
"""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# folder in the repository -> package name once installed
FOLDERS = {
    "envtune_jax": "envtune_jax",
    "models": "envtune_jax.models",
    "rl": "envtune_jax.rl",
    "environments": "envtune_jax.environments",
}
LAYERS = (  # (layer, rank, module prefixes); the longest matching prefix decides
    ("core", 0, ("envtune_jax",)),
    ("models", 1, ("envtune_jax.models",)),
    ("chat", 1, ("envtune_jax.chat",)),
    ("environments", 2, ("envtune_jax.environments",)),
    ("rl", 3, ("envtune_jax.rl",)),
    ("commands", 4, ("envtune_jax.cli", "envtune_jax.bench", "benchmarks")),
)


def layer_of(module: str) -> tuple[str, int]:
    best = max(
        (
            (len(p), name, rank)
            for name, rank, prefixes in LAYERS
            for p in prefixes
            if module == p or module.startswith(p + ".")
        ),
        default=None,
    )
    if best is None:
        raise AssertionError(f"{module} is in no layer")
    return best[1], best[2]


def source_modules() -> dict[str, Path]:
    """Every module of the package (installed name) and every benchmark script, with its file."""
    modules = {}
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            modules[".".join((package, *parts))] = path
    for path in sorted((ROOT / "benchmarks").glob("*.py")):
        modules[f"benchmarks.{path.stem}"] = path
    return modules


def imports_of(path: Path, modules: dict[str, Path]) -> list[tuple[str, int]]:
    """(imported module of ours, line) for every import statement in the file, at any depth. `from pkg import
    name` counts as an import of pkg.name when that is a module, else of pkg."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [
                f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module for a in node.names
            ]
        elif isinstance(node, ast.ImportFrom):
            raise AssertionError(f"{path}:{node.lineno}: relative import; write the full name")
        else:
            continue
        for name in names:
            while name and name not in modules:  # `import a.b.c` of a function or class: its module
                name = name.rpartition(".")[0]
            if name:
                found.append((name, node.lineno))
    return found


def import_graph() -> dict[str, dict[str, int]]:
    modules = source_modules()
    return {
        m: {target: line for target, line in imports_of(path, modules) if target != m} for m, path in modules.items()
    }


def wrong_way(graph: dict[str, dict[str, int]]) -> list[str]:
    problems = []
    for source, targets in graph.items():
        source_layer, source_rank = layer_of(source)
        for target, line in targets.items():
            target_layer, target_rank = layer_of(target)
            if target_layer != source_layer and target_rank >= source_rank:
                problems.append(f"{source}:{line} ({source_layer}) imports {target} ({target_layer})")
    return problems


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, found, counter = {}, {}, set(), [], [], [0]
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(graph[start]))]
        index[start] = low[start] = counter[0]
        counter[0] += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(graph.get(child, {}))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_walker_sees_imports_at_every_depth():
    graph = import_graph()
    assert "envtune_jax.device_limits" in graph["envtune_jax.rl.grpo"]  # a module-level import
    # imports inside functions: the CLI loads the trainer only when `envtune train` runs
    assert "envtune_jax.rl.train_loop" in graph["envtune_jax.cli.train"]
    assert wrong_way({"envtune_jax.models.qwen3": {"envtune_jax.rl.grpo": 3}}) == [
        "envtune_jax.models.qwen3:3 (models) imports envtune_jax.rl.grpo (rl)"
    ]
    assert wrong_way({"envtune_jax.models.qwen3": {"envtune_jax.chat.render": 3}})  # same rank, other layer
    assert cycles({"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}, "d": {"a": 1}}) == [["a", "b", "c"]]


def test_layers_import_one_way():
    assert wrong_way(import_graph()) == []


def test_no_modules_import_each_other_in_a_circle():
    assert cycles(import_graph()) == []


# Modules named by data, not by us: the BFCL API classes an entry lists (bfcl_eval's own modules).
IMPORTS_BY_NAME = {"envtune_jax.environments.executor", "envtune_jax.environments.tool_host"}


def test_nothing_of_ours_is_imported_by_a_string():
    offenders = []
    for module, path in source_modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                func = node.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                if name in ("import_module", "__import__") and module not in IMPORTS_BY_NAME:
                    offenders.append(f"{module}:{node.lineno}")
    assert offenders == []


def test_the_distribution_lists_every_package_folder_under_envtune_jax():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapping = {package: folder for package, folder in setuptools["package-dir"].items()}
    expected = set()
    for folder, package in FOLDERS.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            parts = init.parent.relative_to(ROOT / folder).parts
            expected.add(".".join((package, *parts)))
    assert set(setuptools["packages"]) == expected
    assert mapping == {package: folder for folder, package in FOLDERS.items() if folder != "envtune_jax"}


@pytest.mark.slow
def test_the_wheel_installs_one_top_level_package(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (wheel,) = tmp_path.glob("envtune_jax-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {name.split("/")[0] for name in names if ".dist-info/" not in name} == {"envtune_jax"}
    for module in (
        "envtune_jax/models/qwen3.py",
        "envtune_jax/rl/grpo_loop.py",
        "envtune_jax/environments/tool_host.py",
        "envtune_jax/models/generation/engine.py",
    ):
        assert module in names
