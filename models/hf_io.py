"""Hugging Face safetensors ⇄ NNX Qwen3: streamed, sharded import and exact export.

Import builds the model abstractly (no random init), then goes through the (single-file or
index-sharded) safetensors checkpoint one tensor at a time. Without a mesh it reads the tensor,
rearranges it into our layout and puts it on the device. With a mesh, each addressable device's
shard is read on its own with `safe_open(...).get_slice(name)[hf_index]`, where `hf_index` is the
shard's box mapped back through the layout change (transposes swap slices; a merged (N H) row
dimension is read as contiguous rows, see `envtune_jax.models.weights.hf_read_plan`): no host reads a sharded
weight in full, and replicated weights (norms) are read once per host. The full model never sits
twice in host memory. Export writes config.json, generation_config.json, ≤5 GB safetensors shards
with an index, and the tokenizer files of the source; it writes into a temporary sibling folder
renamed into place at the end (`staged_dir`), so a failure leaves nothing half-written.
Which file holds each tensor, and whether every file is whole, is models/hf_files.py's (JAX-free, so the
command line runs the same checks before it imports JAX).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Iterable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file
from tqdm.auto import tqdm

from envtune_jax.atomic_files import publish_dir, recover_dir
from envtune_jax.models.config import NotAQwen3Checkpoint, Qwen3Config, load_hf_config, to_hf_dict
from envtune_jax.models.hf_files import CheckpointError, check_files, open_safetensors
from envtune_jax.models.qwen3 import Qwen3
from envtune_jax.models.weights import expected_hf_shape, hf_read_plan, hf_to_ours, ours_to_hf
from envtune_jax.sharding import named_sharding

MAX_SHARD_BYTES = 5 * 1000**3
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
)
DEFAULT_GENERATION_CONFIG = {
    "bos_token_id": 151643,
    "eos_token_id": [151645, 151643],
    "pad_token_id": 151643,
    "do_sample": True,
    "temperature": 0.7,
    "top_p": 0.8,
    "top_k": 20,
}


FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")  # stored dtypes the loader casts to param_dtype


def _flat_params(model_or_state) -> list[tuple[tuple, nnx.Variable]]:
    state = nnx.state(model_or_state, nnx.Param) if isinstance(model_or_state, nnx.Module) else model_or_state
    return list(nnx.to_flat_state(state))


def _open_tensors(names: Iterable[str], index: dict[str, Path]) -> Iterator[tuple[str, object]]:
    """Yields (name, open safetensors handle holding it), opening each file once."""
    handles: dict[Path, object] = {}
    try:
        for name in names:
            path = index[name]
            if path not in handles:
                handles[path] = open_safetensors(path).__enter__()
            yield name, handles[path]
    finally:
        for handle in handles.values():
            handle.__exit__(None, None, None)


def _read_slice(handle, name: str, hf_index: tuple[slice, ...]) -> np.ndarray:
    """Reads box `hf_index` of stored tensor `name`: the loader's only read of tensor data."""
    return handle.get_slice(name)[hf_index]


def load_pretrained(
    hf_dir: str | os.PathLike,
    dtype: str = "float32",
    mesh=None,
    compute_dtype: str | None = None,
    progress: bool = True,
    **runtime,
) -> Qwen3:
    """Loads an HF Qwen3 checkpoint into an NNX model (params in `dtype`, optionally sharded on `mesh`)."""
    hf_dir = Path(hf_dir)
    if not hf_dir.is_dir():
        raise CheckpointError(f"{hf_dir}: not a directory")
    cfg = load_hf_config(hf_dir, param_dtype=dtype, dtype=compute_dtype or dtype, **runtime)
    return load_weights(hf_dir, cfg, mesh=mesh, progress=progress)


def load_weights(hf_dir: Path, cfg: Qwen3Config, mesh=None, progress: bool = True) -> Qwen3:
    abstract = nnx.eval_shape(lambda: Qwen3(cfg, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    index = check_files(hf_dir)  # tensor -> file; every file's header read and checked first
    flat = _flat_params(state)
    wanted = {var.get_metadata()["hf_key"]: (path, var) for path, var in flat}
    missing = [name for name in wanted if name not in index]
    if missing:
        raise CheckpointError(f"{hf_dir}: missing tensors {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    unexpected = [n for n in index if n not in wanted and not (cfg.tie_word_embeddings and n == "lm_head.weight")]
    if unexpected:
        raise CheckpointError(f"{hf_dir}: tensors this Qwen3 config has no place for: {unexpected[:5]}")
    dtype = jnp.dtype(cfg.param_dtype)
    with tqdm(total=len(wanted), desc=f"loading {hf_dir.name}", unit="tensor", disable=not progress) as bar:
        for name, handle in _open_tensors(sorted(wanted, key=lambda n: str(index[n])), index):
            _, var = wanted[name]
            meta = var.get_metadata()
            shape = tuple(var.shape)
            want_hf = expected_hf_shape(meta["hf_layout"], meta["layout"], shape)
            stored = tuple(handle.get_slice(name).get_shape())
            if stored != want_hf:
                raise CheckpointError(
                    f"{index[name]}: tensor '{name}' has shape {stored}, config.json implies {want_hf}"
                )
            stored_dtype = handle.get_slice(name).get_dtype()
            if stored_dtype not in FLOAT_DTYPES:
                raise CheckpointError(
                    f"{index[name]}: tensor '{name}' is stored as {stored_dtype}; Qwen3 weights are "
                    f"floating point ({', '.join(FLOAT_DTYPES)}), quantized or integer checkpoints "
                    "are not supported"
                )
            try:
                var.set_value(_load_tensor(handle, name, meta, shape, dtype, mesh))
            except SafetensorError as exc:
                raise CheckpointError(f"{index[name]}: tensor '{name}' cannot be read ({exc})") from None
            bar.update(1)
    return nnx.merge(graphdef, state)


def _load_tensor(handle, name: str, meta, shape: tuple[int, ...], dtype, mesh) -> jax.Array:
    """Tensor `name` in our layout and `dtype`; with a mesh, each device's shard is read on its own."""

    def read(our_index) -> np.ndarray:
        hf_index, block_shape, rest = hf_read_plan(meta["hf_layout"], meta["layout"], shape, our_index)
        block = hf_to_ours(_read_slice(handle, name, hf_index), meta["hf_layout"], meta["layout"], block_shape)
        return block[rest].astype(dtype, copy=False)

    if mesh is None:
        return jnp.asarray(read(()))
    sharding = named_sharding(mesh, meta["logical_axes"], shape)
    shards: dict[tuple, np.ndarray] = {}  # replicas of one shard share one read

    def shard(our_index) -> np.ndarray:
        key = tuple(s.indices(size) for s, size in zip(our_index, shape))
        if key not in shards:
            shards[key] = read(our_index)
        return shards[key]

    return jax.make_array_from_callback(shape, sharding, shard)


def _to_host(value: jax.Array) -> np.ndarray:
    if isinstance(value, jax.Array) and not value.is_fully_addressable:
        from jax.experimental import multihost_utils

        value = multihost_utils.process_allgather(value, tiled=True)
    return np.asarray(jax.device_get(value))


def export_tensors(model: Qwen3, dtype: str | None = None) -> Iterator[tuple[str, np.ndarray]]:
    """Yields (HF name, array in HF layout), one tensor at a time."""
    for _, var in _flat_params(model):
        meta = var.get_metadata()
        host = _to_host(var[...])
        if dtype is not None:
            host = host.astype(jnp.dtype(dtype))
        yield meta["hf_key"], ours_to_hf(host, meta["hf_layout"], meta["layout"])


def save_pretrained(
    model: Qwen3,
    out_dir: str | os.PathLike,
    tokenizer_dir: str | os.PathLike | None = None,
    dtype: str | None = None,
    max_shard_bytes: int = MAX_SHARD_BYTES,
    progress: bool = True,
) -> Path:
    """Writes an HF-layout checkpoint (loadable by transformers). Only process 0 writes."""
    out_dir = Path(out_dir)
    cfg = model.config
    if jax.process_index() != 0:
        for _ in export_tensors(model, dtype):  # join the collective gathers
            pass
        return out_dir
    with staged_dir(out_dir, all_processes=False) as tmp:
        _write_checkpoint(model, tmp, dtype, max_shard_bytes, progress)
        hf_config = to_hf_dict(cfg)
        hf_config["torch_dtype"] = dtype or cfg.param_dtype
        (tmp / "config.json").write_text(json.dumps(hf_config, indent=2))
        generation = DEFAULT_GENERATION_CONFIG
        if tokenizer_dir is not None and (Path(tokenizer_dir) / "generation_config.json").is_file():
            generation = json.loads((Path(tokenizer_dir) / "generation_config.json").read_text())
        (tmp / "generation_config.json").write_text(json.dumps(generation, indent=2))
        if tokenizer_dir is not None:
            for name in TOKENIZER_FILES:
                if (Path(tokenizer_dir) / name).is_file():
                    shutil.copy2(Path(tokenizer_dir) / name, tmp / name)
    return out_dir


@contextlib.contextmanager
def staged_dir(out_dir: Path, all_processes: bool = True) -> Iterator[Path]:
    """Yields `.<name>.partial`, a sibling of `out_dir` to write into; on success it replaces `out_dir`
    (`publish_dir`: at every instant `out_dir` is the previous complete folder or the new one), on
    failure it is removed and an existing `out_dir` is left as it was.

    With `all_processes` every process calls this (Orbax writes from all of them into the same folder):
    process 0 alone creates, renames and removes, between barriers. Otherwise only the caller writes.
    """
    out_dir = Path(out_dir).absolute()
    tmp = out_dir.parent / f".{out_dir.name}.partial"
    leader = not all_processes or jax.process_index() == 0
    if leader:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        recover_dir(out_dir)  # a previous publish killed between its fallback renames
        shutil.rmtree(tmp, ignore_errors=True)  # left by a killed run
        tmp.mkdir()
    _barrier(all_processes, f"staged_dir:create:{out_dir}")
    try:
        yield tmp
        _barrier(all_processes, f"staged_dir:written:{out_dir}")
        if leader:
            publish_dir(tmp, out_dir)
    except BaseException:
        if leader:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    _barrier(all_processes, f"staged_dir:renamed:{out_dir}")


def _barrier(all_processes: bool, name: str) -> None:
    if all_processes and jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _write_checkpoint(model: Qwen3, out: Path, dtype, max_shard_bytes: int, progress: bool) -> None:
    shards: list[dict[str, np.ndarray]] = [{}]
    sizes = [0]
    total = 0
    flat = _flat_params(model)
    for name, array in tqdm(
        export_tensors(model, dtype), total=len(flat), desc="exporting", unit="tensor", disable=not progress
    ):
        if sizes[-1] and sizes[-1] + array.nbytes > max_shard_bytes:
            _flush(shards, out, len(shards))
            shards.append({})
            sizes.append(0)
        shards[-1][name] = array
        sizes[-1] += array.nbytes
        total += array.nbytes
    count = len(shards)
    if count == 1:
        save_file(shards[0], str(out / "model.safetensors"), metadata={"format": "pt"})
        return
    _flush(shards, out, count)
    weight_map = {}
    for i in range(1, count + 1):
        file = f"model-{i:05d}-of-{count:05d}.safetensors"
        os.rename(out / f"shard-{i}.safetensors", out / file)
        with safe_open(str(out / file), framework="numpy") as f:
            weight_map.update({k: file for k in f.keys()})
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def _flush(shards: list[dict[str, np.ndarray]], out: Path, number: int) -> None:
    """Writes the last open shard to disk and frees its arrays."""
    if shards[-1]:
        save_file(shards[-1], str(out / f"shard-{number}.safetensors"), metadata={"format": "pt"})
        shards[-1] = {}


__all__ = ["load_pretrained", "save_pretrained", "export_tensors", "CheckpointError", "NotAQwen3Checkpoint"]
