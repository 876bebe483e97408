"""`envtune demo`: the whole pipeline on an embedded default (tiny random Qwen3, real tokenizer, CPU).

tiny HF checkpoint → convert → synthetic learning run (reward curve) → 4-stage curriculum on short
BFCL train entries → evaluation on the test split (a few entries per category) → HF export, with
progress on the console and a summary of where everything was written. `--hf DIR` runs the same
pipeline on a real checkpoint directory.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

# GRPO iterations of the demo's synthetic run: the default run's 30 (configs/synthetic/), the curve
# that the learning test checks and docs/training.md plots (its time: docs/measurements.md).
DEMO_SYNTHETIC_STEPS = 30


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="the whole pipeline on a tiny embedded default (CPU: 3-7 minutes on 2 cores, docs/measurements.md)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  envtune demo\n  envtune demo --out runs/my-demo --eval-limit 2\n"
        "  envtune demo --hf ~/models/Qwen3-0.6B",
    )
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder (default: runs/demo)")
    parser.add_argument(
        "--hf", type=Path, default=None, help="start from this HF checkpoint instead of a tiny random one"
    )
    parser.add_argument("--eval-limit", type=int, default=1, help="test entries per category to evaluate (default 1)")
    parser.add_argument(
        "--synthetic-steps",
        type=int,
        default=DEMO_SYNTHETIC_STEPS,
        help="GRPO steps of the synthetic run (default %(default)s, as the learning test)",
    )
    parser.add_argument("--skip-synthetic", action="store_true", help="skip the synthetic learning run")
    parser.add_argument(
        "--overwrite", action="store_true", help="write into an existing --out that an earlier demo did not write"
    )
    parser.set_defaults(func=run, validate=validate)


def validate(args) -> None:
    from envtune_jax.cli import outputs
    from envtune_jax.cli import validate as check
    from envtune_jax.config import ConfigError

    check.at_least(args, 1, "eval_limit", "synthetic_steps")
    if args.hf is not None:
        check.hf_checkpoint(args.hf)
    if args.out.exists() and not args.out.is_dir():
        raise ConfigError(f"--out {args.out} exists and is not a folder")
    outputs.check_replaceable(args.out, {}, "demo", args.overwrite)  # it writes subfolders: --hf may lie inside


def _banner(step: int, total: int, text: str) -> float:
    print(f"\n[{step}/{total}] {text}", flush=True)
    return time.perf_counter()


def write_tiny_checkpoint(out: Path) -> Path:
    """A tiny random Qwen3 in HF layout with the embedded Qwen3 tokenizer files."""
    from envtune_jax.chat.tokenizer import save_tokenizer
    from envtune_jax.models import hf_io
    from envtune_jax.rl.model_loader import load_model

    tokenizer_dir = out.parent / f"{out.name}-tokenizer"
    tiny = load_model(use="convert", preset="tiny", seed=0)
    save_tokenizer(tiny.tokenizer, tokenizer_dir)
    hf_io.save_pretrained(tiny.model, out, tokenizer_dir=tokenizer_dir, progress=False)
    return out


def run(args) -> int:
    from envtune_jax.cli import outputs
    from envtune_jax.environments.config import EnvironmentConfig
    from envtune_jax.environments.eval_report import category_table, markdown_table, write_results
    from envtune_jax.environments.evaluation import evaluate_bfcl
    from envtune_jax.environments.splits import first_per_category, split_entries
    from envtune_jax.models import checkpointing, hf_io
    from envtune_jax.rl.model_loader import load_model
    from envtune_jax.rl.model_policy import build_model_policy
    from envtune_jax.rl.run_config import load_run_config
    from envtune_jax.rl.synthetic_run import load_synthetic_recipe, run_synthetic
    from envtune_jax.rl.train_loop import train

    out = args.out.absolute()
    out.mkdir(parents=True, exist_ok=True)
    outputs.mark(out, "demo", args.hf)  # a later demo may write here again
    started = time.perf_counter()
    total = 6
    t = _banner(
        1,
        total,
        "tiny random Qwen3 checkpoint (HF layout, embedded Qwen3 tokenizer)" if args.hf is None else f"using {args.hf}",
    )
    hf_dir = args.hf or write_tiny_checkpoint(out / "hf-tiny")
    print(f"  {hf_dir} ({time.perf_counter() - t:.1f}s)")

    t = _banner(2, total, "convert HF → envtune checkpoint")
    converted = load_model(use="convert", hf=hf_dir)
    ckpt = checkpointing.save_model(converted.model, out / "ckpt", tokenizer_dir=converted.tokenizer_dir)
    print(f"  {ckpt} ({time.perf_counter() - t:.1f}s)")

    synthetic_summary = None
    if not args.skip_synthetic:
        t = _banner(
            3, total, "synthetic multi-turn tool task: warm-up, then GRPO (docs/training.md: Synthetic learning run)"
        )
        recipe = load_synthetic_recipe([f"stage.max_steps={args.synthetic_steps}"])

        def show(step, record):
            print(f"  step {step:3d}  reward {record['reward_mean']:.3f}  loss {record['loss']:+.4f}", flush=True)

        result = run_synthetic(recipe, out / "synthetic", on_step=show, progress=True)
        history = result.history
        synthetic_summary = (history[0]["reward_mean"], history[-1]["reward_mean"])
        print(
            f"  reward {synthetic_summary[0]:.3f} → {synthetic_summary[1]:.3f}; "
            f"curve: {out / 'synthetic' / 'metrics.jsonl'} "
            f"({time.perf_counter() - t:.1f}s)"
        )

    t = _banner(4, total, "4-stage curriculum on BFCL train entries (short prompts, 1 step per stage)")
    recipe = Path(__file__).resolve().parents[2] / "configs" / "recipes" / "tiny_cpu.yaml"
    run_cfg, stages = load_run_config(recipe, [f"run_dir={out / 'train'}", f"model.ckpt={ckpt}", "model.preset=null"])
    run_dir = train(run_cfg, stages).run_dir
    print(f"  {run_dir} ({time.perf_counter() - t:.1f}s)")

    t = _banner(5, total, f"evaluate on the test split ({args.eval_limit} entries per category, official protocol)")
    entries = first_per_category(split_entries("test"), args.eval_limit)
    policy = build_model_policy(ckpt=str(run_dir / "final"), batch_size=4, max_cache_len=8192, max_new_tokens=32)
    records = evaluate_bfcl(entries, policy, EnvironmentConfig.evaluation())
    rows = category_table(records)
    paths = write_results(
        out / "eval",
        rows,
        records,
        {"source": str(run_dir / "final"), "split": "test", "limit_per_category": args.eval_limit},
    )
    table = markdown_table(rows)
    print(table)
    print(f"  ({time.perf_counter() - t:.1f}s)")

    t = _banner(6, total, "export the trained model to HF safetensors")
    final = load_model(use="convert", ckpt=run_dir / "final")
    exported = hf_io.save_pretrained(final.model, out / "export", tokenizer_dir=final.tokenizer_dir)
    print(f"  {exported} ({time.perf_counter() - t:.1f}s)")

    summary = {
        "hf_checkpoint": str(hf_dir),
        "converted": str(ckpt),
        "synthetic_metrics": str(out / "synthetic" / "metrics.jsonl"),
        "synthetic_reward_first_last": synthetic_summary,
        "train_run": str(run_dir),
        "train_metrics": str(run_dir / "logs" / "metrics.jsonl"),
        "stage_exports": str(run_dir / "export"),
        "eval": {name: str(path) for name, path in paths.items()},
        "exported": str(exported),
        "seconds": round(time.perf_counter() - started, 1),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print("\nwritten:")
    for key, value in summary.items():
        print(f"  {key}: {value}")
    print(f"\nevaluation (tiny random model, {len(entries)} test entries — a pipeline check, not a score):\n{table}")
    sys.stdout.flush()
    return 0
