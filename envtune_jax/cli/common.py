"""Helpers shared by subcommands: mesh flags, model loading from --hf or --ckpt, JSON printing."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from envtune_jax.config import ConfigError


def add_mesh_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mesh", default=None, metavar="data=D,fsdp=F,tensor=T",
                        help="device mesh sizes (one may be -1 = the rest); default: all devices on fsdp")


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
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                        help="parameter dtype (default: float32 for --hf, as saved for --ckpt)")


def load_model_from_args(args, mesh=None, **runtime):
    """The model named by --hf/--ckpt, plus the directory holding its tokenizer files (or None)."""
    from envtune_jax import checkpointing, hf_io

    if args.hf is not None:
        model = hf_io.load_pretrained(args.hf, dtype=args.dtype or "float32", mesh=mesh, **runtime)
        return model, args.hf
    model = checkpointing.load_model(args.ckpt, mesh=mesh, dtype=args.dtype, **runtime)
    return model, checkpointing.tokenizer_dir(args.ckpt)


def print_json(record: dict) -> None:
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()
