"""`envtune convert`: HF safetensors checkpoint → envtune (Orbax) model checkpoint."""
from __future__ import annotations

import argparse
from pathlib import Path

from envtune_jax.cli.common import add_mesh_flag, parse_mesh


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "convert", help="HF checkpoint → envtune model checkpoint",
        description="Reads a Hugging Face Qwen3 checkpoint tensor by tensor (placing each shard on its "
                    "devices) and writes an Orbax model checkpoint with the config and tokenizer files.",
        epilog="examples:\n  envtune convert --hf ~/models/Qwen3-4B-Instruct-2507 --out ckpt/qwen3-4b-instruct-2507\n"
               "  envtune convert --hf ~/models/Qwen3-4B-Instruct-2507 --out ckpt/qwen3-4b-bf16 --dtype bfloat16  "
               "# only to evaluate or serve",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hf", type=Path, required=True, help="HF checkpoint directory")
    parser.add_argument("--out", type=Path, required=True, help="output checkpoint directory (replaced)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="stored parameter dtype")
    add_mesh_flag(parser)
    parser.set_defaults(func=run)


def run(args) -> int:
    from envtune_jax import checkpointing, hf_io

    mesh = parse_mesh(args.mesh)
    model = hf_io.load_pretrained(args.hf, dtype=args.dtype, mesh=mesh)
    out = checkpointing.save_model(model, args.out, tokenizer_dir=args.hf, metadata={"source": str(args.hf.absolute())})
    print(f"wrote {out} ({model.config.num_params / 1e6:.1f}M parameters, {args.dtype})")
    return 0
