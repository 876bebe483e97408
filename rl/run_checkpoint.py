"""Resumable training-run checkpoints on an Orbax CheckpointManager.

Each checkpoint holds the policy parameters, the optimizer state, the reference (KL) parameters of
the current stage, and a JSON record (step, stage, PRNG key, data position, metrics history). Saves
are asynchronous and keep the last N; Orbax finalises a step only once it is completely written, so
a run killed mid-save resumes from the previous complete one. A finalised checkpoint that does not
restore (a file truncated or damaged afterwards) is moved aside to `unreadable_checkpoints/<step>` next
to the checkpoints folder, and the run resumes from the newest one that does (`restore_newest_readable`).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp

from envtune_jax.models.hf_io import CheckpointError
from envtune_jax.rl.train_step import TrainState


def _abstract(tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree)


class RunCheckpointer:
    def __init__(self, directory: str | Path, keep: int = 3, async_save: bool = True):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save, create=True)
        self.manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("params", "opt_state", "ref_params", "record")
        )

    def save(self, step: int, state: TrainState, ref_params, record: dict[str, Any]) -> None:
        """Saves `step`, replacing a checkpoint of the same step (Orbax would skip the save silently)."""
        if step in self.manager.all_steps():
            self.manager.wait_until_finished()
            self.manager.delete(step)
        self.manager.save(
            step,
            args=ocp.args.Composite(
                params=ocp.args.StandardSave(state.params),
                opt_state=ocp.args.StandardSave(state.opt_state),
                ref_params=ocp.args.StandardSave(ref_params),
                record=ocp.args.JsonSave(record),
            ),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def restore(self, like_state: TrainState, like_ref, step: int | None = None):
        """Restores (state, ref_params, record) into the shardings and structure of the `like_*` trees."""
        step = self.manager.latest_step() if step is None else step
        if step is None:
            return None
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                params=ocp.args.StandardRestore(_abstract(like_state.params)),
                opt_state=ocp.args.StandardRestore(_abstract(like_state.opt_state)),
                ref_params=ocp.args.StandardRestore(_abstract(like_ref)),
                record=ocp.args.JsonRestore(),
            ),
        )
        opt_state = jax.tree.unflatten(jax.tree.structure(like_state.opt_state), jax.tree.leaves(restored.opt_state))
        params = jax.tree.unflatten(jax.tree.structure(like_state.params), jax.tree.leaves(restored.params))
        ref = jax.tree.unflatten(jax.tree.structure(like_ref), jax.tree.leaves(restored.ref_params))
        record = dict(restored.record)
        state = TrainState(params, opt_state, jax.numpy.asarray(record["step"], jax.numpy.int32))
        return state, ref, record

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def restore_newest_readable(self, like_state: TrainState, like_ref, log: Callable[[str], None]):
        """(state, ref_params, record) of the newest checkpoint that restores, or None when there is none.

        Checkpoints that fail to restore are moved aside (process 0) and said, one line for all; when
        none restores, CheckpointError names each step and its reason."""
        failures: list[tuple[int, str]] = []
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                restored, reason = self.restore(like_state, like_ref, step), None
            except Exception as exc:  # noqa: BLE001 - any failure to read the files: try an older one
                restored, reason = None, _one_line(exc)
            if _everywhere(reason is None):
                if failures:
                    self._set_aside(failures)
                    log(
                        f"checkpoint{'s' if len(failures) > 1 else ''} "
                        f"{', '.join(f'step {s} ({why})' for s, why in failures)} could not be restored and "
                        f"{'were' if len(failures) > 1 else 'was'} moved to {self._aside_dir()}; resuming from "
                        f"step {step}, the newest that restores"
                    )
                return restored
            failures.append((step, reason or "it failed to restore on another process"))
        if failures:
            raise CheckpointError(
                f"{self.directory}: no checkpoint restores: " + "; ".join(f"step {s}: {why}" for s, why in failures)
            )
        return None

    def _aside_dir(self) -> Path:
        return self.directory.parent / "unreadable_checkpoints"

    def _set_aside(self, failures: list[tuple[int, str]]) -> None:
        """Moves unreadable checkpoints out of the manager's folder (Orbax would skip saving any step up to
        the newest one there)."""
        if jax.process_index() == 0:
            self._aside_dir().mkdir(parents=True, exist_ok=True)
            for step, _ in failures:
                target = self._aside_dir() / str(step)
                shutil.rmtree(target, ignore_errors=True)
                shutil.move(str(self.directory / str(step)), str(target))
        _sync("run_checkpoint:set_aside")
        self.manager.reload()

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    text = text if len(text) <= 200 else text[:197] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _everywhere(ok: bool) -> bool:
    """True when `ok` holds on every process (multi-host restores must agree on the step)."""
    if jax.process_count() == 1:
        return ok
    from jax.experimental import multihost_utils

    return bool(np.all(multihost_utils.process_allgather(np.int32(ok))))


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
