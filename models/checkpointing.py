"""Orbax model checkpoints: what `envtune convert` writes, `envtune export` reads, and a run's final/ holds.

A model checkpoint directory holds `model_config.json` (the Qwen3Config), `params/` (an Orbax
PyTree checkpoint of the parameters as a plain nested dict) and, when the source had them, the
tokenizer files under `tokenizer/`. `save_model` writes it into a temporary sibling folder renamed
into place on success, so a failed convert keeps the previous checkpoint and leaves no partial one.
Restoring builds the model abstractly and asks Orbax for each array directly in its target
sharding, so a checkpoint written on one mesh loads onto another. Training runs' resumable
checkpoints (optimizer state, KL reference, run record) are rl/run_checkpoint.py's.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from flax import nnx

from envtune_jax.checkpoint_layout import MODEL_CONFIG_FILE
from envtune_jax.models.config import Qwen3Config
from envtune_jax.models.hf_io import TOKENIZER_FILES, CheckpointError, staged_dir
from envtune_jax.models.qwen3 import Qwen3
from envtune_jax.sharding import named_sharding


class CheckpointNotFound(FileNotFoundError):
    pass


def abstract_state(cfg: Qwen3Config, mesh=None) -> tuple[nnx.GraphDef, nnx.State, dict]:
    """(graphdef, abstract state, pure-dict of ShapeDtypeStructs carrying target shardings)."""
    abstract = nnx.eval_shape(lambda: Qwen3(cfg, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    targets = {}
    for path, var in nnx.to_flat_state(state):
        sharding = None
        if mesh is not None:
            sharding = named_sharding(mesh, var.get_metadata()["logical_axes"], var.shape)
        targets[path] = jax.ShapeDtypeStruct(var.shape, var.dtype, sharding=sharding)
    return graphdef, state, _unflatten(targets)


def _unflatten(flat: dict[tuple, Any]) -> dict:
    out: dict = {}
    for path, value in flat.items():
        node = out
        for key in path[:-1]:
            node = node.setdefault(str(key), {})
        node[str(path[-1])] = value
    return out


def params_as_dict(model: nnx.Module) -> dict:
    """The model's parameters as a plain nested dict of arrays (string keys)."""
    return _unflatten({path: var[...] for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param))})


def model_from_dict(cfg: Qwen3Config, params: dict) -> Qwen3:
    graphdef, state, _ = abstract_state(cfg)
    for path, var in nnx.to_flat_state(state):
        node = params
        for key in path:
            node = node[str(key)]
        var.set_value(node)
    return nnx.merge(graphdef, state)


def save_model(
    model: Qwen3, ckpt_dir: str | Path, tokenizer_dir: str | Path | None = None, metadata: dict | None = None
) -> Path:
    """Writes a model checkpoint (params + config + tokenizer files), replacing `ckpt_dir` only once it
    is complete: all is written into a temporary sibling folder renamed into place at the end, so a
    failure leaves an existing `ckpt_dir` intact and no partial folder. Every process calls this."""
    ckpt_dir = Path(ckpt_dir).absolute()
    with staged_dir(ckpt_dir, all_processes=True) as tmp:
        with ocp.StandardCheckpointer() as checkpointer:
            checkpointer.save(tmp / "params", params_as_dict(model))
        if jax.process_index() == 0:
            record = {"model": dataclasses.asdict(model.config), "metadata": metadata or {}}
            (tmp / MODEL_CONFIG_FILE).write_text(json.dumps(record, indent=2))
            if tokenizer_dir is not None:
                copy_tokenizer_files(Path(tokenizer_dir), tmp / "tokenizer")
    return ckpt_dir


def copy_tokenizer_files(source: Path, dest: Path) -> list[str]:
    copied = []
    for name in TOKENIZER_FILES + ("generation_config.json",):
        if (source / name).is_file():
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / name, dest / name)
            copied.append(name)
    return copied


def read_model_config(ckpt_dir: str | Path, **runtime: Any) -> Qwen3Config:
    path = Path(ckpt_dir) / MODEL_CONFIG_FILE
    if not path.is_file():
        raise CheckpointNotFound(
            f"{path}: not found; is {ckpt_dir} an envtune model checkpoint (from `envtune convert`)?"
        )
    try:
        fields = json.loads(path.read_text(encoding="utf-8"))["model"]
        fields.update(runtime)
        return Qwen3Config(**fields)
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: not an envtune model config ({type(exc).__name__}: {exc})") from None


def load_model(
    ckpt_dir: str | Path, mesh=None, dtype: str | None = None, compute_dtype: str | None = None, **runtime: Any
) -> Qwen3:
    """Restores a model checkpoint, each array directly into its sharding on `mesh` (if given)."""
    ckpt_dir = Path(ckpt_dir).absolute()
    overrides = dict(runtime)
    if dtype:
        overrides["param_dtype"] = dtype
    if compute_dtype or dtype:
        overrides["dtype"] = compute_dtype or dtype
    cfg = read_model_config(ckpt_dir, **overrides)
    graphdef, state, targets = abstract_state(cfg, mesh)
    with ocp.StandardCheckpointer() as checkpointer:
        restored = checkpointer.restore(ckpt_dir / "params", targets)
    for path, var in nnx.to_flat_state(state):
        node = restored
        for key in path:
            node = node[str(key)]
        var.set_value(node.astype(var.dtype) if node.dtype != var.dtype else node)
    return nnx.merge(graphdef, state)


def tokenizer_dir(ckpt_dir: str | Path) -> Path | None:
    path = Path(ckpt_dir) / "tokenizer"
    return path if path.is_dir() else None
