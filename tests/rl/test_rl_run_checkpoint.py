"""Run checkpoints: resume continues exactly; a save killed mid-way never becomes the latest; a checkpoint
damaged afterwards is set aside and the newest one that restores is used."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from envtune_jax.models.config import Qwen3Config
from envtune_jax.models.hf_io import CheckpointError
from envtune_jax.models.qwen3 import init_model
from envtune_jax.rl.batch import dense_to_packed
from envtune_jax.rl.optimizer import OptimizerConfig
from envtune_jax.rl.rl_config import LossConfig
from envtune_jax.rl.run_checkpoint import RunCheckpointer
from envtune_jax.rl.train_step import Trainer, TrainStepConfig

CFG = Qwen3Config(
    vocab_size=64, hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=8
)


def _batch(seed):
    rng = np.random.RandomState(seed)
    tokens = rng.randint(0, 64, (2, 12))
    mask = np.array([[0] * 4 + [1] * 8] * 2, np.float32)
    return dense_to_packed(tokens, mask, -4.0 * mask, np.array([1.0, -1.0]))


def test_resume_gives_the_same_next_step_loss(tmp_path):
    graphdef, params = nnx.split(init_model(CFG, seed=0), nnx.Param)
    trainer = Trainer(graphdef, LossConfig(), OptimizerConfig(learning_rate=1e-2), TrainStepConfig())
    ref = jax.tree.map(jnp.copy, params)
    state = trainer.init(jax.tree.map(jnp.copy, params))
    for i in range(2):
        state, _ = trainer.step(state, ref, _batch(i))
    checkpointer = RunCheckpointer(tmp_path / "ckpt", keep=2)
    checkpointer.save(
        2, state, ref, {"step": 2, "stage": "stage2", "rng": [1, 2], "data_position": 7, "history": [0.5]}
    )
    checkpointer.wait()
    _, uninterrupted = trainer.step(jax.tree.map(jnp.copy, state), ref, _batch(2))

    fresh = trainer.init(jax.tree.map(jnp.zeros_like, params))
    restored_state, restored_ref, record = RunCheckpointer(tmp_path / "ckpt").restore(
        fresh, jax.tree.map(jnp.zeros_like, params)
    )
    assert record["stage"] == "stage2" and record["data_position"] == 7 and int(restored_state.step) == 2
    _, resumed = trainer.step(restored_state, restored_ref, _batch(2))
    assert float(resumed["loss"]) == float(uninterrupted["loss"])
    checkpointer.close()


def test_incomplete_save_is_ignored(tmp_path):
    graphdef, params = nnx.split(init_model(CFG, seed=0), nnx.Param)
    trainer = Trainer(graphdef, LossConfig(), OptimizerConfig(), TrainStepConfig())
    state = trainer.init(params)
    checkpointer = RunCheckpointer(tmp_path / "ckpt", async_save=False)
    checkpointer.save(1, state, params, {"step": 1})
    checkpointer.close()
    # what a kill during the write of step 2 leaves behind: a temporary folder, never finalised
    (tmp_path / "ckpt" / "2.orbax-checkpoint-tmp-123").mkdir()
    (tmp_path / "ckpt" / "2.orbax-checkpoint-tmp-123" / "params").mkdir()
    reopened = RunCheckpointer(tmp_path / "ckpt")
    assert reopened.latest_step() == 1
    assert reopened.restore(trainer.init(params), params)[2]["step"] == 1
    reopened.close()


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_an_unreadable_latest_checkpoint_falls_back_to_the_newest_that_restores(tmp_path):
    graphdef, params = nnx.split(init_model(CFG, seed=0), nnx.Param)
    trainer = Trainer(graphdef, LossConfig(), OptimizerConfig(), TrainStepConfig())
    state = trainer.init(params)
    checkpointer = RunCheckpointer(tmp_path / "checkpoints", keep=3, async_save=False)
    for step in (1, 2, 3):
        checkpointer.save(step, state, params, {"step": step})
    checkpointer.close()
    _truncate(tmp_path / "checkpoints" / "3" / "params" / "manifest.ocdbt")  # a file damaged after the save
    _truncate(tmp_path / "checkpoints" / "2" / "record" / "metadata")

    said = []
    reopened = RunCheckpointer(tmp_path / "checkpoints", keep=3, async_save=False)
    _, _, record = reopened.restore_newest_readable(trainer.init(params), params, said.append)
    assert record["step"] == 1
    assert len(said) == 1 and "\n" not in said[0], said
    assert said[0].startswith("checkpoints step 3 (ValueError: ") and ", step 2 (JSONDecodeError: " in said[0]
    assert said[0].endswith(
        f"were moved to {tmp_path / 'unreadable_checkpoints'}; resuming from step 1, the newest that restores"
    )
    assert sorted(p.name for p in (tmp_path / "unreadable_checkpoints").iterdir()) == ["2", "3"]
    # the run goes on from step 1: its next saves are kept (Orbax skips steps up to the newest one it holds)
    reopened.save(2, state, params, {"step": 2, "again": True})
    assert reopened.all_steps() == [1, 2]
    reopened.save(2, state, params, {"step": 2, "replaced": True})  # a save of a step it holds replaces it
    assert reopened.restore(trainer.init(params), params, step=2)[2] == {"step": 2, "replaced": True}
    reopened.close()


def test_when_no_checkpoint_restores_each_reason_is_named(tmp_path):
    graphdef, params = nnx.split(init_model(CFG, seed=0), nnx.Param)
    trainer = Trainer(graphdef, LossConfig(), OptimizerConfig(), TrainStepConfig())
    checkpointer = RunCheckpointer(tmp_path / "checkpoints", async_save=False)
    checkpointer.save(1, trainer.init(params), params, {"step": 1})
    checkpointer.close()
    _truncate(tmp_path / "checkpoints" / "1" / "params" / "_METADATA")
    reopened = RunCheckpointer(tmp_path / "checkpoints")
    with pytest.raises(CheckpointError, match=r"no checkpoint restores: step 1: JSONDecodeError: "):
        reopened.restore_newest_readable(trainer.init(params), params, print)
    assert reopened.all_steps() == [1]  # left in place
    reopened.close()
