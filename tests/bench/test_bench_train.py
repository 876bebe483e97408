"""`envtune bench train` (envtune_jax/bench/train.py) on CPU with the tiny preset, its FLOP accounting,
and the model TFLOP/s / MFU metrics of a GRPO iteration (rl/grpo.py), which use the same device table."""

from __future__ import annotations

import contextlib
import io
import json
import math
import time
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from envtune_jax.bench.train import check_rows_split_over_mesh, model_flops_report, synthetic_batch
from envtune_jax.cli.main import main
from envtune_jax.config import ConfigError
from envtune_jax.environments.base import EpisodeOutcome
from envtune_jax.models.config import Qwen3Config, preset
from envtune_jax.models.qwen3 import Qwen3, init_model
from envtune_jax.rl.grpo import PolicyLearner, matmul_peak_flops
from envtune_jax.rl.rl_config import LossConfig
from envtune_jax.rl.rollout import Trajectory
from envtune_jax.rl.train_step import TrainState, TrainStepConfig

BATCH, SEQ_LEN, MICRO, STEPS = 2, 16, 1, 2


def _run_cli(argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(argv)
    return code, out.getvalue()


@pytest.fixture(scope="module")
def record() -> dict:
    code, text = _run_cli(
        [
            "bench",
            "train",
            "--preset",
            "tiny",
            "--random-weights",
            "--batch",
            str(BATCH),
            "--seq-len",
            str(SEQ_LEN),
            "--micro-batch",
            str(MICRO),
            "--remat",
            "full",
            "--steps",
            str(STEPS),
            "--dtype",
            "float32",
        ]
    )
    assert code == 0
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return json.loads(lines[0])


def test_bench_train_prints_the_promised_fields(record):
    for key in (
        "tokens_per_s",
        "step_s",
        "compile_s",
        "model_tflops_per_s",
        "mfu",
        "remat",
        "device_kind",
        "jax",
        "first_step_s",
        "step_s_median",
        "limits",
        "params",
        "padded_shape",
        "loss",
    ):
        assert key in record, key
    assert record["benchmark"] == "train" and record["model"] == "tiny"
    assert (record["batch"], record["seq_len"], record["micro_batch"], record["steps"]) == (
        BATCH,
        SEQ_LEN,
        MICRO,
        STEPS,
    )
    assert record["remat"] == "full" and record["dtype"] == "float32"
    assert record["device_kind"] == jax.devices()[0].device_kind and record["jax"] == jax.__version__
    assert record["num_devices"] == 1 and record["mesh"] is None


def test_bench_train_numbers_are_positive_and_consistent(record):
    for key in ("tokens_per_s", "step_s", "step_s_min", "compile_s", "first_step_s", "model_tflops_per_s", "mfu"):
        assert record[key] > 0, key
    assert record["step_s_min"] <= record["step_s_median"] and record["step_s_min"] <= record["step_s"]
    assert record["compile_s"] < record["first_step_s"]  # compiled inside the warm-up step, timed apart
    assert record["tokens_per_step"] == BATCH * SEQ_LEN
    assert record["tokens_per_s"] == pytest.approx(BATCH * SEQ_LEN / record["step_s"], rel=1e-9)
    assert record["model_tflops_per_s"] == pytest.approx(6 * record["params"] * record["tokens_per_s"] / 1e12, rel=1e-9)
    assert record["mfu"] == pytest.approx(
        record["model_tflops_per_s"] * 1e12 / record["limits"]["matmul_flops_per_s"], rel=1e-9
    )
    assert math.isfinite(record["loss"])
    # every token after the first went through the vocabulary projection
    assert record["model_tokens"] == BATCH * (SEQ_LEN - 1)
    assert record["padded_shape"] == {"T": SEQ_LEN, "K": SEQ_LEN}


def test_bench_train_counts_the_parameters_the_model_has(record):
    cfg = preset("tiny")
    abstract = nnx.eval_shape(lambda: Qwen3(cfg, rngs=nnx.Rngs(0)))
    sizes = [x.size for x in jax.tree.leaves(nnx.state(abstract, nnx.Param))]
    assert record["params"] == sum(sizes) == cfg.num_params


def test_model_flops_reproduce_the_peer_baseline_figures():
    """docs/benchmarks.md (the peers' figures): Qwen3-4B has 4.02e9 parameters; the peer's 11,074 tok/s
    (batch 8 x 2048) is 267 model-TFLOP/s, i.e. 34% of the H100's measured 789 TFLOP/s."""
    params = preset("qwen3-4b-instruct-2507").num_params
    assert params == pytest.approx(4.02e9, rel=1e-3)
    peer = model_flops_report(params, 8 * 2048, 8 * 2048 / 11_074, 789e12)
    assert peer["tokens_per_s"] == pytest.approx(11_074)
    assert peer["model_tflops_per_s"] == pytest.approx(267, abs=0.5)
    assert peer["mfu"] == pytest.approx(267 / 789, abs=1e-3)


def test_synthetic_batch_trains_every_position_after_the_first():
    batch = synthetic_batch(3, 20, 151936, seed=0)
    tokens = np.asarray(batch.tokens_bt)
    assert tokens.shape == (3, 32) and tokens.min() >= 0 and tokens[:, :20].max() < 151936
    mask, index = np.asarray(batch.mask_bk), np.asarray(batch.target_index_bk)
    assert mask.shape == (3, 32) and mask.sum() == 3 * 19
    for row in range(3):
        assert index[row, mask[row] > 0].tolist() == list(range(1, 20))
    np.testing.assert_allclose(np.asarray(batch.old_logprobs_bk)[mask > 0], -np.log(151936), rtol=1e-6)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--batch", "2"], "--random-weights"),
        (["--random-weights", "--batch", "3", "--micro-batch", "2"], "--micro-batch 2 must divide --batch 3"),
        (["--random-weights", "--seq-len", "1"], "--seq-len must be ≥ 2"),
    ],
)
def test_bench_train_rejects_bad_arguments(argv, message, capsys):
    assert main(["bench", "train", "--preset", "tiny", *argv]) == 2
    assert message in capsys.readouterr().err


def test_rows_must_split_over_the_data_parallel_devices():
    mesh = SimpleNamespace(axis_names=("data", "fsdp", "tensor"), axis_sizes=(2, 2, 2))
    check_rows_split_over_mesh(8, 4, mesh)
    check_rows_split_over_mesh(8, 0, mesh)  # 0: the whole batch at once
    check_rows_split_over_mesh(3, 0, None)  # no mesh, no constraint
    with pytest.raises(ConfigError, match="--micro-batch 2 is not a multiple of the 4 data-parallel devices"):
        check_rows_split_over_mesh(8, 2, mesh)
    with pytest.raises(ConfigError, match="--batch 6 is not a multiple"):
        check_rows_split_over_mesh(6, 0, mesh)


# --- model TFLOP/s and MFU in the GRPO iteration's metrics (rl/grpo.py) ------------------------------


def test_matmul_peak_is_the_device_table_times_the_devices():
    assert matmul_peak_flops(jax.devices()) is None  # CPU: not in the table, no MFU
    h100 = SimpleNamespace(device_kind="NVIDIA H100 80GB HBM3")
    assert matmul_peak_flops([h100] * 8) == pytest.approx(8 * 789e12)
    assert matmul_peak_flops([SimpleNamespace(device_kind="NVIDIA H200")]) == pytest.approx(788e12)


class _TimedTrainer:
    """Stands in for Trainer: init keeps the params; step takes a known wall time and returns a loss."""

    step_cfg = TrainStepConfig()

    def init(self, params):
        return TrainState(params, None, jnp.zeros((), jnp.int32))

    def step(self, state, ref_params, batch):
        time.sleep(0.02)
        return state, {"loss": jnp.float32(0.5)}


def _trajectory(group: int, length: int) -> Trajectory:
    ids = np.arange(length, dtype=np.int32) % 64
    mask = (np.arange(length) >= length // 2).astype(np.int32)
    outcome = EpisodeOutcome("e", [1.0], float(group), 0.0, 0.0, float(group), bool(group), {})
    return Trajectory(
        f"e{group}", "synthetic", group, ids, mask, np.where(mask > 0, -4.0, 0.0).astype(np.float32), outcome, False
    )


def test_grpo_iteration_reports_model_tflops_and_mfu_only_on_known_devices():
    cfg = Qwen3Config(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=8
    )
    engine = SimpleNamespace(extend_tokens={"appended": 0, "prefix_appended": 0}, mesh=None)
    learner = PolicyLearner(init_model(cfg), engine, _TimedTrainer(), None, LossConfig(kl_coef=0.0))
    trajectories = [_trajectory(g, n) for g, n in ((0, 12), (0, 9), (1, 16), (1, 7))]
    learner.rollout = lambda *args, **kwargs: trajectories
    phases = []
    metrics, _ = learner.iterate([[None, None], [None, None]], None, None, None, 0, on_phase=phases.append)
    assert phases == ["update"]  # (the rollout's own phases come from run_rollouts)
    assert metrics["tokens"] == 12 + 9 + 16 + 7 and metrics["train_s"] >= 0.02
    assert metrics["train_tflops"] == pytest.approx(
        6 * cfg.num_params * metrics["tokens"] / metrics["train_s"] / 1e12, rel=1e-12
    )
    assert "mfu" not in metrics  # CPU
    learner.peak_flops = matmul_peak_flops([SimpleNamespace(device_kind="NVIDIA H100 80GB HBM3")] * 2)
    metrics, _ = learner.iterate([[None, None], [None, None]], None, None, None, 0)
    assert metrics["mfu"] == pytest.approx(metrics["train_tflops"] * 1e12 / (2 * 789e12), rel=1e-12)
