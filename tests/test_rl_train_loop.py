"""`rl.train_loop.train` end to end on the tiny recipe, and resume at loop level.

Two one-step stages (syntax reward, then hints and progress reward). Run A goes straight through,
checkpointing after every step. Run B starts from a copy of A's step-1 checkpoint alone — the state a
run killed right after that save leaves — and must redo the stage boundary (export, reference reset)
and produce the same step 2 as A: same trajectories (tokens, rewards), same loss and gradient norm.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from rl.run_config import load_run_config
from rl.train_loop import train

RECIPE = Path(__file__).resolve().parents[1] / "configs" / "recipes" / "tiny_cpu.yaml"
COMPARED = ("loss", "grad_norm", "reward_mean", "tokens", "kl", "entropy")


def _config(run_dir: Path):
    return load_run_config(RECIPE, [
        f"run_dir={run_dir}", "stages=[../stages/stage1_syntax.yaml,../stages/stage2_hints.yaml]",
        "checkpoint.async_save=false", "checkpoint.keep=3", "logging.tensorboard=false",
        "logging.progress_bar=false", "sampler.batch_size=2", "rollout.max_new_tokens_per_step=6"])


def _metrics(run_dir: Path) -> dict[int, dict]:
    lines = (run_dir / "logs" / "metrics.jsonl").read_text().splitlines()
    return {record["step"]: record for record in map(json.loads, lines)}


@pytest.mark.xdist_group("train_loop")
def test_train_runs_the_curriculum_and_resumes_exactly_after_a_kill(tmp_path, capsys):
    straight = tmp_path / "straight"
    cfg, stages = _config(straight)
    assert [stage.max_steps for stage in stages] == [1, 1]
    train(cfg, stages)
    metrics = _metrics(straight)
    assert sorted(metrics) == [1, 2] and [metrics[1]["stage"], metrics[2]["stage"]] == [0, 1]
    for name in ("stage1_syntax", "stage2_hints"):
        assert (straight / "export" / name / "model.safetensors.index.json").exists() or \
            any((straight / "export" / name).glob("*.safetensors"))
    assert (straight / "final").is_dir() and (straight / "config.yaml").is_file()

    killed = tmp_path / "killed"
    (killed / "checkpoints").mkdir(parents=True)
    shutil.copytree(straight / "checkpoints" / "1", killed / "checkpoints" / "1")
    cfg, stages = _config(killed)
    capsys.readouterr()
    train(cfg, stages)
    assert "resumed from step 1 (stage stage1_syntax, step 1 of it)" in capsys.readouterr().err
    resumed = _metrics(killed)
    assert sorted(resumed) == [2]  # step 1 is not run again
    for key in COMPARED:
        assert resumed[2][key] == pytest.approx(metrics[2][key], rel=1e-5, abs=1e-7), key
    assert any((killed / "export" / "stage1_syntax").iterdir())  # the boundary was crossed again
