"""Resumable training-run checkpoints on an Orbax CheckpointManager.

Each checkpoint holds the policy parameters, the optimizer state, the reference (KL) parameters of
the current stage, and a JSON record (step, stage, PRNG key, data position, metrics history). Saves
are asynchronous and keep the last N; Orbax finalises a step only once it is completely written, so
a run killed mid-save resumes from the previous complete one.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from rl.train_step import TrainState


def _abstract(tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree)


class RunCheckpointer:
    def __init__(self, directory: str | Path, keep: int = 3, async_save: bool = True):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save, create=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                             item_names=("params", "opt_state", "ref_params", "record"))

    def save(self, step: int, state: TrainState, ref_params, record: dict[str, Any]) -> None:
        self.manager.save(step, args=ocp.args.Composite(
            params=ocp.args.StandardSave(state.params),
            opt_state=ocp.args.StandardSave(state.opt_state),
            ref_params=ocp.args.StandardSave(ref_params),
            record=ocp.args.JsonSave(record),
        ))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def restore(self, like_state: TrainState, like_ref, step: int | None = None):
        """Restores (state, ref_params, record) into the shardings and structure of the `like_*` trees."""
        step = self.manager.latest_step() if step is None else step
        if step is None:
            return None
        restored = self.manager.restore(step, args=ocp.args.Composite(
            params=ocp.args.StandardRestore(_abstract(like_state.params)),
            opt_state=ocp.args.StandardRestore(_abstract(like_state.opt_state)),
            ref_params=ocp.args.StandardRestore(_abstract(like_ref)),
            record=ocp.args.JsonRestore(),
        ))
        opt_state = jax.tree.unflatten(jax.tree.structure(like_state.opt_state), jax.tree.leaves(restored.opt_state))
        params = jax.tree.unflatten(jax.tree.structure(like_state.params), jax.tree.leaves(restored.params))
        ref = jax.tree.unflatten(jax.tree.structure(like_ref), jax.tree.leaves(restored.ref_params))
        record = dict(restored.record)
        state = TrainState(params, opt_state, jax.numpy.asarray(record["step"], jax.numpy.int32))
        return state, ref, record

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
