"""The end-of-training summary (rl/run_summary.py) and `envtune plot` (rl/run_plot.py) on a run folder
as `envtune train` leaves it: metrics.jsonl with a step logged twice (a resume) and a line cut short."""

from __future__ import annotations

import importlib.util
import json
import warnings

import pytest

from envtune_jax.cli.main import main
from envtune_jax.rl.run_plot import stage_starts
from envtune_jax.rl.run_summary import load_step_metrics, run_summary, stage_table

STAGES = ["stage1_syntax", "stage2_hints", "stage3_hard"]


def _record(step: int, stage: int, reward: float, accuracy: float, **extra) -> dict:
    return {
        "step": step,
        "stage": stage,
        "stage_name": STAGES[stage],
        "reward_mean": reward,
        "accuracy": accuracy,
        "kl": 0.01 * step,
        "entropy": 2.0 - 0.1 * step,
        "grad_norm": 1.0 + step,
        **extra,
    }


@pytest.fixture
def run_dir(tmp_path):
    run = tmp_path / "run"
    (run / "logs").mkdir(parents=True)
    lines = [
        _record(1, 0, 0.1, 0.0),
        _record(2, 0, 0.3, 0.5, **{"val/accuracy": 0.25}),
        _record(3, 1, 9.9, 9.9),  # logged before a kill ...
        _record(3, 1, 0.4, 0.5),
        _record(4, 1, 0.6, 1.0),
    ]  # ... and again after the resume
    text = "\n".join(json.dumps(line) for line in lines) + '\n{"step": 5, "stage": 1, "rew'  # cut short
    (run / "logs" / "metrics.jsonl").write_text(text)
    (run / "config.yaml").write_text("run_dir: run\n")
    for name in STAGES[:2]:
        (run / "export" / name).mkdir(parents=True)
    (run / "checkpoints" / "4").mkdir(parents=True)
    (run / "final").mkdir()
    return run


def test_metrics_are_read_one_record_per_step(run_dir):
    records = load_step_metrics(run_dir)
    assert [r["step"] for r in records] == [1, 2, 3, 4] and records[2]["reward_mean"] == 0.4


def test_summary_gives_reward_and_accuracy_per_stage_and_the_written_paths(run_dir):
    table = stage_table(load_step_metrics(run_dir), STAGES).splitlines()
    assert table[0].split("  ")[0] == "stage"
    assert table[1].split() == [
        "stage1_syntax",
        "2",
        "0.200",
        "(0.100",
        "→",
        "0.300)",
        "0.250",
        "(0.000",
        "→",
        "0.500)",
        "0.250",
    ]
    assert table[2].split() == [
        "stage2_hints",
        "2",
        "0.500",
        "(0.400",
        "→",
        "0.600)",
        "0.750",
        "(0.500",
        "→",
        "1.000)",
        "-",
    ]
    assert table[3].split() == ["stage3_hard", "0", "-", "-", "-"]  # never reached
    summary = run_summary(run_dir, STAGES)
    assert summary.startswith("training finished: 4 steps over 3 stages")
    for path in ("config.yaml", "logs/metrics.jsonl", "export/stage1_syntax", "export/stage2_hints", "final"):
        assert f"{run_dir / path}  " in summary or f"{run_dir / path} " in summary, path
    assert "latest: step 4" in summary and f"envtune plot {run_dir}" in summary
    assert f"envtune eval --ckpt {run_dir / 'final'}" in summary
    assert "export/stage3_hard" not in summary and "tensorboard" not in summary  # only what exists


def test_plot_draws_the_curves_with_the_stage_boundaries(run_dir, capsys):
    assert stage_starts(load_step_metrics(run_dir)) == [(1, "stage1_syntax"), (3, "stage2_hints")]
    assert main(["plot", str(run_dir)]) == 0
    png = run_dir / "curves.png"
    assert capsys.readouterr().out.strip() == f"wrote {png}"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    out = run_dir / "elsewhere" / "c.png"
    assert main(["plot", str(run_dir / "logs" / "metrics.jsonl"), "--out", str(out)]) == 0 and out.is_file()
    one_step = run_dir / "one-step.jsonl"  # a run's first step: no layout warning, the stage label inside
    one_step.write_text(json.dumps(_record(1, 0, 0.0, 0.0)) + "\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert main(["plot", str(one_step)]) == 0


def test_plot_errors_are_one_line(run_dir, tmp_path, capsys, monkeypatch):
    assert main(["plot", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("envtune plot: error:") and "nowhere" in err and len(err.splitlines()) == 1
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real_find_spec(name, *a)
    )
    assert main(["plot", str(run_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "envtune plot: error: matplotlib is not installed; pip install 'envtune-jax[plot]'"
    assert not (run_dir / "curves.png").exists()
