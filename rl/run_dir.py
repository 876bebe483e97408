"""What a training run directory records about its run, and the checks made before a run starts or
resumes — before any model loads.

    run_dir/.envtune.lock                 held by the process training it (envtune_jax.folder_lock)
    run_dir/config.yaml, stages/*.yaml    the settings of the latest start or resume
    run_dir/configs/config.step<N>.yaml   every set of settings the run used, with the step it started at
    run_dir/checkpoints/<step>/           resumable checkpoints (envtune_jax.rl.run_checkpoint)
    run_dir/unreadable_checkpoints/<step>/  checkpoints that failed to restore, set aside
    run_dir/logs/metrics.jsonl, logs/tensorboard/
    run_dir/export/<stage>/               HF safetensors after each stage
    run_dir/final/                        envtune model checkpoint after the last stage
    run_dir/finished.json                 written last: the run is complete

A run's settings are its RunConfig and its stages, resolved. Resuming compares them with the command's:
a difference in anything that changes what is trained refuses to resume unless the caller allows it;
the keys in RUNTIME_KEYS (where files go, how often to save, the mesh and kernels, logging) may change
freely. Each set of settings used is kept with the step it started at; those of steps that a resume
discards (after the checkpoint it restored) are removed with those steps.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import re
from pathlib import Path
from typing import Any

import yaml

from envtune_jax.atomic_files import write_text_atomic
from envtune_jax.config import ConfigError, in_effect, save
from envtune_jax.rl.curriculum import StageConfig
from envtune_jax.rl.run_config import RunConfig

CONFIGS_DIR = "configs"
FINISHED_FILE = "finished.json"
# Settings that do not change what is trained: a resume may change them without being a "change".
RUNTIME_KEYS = (
    "run_dir",
    "logging",
    "checkpoint.every_steps",
    "checkpoint.keep",
    "checkpoint.async_save",
    "mesh",
    "model.attention_impl",
    "model.decode_attention",
    "model.remat",
    "data.data_dir",
)
# The stage files' paths and overrides are compared through the stages they produce.
_NOT_COMPARED = ("stages", "stage_overrides")
_HISTORY_NAME = re.compile(r"^config\.step(\d+)\.yaml$")


class SettingsChanged(ConfigError):
    """Resuming a run with settings that differ from the ones it was trained with."""


def run_settings(cfg: RunConfig, stages: list[StageConfig]) -> dict[str, Any]:
    """The resolved settings of a run: {"run": RunConfig fields, "stages": [StageConfig fields, ...]}, the
    fields in effect only (as config.yaml and stages/*.yaml hold them), so that a field the mode ignores
    is never compared."""
    run = {key: value for key, value in in_effect(cfg).items() if key not in _NOT_COMPARED}
    return json.loads(json.dumps({"run": run, "stages": [in_effect(stage) for stage in stages]}))


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        flat: dict[str, Any] = {}
        for key, value in tree.items():
            flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: tree}


def _runtime(key: str) -> bool:
    return any(key == name or key.startswith(name + ".") for name in RUNTIME_KEYS)


def settings_changes(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """What differs between two run settings, as 'key: old → new' (runtime keys left out)."""
    changes = []
    old_run, new_run = _flatten(before.get("run", {})), _flatten(after.get("run", {}))
    for key in sorted(set(old_run) | set(new_run)):
        if not _runtime(key) and old_run.get(key) != new_run.get(key):
            changes.append(f"{key}: {_show(old_run.get(key))} → {_show(new_run.get(key))}")
    old_stages, new_stages = before.get("stages", []), after.get("stages", [])
    old_names, new_names = [s.get("name") for s in old_stages], [s.get("name") for s in new_stages]
    if old_names != new_names:
        changes.append(f"stages: {old_names} → {new_names}")
    for old_stage, new_stage in zip(old_stages, new_stages):
        if old_stage.get("name") != new_stage.get("name"):
            continue
        old_flat, new_flat = _flatten(old_stage), _flatten(new_stage)
        for key in sorted(set(old_flat) | set(new_flat)):
            if old_flat.get(key) != new_flat.get(key):
                changes.append(
                    f"stage {new_stage.get('name')} {key}: {_show(old_flat.get(key))} → {_show(new_flat.get(key))}"
                )
    return changes


def _show(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 60 else text[:57] + "..."


def settings_history(run_dir: Path) -> list[tuple[int, Path]]:
    """(step the settings started at, file), oldest first."""
    folder = Path(run_dir) / CONFIGS_DIR
    found = []
    for path in folder.glob("config.step*.yaml") if folder.is_dir() else []:
        match = _HISTORY_NAME.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def _read_settings(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return {"run": data.get("run", {}), "stages": data.get("stages", [])}


def settings_at(run_dir: Path, step: int) -> dict[str, Any] | None:
    """The settings the run used at `step` (the newest set started at or before it), None if unrecorded."""
    earlier = [path for started, path in settings_history(run_dir) if started <= step]
    return _read_settings(earlier[-1]) if earlier else None


def record_settings(run_dir: Path, cfg: RunConfig, stages: list[StageConfig], step: int) -> None:
    """Keeps the settings a start or resume at `step` uses: configs/config.step<step>.yaml unless the set in
    force at that step is the same, config.yaml and stages/ as the latest; sets started after `step` (whose
    steps this resume discards) are removed. Call on process 0."""
    run_dir = Path(run_dir)
    settings = run_settings(cfg, stages)
    for started, path in settings_history(run_dir):
        if started > step:
            path.unlink()
    if settings_at(run_dir, step) != settings:
        (run_dir / CONFIGS_DIR).mkdir(parents=True, exist_ok=True)
        text = yaml.safe_dump({"started_at_step": step, **settings}, sort_keys=False)
        write_text_atomic(run_dir / CONFIGS_DIR / f"config.step{step}.yaml", text)
    save(cfg, run_dir / "config.yaml")
    for stage in stages:
        save(stage, run_dir / "stages" / f"{stage.name}.yaml")


def read_finished(run_dir: Path) -> dict[str, Any] | None:
    path = Path(run_dir) / FINISHED_FILE
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) else None


def mark_finished(run_dir: Path, step: int, stages: list[StageConfig]) -> None:
    """Records that the run is complete (call on process 0, after final/ is written)."""
    record = {
        "step": step,
        "stages": [stage.name for stage in stages],
        "final": "final",
        "finished_at": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    write_text_atomic(Path(run_dir) / FINISHED_FILE, json.dumps(record, indent=1) + "\n")


def clear_finished(run_dir: Path) -> None:
    (Path(run_dir) / FINISHED_FILE).unlink(missing_ok=True)


@dataclasses.dataclass(frozen=True)
class RunStart:
    """How a command meets its run directory."""

    latest_checkpoint: int | None  # the newest checkpoint step (None: a fresh start)
    changes: tuple[str, ...]  # settings that differ from the run's (accepted: allow_change was given)
    finished: dict[str, Any] | None  # the finished record, when the run is complete under these settings


def inspect_run_dir(
    run_dir: Path, cfg: RunConfig, stages: list[StageConfig], checkpoint_steps: list[int], allow_change: bool
) -> RunStart:
    """Compares the command's settings with those of the run in `run_dir` (the set in force at its newest
    checkpoint); raises SettingsChanged for a difference unless `allow_change`."""
    run_dir = Path(run_dir)
    latest = max(checkpoint_steps) if checkpoint_steps else None
    finished = read_finished(run_dir)
    reached = latest if latest is not None else (finished or {}).get("step")
    if not isinstance(reached, int):  # nothing trained yet: a fresh start, whatever ran before
        return RunStart(None, (), None)
    recorded = settings_at(run_dir, reached)
    changes = tuple(settings_changes(recorded, run_settings(cfg, stages))) if recorded is not None else ()
    if changes and not allow_change:
        shown = "; ".join(changes[:4]) + (f"; and {len(changes) - 4} more" if len(changes) > 4 else "")
        raise SettingsChanged(
            f"{run_dir} holds a run trained with other settings ({shown}): run it with its own settings (see "
            f"{run_dir / CONFIGS_DIR}), choose another run_dir, or pass --allow-config-change to continue this run "
            "with the new ones"
        )
    return RunStart(latest, changes, finished if not changes else None)
