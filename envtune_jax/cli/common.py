"""Helpers shared by subcommands: mesh flags, the --hf / --ckpt model flags and their loading, JSON printing."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from envtune_jax.config import ConfigError


def add_mesh_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--mesh",
        default=None,
        metavar="data=D,fsdp=F,tensor=T",
        help="device mesh sizes (one may be -1 = the rest); default: all devices on fsdp",
    )


def parse_mesh(spec: str | None):
    """Builds the mesh from a --mesh string (None → all devices on fsdp when >1 device, else no mesh); a
    mesh that does not fit the devices is a ConfigError."""
    import jax

    from envtune_jax.cli.validate import mesh_spec
    from envtune_jax.mesh import MeshConfig, make_mesh

    if spec is None:
        return make_mesh(MeshConfig()) if len(jax.devices()) > 1 else None
    config = mesh_spec(spec)
    try:
        return make_mesh(config)
    except ConfigError as exc:
        raise ConfigError(f"--mesh {spec}: {exc}") from None


def add_model_source(parser: argparse.ArgumentParser, required: bool = True) -> None:
    group = parser.add_mutually_exclusive_group(required=required)
    group.add_argument("--hf", type=Path, help="Hugging Face checkpoint directory (config.json + safetensors)")
    group.add_argument("--ckpt", type=Path, help="envtune model checkpoint (from `envtune convert`)")
    parser.add_argument(
        "--dtype",
        default=None,
        choices=["float32", "bfloat16"],
        help="weights and compute (default: bfloat16, the rule for inference, docs/models.md)",
    )


def load_model_from_args(args, mesh=None, **kernels):
    """The model named by --hf / --ckpt with --dtype, loaded for inference (envtune_jax.rl.model_loader.load_model):
    a LoadedModel, with its tokenizer."""
    from envtune_jax.rl.model_loader import load_model

    return load_model(use="inference", hf=args.hf, ckpt=args.ckpt, param_dtype=args.dtype, mesh=mesh, **kernels)


def print_json(record: dict) -> None:
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()
