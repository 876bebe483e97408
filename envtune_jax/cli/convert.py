"""`envtune convert`: HF safetensors checkpoint → envtune (Orbax) model checkpoint."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from envtune_jax.cli import outputs
from envtune_jax.cli import validate as check
from envtune_jax.cli.common import add_mesh_flag, parse_mesh


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="HF checkpoint → envtune model checkpoint",
        description="Reads a Hugging Face Qwen3 checkpoint tensor by tensor (placing each shard on its "
        "devices) and writes an Orbax model checkpoint with the config and tokenizer files. "
        "An existing --out is replaced only when it is an earlier output of `envtune convert` "
        "(or with --overwrite); an --out that is the input, or lies inside it, is refused.",
        epilog="examples:\n  envtune convert --hf ~/models/Qwen3-4B-Instruct-2507 --out ckpt/qwen3-4b-instruct-2507\n"
        "  envtune convert --hf ~/models/Qwen3-4B-Instruct-2507 --out ckpt/qwen3-4b-bf16 --dtype bfloat16  "
        "# only to evaluate or serve",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--hf", type=Path, required=True, help="HF checkpoint directory")
    parser.add_argument("--out", type=Path, required=True, help="output checkpoint directory")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing --out even if `envtune convert` did not write it"
    )
    parser.add_argument(
        "--dtype",
        default=None,
        choices=["float32", "bfloat16"],
        help="stored parameter dtype (default: float32, which holds every stored float type exactly)",
    )
    add_mesh_flag(parser)
    parser.set_defaults(func=run, validate=validate)


def validate(args) -> None:
    check.hf_checkpoint(args.hf)
    check.mesh_spec(args.mesh)
    outputs.check_replaceable(args.out, {"--hf": args.hf}, "convert", args.overwrite)


def run(args) -> int:
    import jax

    from envtune_jax.chat.tokenizer import has_tokenizer, no_tokenizer_note
    from envtune_jax.models import checkpointing
    from envtune_jax.rl.model_loader import load_model

    mesh = parse_mesh(args.mesh)
    model = load_model(use="convert", hf=args.hf, param_dtype=args.dtype, mesh=mesh).model
    if not has_tokenizer(args.hf):
        print(f"envtune convert: note: {no_tokenizer_note(args.hf)}", file=sys.stderr)
    if jax.process_index() == 0:
        outputs.remove_if_not_folder(args.out)
    out = checkpointing.save_model(model, args.out, tokenizer_dir=args.hf, metadata={"source": str(args.hf.absolute())})
    if jax.process_index() == 0:
        outputs.mark(out, "convert", args.hf)
    print(f"wrote {out} ({model.config.num_params / 1e6:.1f}M parameters, {model.config.param_dtype})")
    return 0
