"""`envtune export`: envtune model checkpoint → HF safetensors directory (loadable by transformers)."""
from __future__ import annotations

import argparse
from pathlib import Path

from envtune_jax.cli.common import add_mesh_flag, parse_mesh


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "export", help="envtune model checkpoint → HF safetensors",
        description="Writes config.json, generation_config.json, ≤5 GB safetensors shards with an index, "
                    "and the tokenizer files saved at conversion time.",
        epilog="example (final/ is the trained envtune checkpoint of `envtune train`; export/<stage>/ already holds HF "
               "safetensors):\n  envtune export --ckpt runs/qwen3-4b-envtuning/final --out hf/qwen3-4b-envtuned --dtype bfloat16",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", type=Path, required=True, help="envtune model checkpoint directory")
    parser.add_argument("--out", type=Path, required=True, help="output HF directory (replaced)")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16"], help="exported dtype (default: as stored)")
    add_mesh_flag(parser)
    parser.set_defaults(func=run)


def run(args) -> int:
    from envtune_jax import checkpointing, hf_io

    mesh = parse_mesh(args.mesh)
    model = checkpointing.load_model(args.ckpt, mesh=mesh)
    out = hf_io.save_pretrained(model, args.out, tokenizer_dir=checkpointing.tokenizer_dir(args.ckpt), dtype=args.dtype)
    print(f"wrote {out}")
    return 0
