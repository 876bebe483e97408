"""Checks of command-line arguments that run before JAX, transformers or any weights are loaded.

Each subcommand's `validate(args)` calls these; each raises ConfigError with one line naming the flag,
the value and what would be accepted, so that a bad command fails in well under a second instead of
after minutes of imports and loading. Only light modules are imported here (the config dataclasses,
`envtune_jax.models.config`, `envtune_jax.models.hf_files`, the chat message checks).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from envtune_jax.config import ConfigError, check_name
from envtune_jax.mesh import MESH_AXES, MeshConfig, resolve_mesh_shape

DISTRIBUTED_ENV = (
    "JAX_COORDINATOR_ADDRESS",
    "SLURM_STEP_NODELIST",
    "TPU_WORKER_HOSTNAMES",
    "MEGASCALE_COORDINATOR_ADDRESS",
    "ENVTUNE_DISTRIBUTED",
)


def flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def at_least(args, minimum: float, *dests: str) -> None:
    """Each of `args.<dest>` (when set) is ≥ `minimum`."""
    for dest in dests:
        value = getattr(args, dest)
        if value is not None and value < minimum:
            raise ConfigError(f"{flag(dest)} must be ≥ {minimum}, got {value}")


def sampling_flags(args) -> None:
    """--temperature > 0, --top-p in (0, 1], --top-k ≥ 0, budgets ≥ 1: the checks of SamplingParams."""
    from envtune_jax.models.generation.sampling_params import SamplingParams

    at_least(args, 1, "max_new_tokens")
    try:
        SamplingParams(
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            greedy=args.greedy,
            max_new_tokens=args.max_new_tokens,
        )
    except ValueError as exc:  # "<field> must be ..."
        name, _, rest = str(exc).partition(" ")
        named = name in ("temperature", "top_k", "top_p", "max_new_tokens")
        rest = rest.replace("greedy=True", "--greedy")
        raise ConfigError(f"{flag(name)} {rest}" if named else str(exc)) from None


def mesh_spec(spec: str | None, what: str = "--mesh") -> MeshConfig | None:
    """The MeshConfig of a `data=D,fsdp=F,tensor=T` string (None: no --mesh), checked against the number
    of devices when that is known without starting JAX (`visible_device_count`)."""
    if spec is None:
        return None
    values: dict[str, int] = {}
    for part in spec.split(","):
        key, sep, value = (item.strip() for item in part.partition("="))
        if not sep:
            raise ConfigError(f"{what} {spec!r}: expected data=D,fsdp=F,tensor=T (one size may be -1)")
        check_name(MESH_AXES, key, f"{what} axis")
        if not re.fullmatch(r"-?\d+", value):
            raise ConfigError(f"{what} {spec!r}: the size of {key} must be an integer, got {value!r}")
        values[key] = int(value)
    try:
        config = MeshConfig(**values)
    except ValueError as exc:
        raise ConfigError(f"{what} {spec!r}: {exc}") from None
    mesh_fits_devices(config, what)
    return config


def mesh_fits_devices(config: MeshConfig, what: str = "--mesh") -> None:
    devices = visible_device_count()
    if devices is None:
        return  # checked once JAX has started (envtune_jax.cli.common.parse_mesh), still before loading weights
    try:
        resolve_mesh_shape(config, devices)
    except ValueError as exc:
        raise ConfigError(f"{what}: {exc}" if what else str(exc)) from None


def visible_device_count() -> int | None:
    """The number of devices JAX will see, when that is certain without starting it: a single-process run
    on the CPU alone (JAX_PLATFORMS=cpu, or no accelerator plugin, libtpu or TPU device present), whose
    device count is JAX_NUM_CPU_DEVICES or XLA's --xla_force_host_platform_device_count (default 1).
    None otherwise: the mesh is then checked once JAX has started, still before any weight loads."""
    if any(name in os.environ for name in DISTRIBUTED_ENV):
        return None
    platforms = os.environ.get("JAX_PLATFORMS", "").strip().lower()
    if platforms != "cpu" and (platforms or not _cpu_only_install()):
        return None
    count = os.environ.get("JAX_NUM_CPU_DEVICES", "").strip()
    if count.isdigit() and int(count) > 0:
        return int(count)
    found = re.findall(r"--xla_force_host_platform_device_count=(\d+)", os.environ.get("XLA_FLAGS", ""))
    return int(found[-1]) if found else 1


def _cpu_only_install() -> bool:
    """No way for JAX to reach an accelerator: no PJRT plugin (the `jax_plugins` package or entry points:
    CUDA, ROCm, Metal, ...), no libtpu, no plugin or TPU library named in the environment, no TPU device."""
    import importlib.metadata
    import importlib.util

    if any(os.environ.get(name) for name in ("PJRT_NAMES_AND_LIBRARY_PATHS", "TPU_LIBRARY_PATH")):
        return False
    if importlib.util.find_spec("libtpu") is not None or importlib.util.find_spec("jax_plugins") is not None:
        return False
    if list(Path("/dev").glob("accel*")) or Path("/dev/vfio").is_dir():
        return False
    return not importlib.metadata.entry_points(group="jax_plugins")


def model_source(args) -> None:
    """--hf or --ckpt (whichever is set) names a checkpoint that can be loaded."""
    if getattr(args, "hf", None) is not None:
        hf_checkpoint(args.hf)
    elif getattr(args, "ckpt", None) is not None:
        envtune_checkpoint(args.ckpt)


def recipe_settings(path: Path, overrides: list[str], what: str = "--config"):
    """The run config and stages of a recipe, checked as a whole (keys, types, sizes, stage files, the
    fields each mode reads, stage budgets) without looking at its model source."""
    from envtune_jax.rl.run_config import load_run_config

    if not Path(path).is_file():
        raise ConfigError(f"{what} {path}: not found" if not Path(path).exists() else f"{what} {path}: not a file")
    return load_run_config(path, overrides)


def recipe(path: Path, overrides: list[str]):
    """`recipe_settings`, and the recipe's model source: exactly one of hf, ckpt, preset, naming something
    that exists."""
    cfg, stages = recipe_settings(path, overrides)
    source = cfg.model
    chosen = [name for name in ("hf", "ckpt", "preset") if getattr(source, name)]
    if not chosen:
        raise ConfigError(
            f"{path} names no model: set model.hf, model.ckpt or model.preset, or run a recipe "
            "that extends it (`base:`) and names one"
        )
    if len(chosen) != 1:
        raise ConfigError(
            f"model: set exactly one of hf, ckpt, preset (got {', '.join(chosen) or 'none'}); e.g. "
            "model.ckpt=ckpt/qwen3-4b model.preset=null"
        )
    if source.hf:
        hf_checkpoint(source.hf, "model.hf")
    elif source.ckpt:
        envtune_checkpoint(source.ckpt, "model.ckpt")
    mesh_fits_devices(cfg.mesh, "")
    return cfg, stages


def preset_name(name: str, what: str = "--preset") -> None:
    from envtune_jax.models.config import PRESETS

    try:
        check_name(PRESETS, name, "preset")
    except ConfigError as exc:
        raise ConfigError(f"{what}: {exc}") from None


def hf_checkpoint(path: str | Path, what: str = "--hf") -> None:
    """`path` is a Hugging Face Qwen3 checkpoint whose config.json reads and whose safetensors files are
    whole: the loader's own checks (envtune_jax.models.config.load_hf_config,
    envtune_jax.models.hf_files.check_files), which read
    config.json and each file's header but no tensor data."""
    from envtune_jax.models.config import NotAQwen3Checkpoint, load_hf_config
    from envtune_jax.models.hf_files import check_files

    path = Path(path)
    if not path.is_dir():
        raise ConfigError(f"{what} {path}: not a directory" if path.exists() else f"{what} {path}: not found")
    if not (path / "config.json").is_file():
        raise ConfigError(f"{what} {path}: no config.json (expected a Hugging Face checkpoint directory)")
    try:
        load_hf_config(path)
    except NotAQwen3Checkpoint:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{path / 'config.json'}: not a usable Qwen3 config ({type(exc).__name__}: {exc})") from None
    check_files(path)


def envtune_checkpoint(path: str | Path, what: str = "--ckpt") -> None:
    """`path` is an envtune model checkpoint (from `envtune convert` or a run's export of a stage)."""
    from envtune_jax.checkpoint_layout import MODEL_CONFIG_FILE, PARAMS_DIR

    path = Path(path)
    if not path.is_dir():
        raise ConfigError(f"{what} {path}: not a directory" if path.exists() else f"{what} {path}: not found")
    record_file = path / MODEL_CONFIG_FILE
    if not record_file.is_file():
        hint = (
            " (it holds a Hugging Face checkpoint: use --hf)"
            if (path / "config.json").is_file()
            else " (expected an envtune model checkpoint, from `envtune convert`)"
        )
        raise ConfigError(f"{what} {path}: no {MODEL_CONFIG_FILE}{hint}")
    record = read_json(record_file)
    if not isinstance(record, dict) or not isinstance(record.get("model"), dict):
        raise ConfigError(f"{record_file}: expected {{'model': {{...}}}} (the Qwen3 config)")
    if not (path / PARAMS_DIR).is_dir():
        raise ConfigError(f"{what} {path}: no {PARAMS_DIR}/ folder (an incomplete checkpoint)")


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None


def tools_file(path: Path | None) -> list:
    """The tool descriptions of a JSON file: a list (or {"tools": [...]}) of BFCL or OpenAI tool objects."""
    from envtune_jax.chat.messages import MessageError, validate_tools

    if path is None:
        return []
    if not Path(path).is_file():
        raise ConfigError(f"--tools {path}: not found")
    tools = read_json(Path(path))
    if isinstance(tools, dict) and "tools" in tools:
        tools = tools["tools"]
    if not isinstance(tools, list):
        raise ConfigError(
            f'--tools {path}: expected a JSON list of tools (or {{"tools": [...]}}), got {type(tools).__name__}'
        )
    try:
        validate_tools(tools)
    except MessageError as exc:
        raise ConfigError(f"--tools {path}: {exc}") from None
    for index, tool in enumerate(tools):
        described = tool.get("function", tool)
        if not isinstance(described, dict) or not isinstance(described.get("name"), str):
            raise ConfigError(
                f"--tools {path}: tool {index} has no 'name' (BFCL format) or 'function': "
                "{'name': ...} (OpenAI format)"
            )
    return tools
