"""The README's pipeline and every `--help` example run at tiny size, and every relative link of the README and
docs/ resolves: a documented command cannot name a path that does not exist, or a flag that is gone.

Each documented command line is changed by these rules only, then run in order, in this process
(`envtune_jax.cli.main.main`), in a temporary folder that links the repository's `configs/`; each must exit 0:
- `~/models/<name>` (an HF checkpoint folder) → a tiny random Qwen3 in HF layout with the real Qwen3
  tokenizer (what `envtune demo` writes);
- `train --config RECIPE` → the tiny CPU recipe, given RECIPE's own `run_dir` and model source (so the
  commands after it find what RECIPE would have written), then TINY_TRAIN, then the command's own overrides;
- `eval` → + TINY_EVAL (one entry of one category; a model runs in float32 and writes ≤ 4 tokens a step),
  and `--out runs/example-N` when the example names no folder;
- `demo` → + TINY_DEMO; `generate` → + TINY_GENERATE; `--check` may exit 1 (it says a setting differs).
The `--help` examples of `train`, `demo` and of `eval` with a model would run again what the pipeline just
ran (another recipe or checkpoint source on the same code path): they are parsed by the real parser, their
recipes loaded with their overrides, and the checkpoints they read must exist. The commands share a
persistent compilation cache (a temporary folder), so the pipeline's two evaluations compile once.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest
import yaml

from envtune_jax.cli.main import build_parser, main

REPO = Path(__file__).resolve().parents[2]
PIPELINE_MARK = "<!-- pipeline:"
TINY_RECIPE = "configs/recipes/tiny_cpu.yaml"
# one stage (the tiny recipe's: one step of one prompt x 2 samples; the prompt alone is ~3.5k tokens of tool
# docs), ≤ 4 tokens a step, no KL reference
TINY_TRAIN = [
    "stages=[../stages/stage1_syntax.yaml]",
    "data.source=package",
    "sampler.batch_size=2",
    "rollout.max_new_tokens_per_step=4",
    "loss.kl_coef=0",
    "checkpoint.async_save=false",
    "logging.progress_bar=false",
]
TINY_EVAL = ["--limit", "1", "--categories", "base", "--data-source", "package"]
TINY_EVAL_MODEL = ["--max-new-tokens", "4", "--batch-size", "1", "--max-cache-len", "8192", "--dtype", "float32"]
TINY_DEMO = ["--skip-synthetic", "--eval-limit", "1"]
TINY_GENERATE = ["--max-new-tokens", "4"]
# examples that need an earlier one's output run after it (subcommands in this order, then the others)
ORDER = ("convert", "train", "export", "eval", "generate", "plot", "demo")


def readme_pipeline() -> list[list[str]]:
    """The `envtune` commands of the README's pipeline block, without the program name."""
    text = (REPO / "README.md").read_text()
    block = text[text.index(PIPELINE_MARK) :].split("```bash\n", 1)[1].split("```", 1)[0]
    return [shlex.split(line, comments=True)[1:] for line in block.splitlines() if line.startswith("envtune ")]


def _parsers(parser: argparse.ArgumentParser):
    """`parser` and every (sub)subcommand parser under it."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                yield from _parsers(child)


def help_examples() -> list[list[str]]:
    """The `envtune ...` lines of every (sub)subcommand's --help epilog, ORDER's subcommands first."""
    examples = []
    for parser in _parsers(build_parser()):
        for line in (parser.epilog or "").splitlines():
            line = re.sub(r"^\s*examples?:\s*", "", line).strip()
            if line.startswith("envtune "):
                examples.append(shlex.split(line, comments=True)[1:])
    rank = {name: i for i, name in enumerate(ORDER)}
    return sorted(examples, key=lambda argv: rank.get(argv[0], len(ORDER)))


def _value(argv: list[str], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv else None


def tiny(argv: list[str], hf_dir: Path, counter: list[int]) -> list[str]:
    """The rules of the module docstring."""
    argv = [str(hf_dir) if arg.startswith("~/models/") else arg for arg in argv]
    command = argv[0]
    if command == "train":
        at = argv.index("--config") + 1
        recipe = yaml.safe_load((REPO / argv[at]).read_text())
        model = recipe.get("model", {})
        source = [f"model.{key}={model[key]}" for key in ("hf", "ckpt", "preset") if model.get(key)]
        own = argv[at + 1 :]
        return [
            *argv[:at],
            TINY_RECIPE,
            f"run_dir={recipe['run_dir']}",
            "model.preset=null",
            *source,
            *TINY_TRAIN,
            *own,
        ]
    if command == "eval":
        model = _value(argv, "--ckpt") is not None or _value(argv, "--hf") is not None
        extra = TINY_EVAL + (TINY_EVAL_MODEL if model else [])
        if "--out" not in argv:
            counter[0] += 1
            extra += ["--out", f"runs/example-{counter[0]}"]
        return argv + extra
    if command == "demo":
        return argv + TINY_DEMO
    if command == "generate":
        return argv + TINY_GENERATE
    return argv


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    (tmp_path / "configs").symlink_to(REPO / "configs")
    monkeypatch.chdir(tmp_path)
    from envtune_jax.cli.demo import write_tiny_checkpoint

    return tmp_path, write_tiny_checkpoint(tmp_path / "models" / "qwen3-tiny")


def _run(argv: list[str]) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(argv)
    allowed = (0, 1) if "--check" in argv else (0,)  # `recipe show --check`: 1 says a setting differs from the paper
    assert code in allowed, (argv, out.getvalue()[-2000:])
    return out.getvalue()


def test_the_pipeline_block_is_the_five_documented_steps():
    commands = [argv[0] for argv in readme_pipeline()]
    assert commands == ["convert", "eval", "train", "eval", "export"]
    assert len(help_examples()) >= 10


@pytest.mark.slow
@pytest.mark.xdist_group("readme_pipeline")
def test_readme_pipeline_and_help_examples_run_at_tiny_size(workdir, compilation_cache, optimized_programs):
    tmp, hf_dir = workdir
    counter = [0]
    outputs = {}
    for argv in readme_pipeline():
        outputs[" ".join(argv)] = _run(tiny(argv, hf_dir, counter))
    trained = tmp / "runs" / "qwen3-4b-envtuning"
    assert (trained / "final").is_dir() and (trained / "export" / "stage1_syntax").is_dir()
    assert any((tmp / "hf" / "qwen3-4b-envtuned").glob("*.safetensors"))
    summary = next(text for command, text in outputs.items() if command.startswith("train"))
    assert (
        "training finished: 1 steps over 1 stages" in summary
        and "envtune eval --ckpt runs/qwen3-4b-envtuning/final" in summary
    )
    # what the README's "Watching a run" section opens
    assert (trained / "logs" / "tensorboard").is_dir()
    _run(["plot", "runs/qwen3-4b-envtuning"])
    assert (trained / "curves.png").is_file()

    for argv in help_examples():
        if argv[0] in ("train", "demo") or (argv[0] == "eval" and {"--hf", "--ckpt"} & set(argv)):
            check(tiny(argv, hf_dir, counter))
        else:
            _run(tiny(argv, hf_dir, counter))


def check(argv: list[str]) -> None:
    """A command line the pipeline's code path already ran: it parses, its recipe loads with its overrides,
    and the checkpoints it reads exist."""
    parsed = build_parser().parse_args(argv)
    sources = [getattr(parsed, name, None) for name in ("hf", "ckpt")]
    if argv[0] == "train":
        from envtune_jax.rl.run_config import load_run_config

        cfg, _ = load_run_config(parsed.config, parsed.overrides)
        sources += [cfg.model.hf, cfg.model.ckpt]
    for source in filter(None, sources):
        assert Path(source).is_dir(), (argv, source)


LINK = re.compile(r"\]\(([^)\s]+)\)")


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors of a Markdown text."""
    anchors = set()
    fence = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            fence = not fence
        if not fence and line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


def test_every_relative_link_of_the_readme_and_docs_resolves():
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        text = page.read_text()
        for target in LINK.findall(text):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            resolved = (page.parent / path).resolve() if path else page
            if not resolved.exists():
                broken.append(f"{page.name}: {target}")
            elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved.read_text()):
                broken.append(f"{page.name}: {target} (no such heading)")
    assert not broken, broken
