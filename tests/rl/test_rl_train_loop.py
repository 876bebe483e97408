"""`envtune_jax.rl.train_loop.train` end to end on the tiny recipe, and resume at loop level.

Two one-step stages (syntax reward, then hints and progress reward). Run A goes straight through,
checkpointing after every step, and is recorded as finished: running it again does nothing (unless asked
to write final/ again). Run B is a
copy of A's directory whose step-2 checkpoint has a truncated file, and whose metrics log already holds
step 2 (as after a kill before that checkpoint). Resumed with a changed learning rate, B is
refused; allowed, it falls back to the step-1 checkpoint (written at the stage boundary), starts stage 2
and produces the same step 2 as A — same trajectories (tokens, rewards), same loss and gradient norm
(the learning rate acts only after them) — logged once, with both sets of settings kept.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from envtune_jax.cli.main import main
from envtune_jax.rl.run_config import load_run_config
from envtune_jax.rl.run_dir import SettingsChanged
from envtune_jax.rl.train_loop import train

RECIPE = Path(__file__).resolve().parents[2] / "configs" / "recipes" / "tiny_cpu.yaml"
COMPARED = ("loss", "grad_norm", "reward_mean", "tokens", "kl", "entropy")


def _overrides(run_dir: Path, *more: str) -> list[str]:
    return [
        f"run_dir={run_dir}",
        "stages=[../stages/stage1_syntax.yaml,../stages/stage2_hints.yaml]",
        "checkpoint.async_save=false",
        "checkpoint.keep=3",
        "logging.tensorboard=false",
        "logging.progress_bar=false",
        "sampler.batch_size=2",
        "rollout.max_new_tokens_per_step=6",
        *more,
    ]


def _config(run_dir: Path, *overrides: str):
    return load_run_config(RECIPE, _overrides(run_dir, *overrides))


def _metrics(run_dir: Path) -> dict[int, dict]:
    lines = (run_dir / "logs" / "metrics.jsonl").read_text().splitlines()
    return {record["step"]: record for record in map(json.loads, lines)}


@pytest.mark.xdist_group("train_loop")
def test_train_runs_the_curriculum_and_resumes_exactly_after_a_kill(tmp_path, capsys, optimized_programs):
    straight = tmp_path / "straight"
    cfg, stages = _config(straight)
    assert [stage.max_steps for stage in stages] == [1, 1]
    assert train(cfg, stages).final_written
    metrics = _metrics(straight)
    assert sorted(metrics) == [1, 2] and [metrics[1]["stage"], metrics[2]["stage"]] == [0, 1]
    for name in ("stage1_syntax", "stage2_hints"):
        assert (straight / "export" / name / "model.safetensors.index.json").exists() or any(
            (straight / "export" / name).glob("*.safetensors")
        )
    assert (straight / "final").is_dir() and (straight / "config.yaml").is_file()
    assert json.loads((straight / "finished.json").read_text())["step"] == 2
    assert [p.name for p in (straight / "configs").iterdir()] == ["config.step0.yaml"]
    assert not (straight / ".envtune.lock").exists()

    # A finished run run again (the command): said so, nothing rewritten, nothing claimed written.
    final_files = {p: p.stat().st_mtime_ns for p in (straight / "final").rglob("*")}
    capsys.readouterr()
    assert main(["train", "--config", str(RECIPE), *_overrides(straight)]) == 0
    said = capsys.readouterr()
    assert "this run finished at step 2 (stage1_syntax, stage2_hints)" in said.err and "written" not in said.out
    assert {p: p.stat().st_mtime_ns for p in (straight / "final").rglob("*")} == final_files
    assert sorted(_metrics(straight)) == [1, 2]
    train(cfg, stages, rewrite_final=True)  # asked: final/ again from the last checkpoint, nothing trained
    assert "resumed from step 2: every stage is done" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in (straight / "final").rglob("*")} != final_files
    assert _metrics(straight) == metrics

    killed = tmp_path / "killed"
    (killed / "checkpoints").mkdir(parents=True)
    for step in ("1", "2"):
        shutil.copytree(straight / "checkpoints" / step, killed / "checkpoints" / step)
    for name in ("logs", "configs", "stages"):
        shutil.copytree(straight / name, killed / name)
    shutil.copy(straight / "config.yaml", killed / "config.yaml")
    manifest = killed / "checkpoints" / "2" / "params" / "manifest.ocdbt"
    manifest.write_bytes(manifest.read_bytes()[:10])
    changed, stages = _config(killed, "optimizer.learning_rate=2e-4")
    with pytest.raises(SettingsChanged, match=r"optimizer\.learning_rate: 0\.0001 → 0\.0002.*--allow-config-change"):
        train(changed, stages)
    capsys.readouterr()
    train(changed, stages, allow_config_change=True)
    err = capsys.readouterr().err
    assert "checkpoint step 2 (ValueError: " in err and "resuming from step 1, the newest that restores" in err
    assert "resumed from step 1, at the start of stage stage2_hints" in err
    assert (killed / "unreadable_checkpoints" / "2").is_dir()
    lines = [json.loads(line) for line in (killed / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2]  # one line per step
    resumed = _metrics(killed)
    assert resumed[1] == metrics[1]  # kept from before the kill
    for key in COMPARED:
        assert resumed[2][key] == pytest.approx(metrics[2][key], rel=1e-5, abs=1e-7), key
    assert sorted(p.name for p in (killed / "configs").iterdir()) == ["config.step0.yaml", "config.step1.yaml"]
    assert json.loads((killed / "finished.json").read_text())["step"] == 2
    assert any((killed / "export" / "stage2_hints").iterdir()) and (killed / "final").is_dir()
