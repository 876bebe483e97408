"""`envtune export`: envtune model checkpoint → HF safetensors directory (loadable by transformers)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from envtune_jax.cli import outputs
from envtune_jax.cli import validate as check
from envtune_jax.cli.common import add_mesh_flag, parse_mesh


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "export",
        help="envtune model checkpoint → HF safetensors",
        description="Writes config.json, generation_config.json, ≤5 GB safetensors shards with an index, "
        "and the tokenizer files saved at conversion time. An existing --out is replaced only "
        "when it is an earlier output of `envtune export` (or with --overwrite); an --out that "
        "is the checkpoint, or lies inside it, is refused.",
        epilog="example (final/ is the trained envtune checkpoint of `envtune train`; export/<stage>/ already holds HF "
        "safetensors):\n"
        "  envtune export --ckpt runs/qwen3-4b-envtuning/final --out hf/qwen3-4b-envtuned --dtype bfloat16",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--ckpt", type=Path, required=True, help="envtune model checkpoint directory")
    parser.add_argument("--out", type=Path, required=True, help="output HF directory")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing --out even if `envtune export` did not write it"
    )
    parser.add_argument(
        "--dtype", default=None, choices=["float32", "bfloat16"], help="exported dtype (default: as stored)"
    )
    add_mesh_flag(parser)
    parser.set_defaults(func=run, validate=validate)


def validate(args) -> None:
    check.envtune_checkpoint(args.ckpt)
    check.mesh_spec(args.mesh)
    outputs.check_replaceable(args.out, {"--ckpt": args.ckpt}, "export", args.overwrite)


def run(args) -> int:
    import jax

    from envtune_jax.chat.tokenizer import has_tokenizer
    from envtune_jax.models import checkpointing, hf_io
    from envtune_jax.rl.model_loader import load_model

    mesh = parse_mesh(args.mesh)
    stored_dtype = checkpointing.read_model_config(args.ckpt).param_dtype
    loaded = load_model(use="convert", ckpt=args.ckpt, mesh=mesh)
    model, tokenizer_dir = loaded.model, loaded.tokenizer_dir
    if not has_tokenizer(tokenizer_dir):
        print(
            f"envtune export: note: {args.ckpt} holds no tokenizer files, so neither will {args.out}; copy them "
            "from the original model before loading it with transformers",
            file=sys.stderr,
        )
    if jax.process_index() == 0:
        outputs.remove_if_not_folder(args.out)
    out = hf_io.save_pretrained(model, args.out, tokenizer_dir=tokenizer_dir, dtype=args.dtype or stored_dtype)
    if jax.process_index() == 0:
        outputs.mark(out, "export", args.ckpt)
    print(f"wrote {out}")
    return 0
