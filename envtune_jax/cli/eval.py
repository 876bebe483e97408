"""`envtune eval`: BFCL V3 multi-turn accuracy per category, comparable with the official leaderboard.

Plays the selected entries with one policy (a model from --ckpt/--hf, recorded outputs from --replay, or
the built-in oracle / do-nothing policies) under the official protocol (no hints, 20 tool steps per
turn, official decoding and checker semantics), prints the Markdown table and writes eval_results.json,
eval_results.md and model_results.jsonl (official result layout) into --out. An --out that holds a
finished evaluation is refused unless --overwrite; an interrupted model or built-in policy run goes on
when started again with the same --out.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

from envtune_jax.cli import validate as check
from envtune_jax.config import ConfigError

SPLIT_CHOICES = ("test", "train", "all", "validation", "stage1_easy")
POLICY_CHOICES = ("oracle", "do-nothing")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="BFCL V3 multi-turn evaluation table (official protocol)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  envtune eval --policy oracle --split all\n"
        "  envtune eval --replay runs/eval-before/model_results.jsonl --split test\n"
        "  envtune eval --hf ~/models/Qwen3-4B-Instruct-2507 --split test --categories base,miss_func",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--ckpt", type=Path, help="envtune model checkpoint")
    source.add_argument("--hf", type=Path, help="Hugging Face checkpoint directory")
    source.add_argument(
        "--replay",
        type=Path,
        nargs="+",
        metavar="FILE",
        help="recorded outputs in the official result layout (files or folders)",
    )
    source.add_argument("--policy", choices=POLICY_CHOICES, help="built-in policy")
    parser.add_argument(
        "--split",
        choices=SPLIT_CHOICES,
        default="test",
        help="entries to evaluate (scenario split, docs/environments.md); default: test",
    )
    parser.add_argument(
        "--categories",
        default="all",
        help="comma-separated categories (base, long_context, miss_func, miss_param, or full names); default: all four",
    )
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: runs/eval-<timestamp>)")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a finished evaluation in --out (without it, such a folder is refused)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes for --policy/--replay runs (a model runs in this process)",
    )
    parser.add_argument(
        "--data-source",
        choices=("tfds", "package"),
        default="tfds",
        help="read entries through the TFDS builder (default) or straight from the package",
    )
    parser.add_argument("--data-dir", type=Path, default=None, help="TFDS data dir (default: user cache)")
    parser.add_argument(
        "--limit",
        type=int,
        default=None,
        metavar="N",
        help="evaluate only the first N entries of each category (quick checks; not comparable)",
    )
    model = parser.add_argument_group("model evaluation (--ckpt / --hf)")
    model.add_argument("--max-new-tokens", type=int, default=4096, help="per step (official: 4096)")
    model.add_argument("--batch-size", type=int, default=16, help="episodes generated together")
    model.add_argument("--max-cache-len", type=int, default=32768, help="longest conversation in tokens")
    model.add_argument(
        "--decode-chunk",
        type=int,
        default=128,
        help="tokens per decode call: a step that ends lets its episode move on while the others "
        "go on generating (0: every round waits for its longest step)",
    )
    model.add_argument(
        "--dtype",
        choices=("float32", "bfloat16"),
        default=None,
        help="weights and compute (default: bfloat16, the rule for inference, docs/models.md)",
    )
    model.add_argument("--mesh", default=None, metavar="data=D,fsdp=F,tensor=T", help="device mesh")
    model.add_argument(
        "--attention",
        default="reference",
        choices=("reference", "xla", "cudnn"),
        help="attention for prompt / tool-response chunks (cudnn on GPU for long contexts)",
    )
    model.add_argument(
        "--decode-attention",
        default="reference",
        choices=("reference", "pallas"),
        help="attention of one-token steps (pallas: JAX's Pallas GPU decode kernel)",
    )
    parser.set_defaults(func=run_locked, validate=validate)


def run_locked(args) -> int:
    """`run` with the output folder locked: one evaluation at a time per --out (a second one is refused).
    Runs after `validate(args)`; whether --out holds a finished evaluation is asked again under the lock
    (another evaluation may have finished there since)."""
    from envtune_jax.folder_lock import hold_folder

    with hold_folder(args.out, "evaluation output folder"):
        refuse_finished(args.out, args.overwrite)
        return run(args)


def parse_categories(text: str) -> tuple[str, ...]:
    from envtune_jax.environments.bfcl_data import CATEGORIES

    if text.strip() == "all":
        return CATEGORIES
    chosen = []
    for item in (part.strip() for part in text.split(",") if part.strip()):
        name = item if item.startswith("multi_turn_") else f"multi_turn_{item}"
        if name not in CATEGORIES:
            short = [category.removeprefix("multi_turn_") for category in CATEGORIES]
            raise ConfigError(f"--categories: unknown category {item!r}; choose from {', '.join(short)} (or all)")
        chosen.append(name)
    if not chosen:
        raise ConfigError(f"--categories {text!r}: names no category")
    return tuple(dict.fromkeys(chosen))


def validate(args) -> None:
    """Checks every argument (and reads --replay files) before anything is loaded or written."""
    from envtune_jax.environments.replay_files import load_recordings

    args.category_names = parse_categories(args.categories)
    check.at_least(args, 1, "limit", "workers", "max_new_tokens", "batch_size", "max_cache_len")
    check.at_least(args, 0, "decode_chunk")
    if args.hf is not None or args.ckpt is not None:
        check.model_source(args)
        check.mesh_spec(args.mesh)
    args.recordings = load_recordings(args.replay) if args.replay else None
    args.out = args.out or Path("runs") / f"eval-{datetime.datetime.now():%Y%m%d-%H%M%S}"
    if args.out.exists() and not args.out.is_dir():
        raise ConfigError(f"--out {args.out} exists and is not a folder")
    refuse_finished(args.out, args.overwrite)


def refuse_finished(out: Path, overwrite: bool) -> None:
    """ConfigError when `out` holds a finished evaluation (results, no progress file) and not `overwrite`."""
    from envtune_jax.environments.eval_report import PROGRESS_FILE
    from envtune_jax.environments.replay_files import EVAL_SUMMARY_FILE

    finished = (out / EVAL_SUMMARY_FILE).exists() and not (out / PROGRESS_FILE).exists()
    if finished and not overwrite:
        raise ConfigError(
            f"--out {out} holds a finished evaluation ({EVAL_SUMMARY_FILE}); choose another --out, "
            "or pass --overwrite to replace it"
        )


def run(args) -> int:
    """Runs after `validate(args)` (main calls both)."""
    from envtune_jax.environments.eval_report import EvalProgress, category_table, markdown_table, write_results
    from envtune_jax.environments.evaluation import replay_bfcl
    from envtune_jax.environments.split_sources import split_entries_from
    from envtune_jax.environments.splits import first_per_category

    categories = args.category_names
    entries = split_entries_from(args.data_source, args.split, categories, data_dir=args.data_dir)
    if args.limit is not None:
        entries = first_per_category(entries, args.limit)
    started = time.perf_counter()
    extra: dict = {}
    out = args.out
    progress = None
    if args.replay:
        source = "replay:" + ",".join(map(str, args.replay))
        extra |= report_recordings(args.recordings, entries, args)
        records = replay_bfcl(entries, args.recordings.steps, workers=args.workers)
    else:
        source = args.policy or (f"ckpt:{args.ckpt}" if args.ckpt else f"hf:{args.hf}")
        progress = EvalProgress(out, _run_identity(args, source, categories))
        if progress.done:
            extra["resumed_entries"] = len(progress.done)
        try:
            records = _play(args, [entry for entry in entries if entry.id not in progress.done], progress, extra, out)
        except BaseException:
            if not progress.done:  # nothing saved (e.g. the model did not load): leave no progress file behind
                progress.close()
            raise
        by_id = {**progress.done, **{record.episode_id: record for record in records}}
        records = [by_id[entry.id] for entry in entries]
    seconds = time.perf_counter() - started
    rows = category_table(records, categories)
    metadata = {
        "source": source,
        "split": args.split,
        "categories": list(categories),
        "protocol": "official (no hints, 20 tool steps per turn)",
        "seconds": round(seconds, 3),
        **extra,
    }
    inference_errors = sum(bool(record.inference_error) for record in records)
    if inference_errors:
        metadata["inference_errors"] = inference_errors
        print(
            f"envtune eval: {inference_errors} entries kept a tool call the official prompt formatter cannot "
            f"render, so the official harness would have stopped them with an error: they score 0",
            file=sys.stderr,
        )
    paths = write_results(out, rows, records, metadata)
    if progress is not None:
        progress.close()
    sys.stdout.write(markdown_table(rows))
    print(f"\n{len(records)} entries in {seconds:.1f} s; wrote {paths['json']}, {paths['markdown']}, {paths['layout']}")
    return 0


def report_recordings(recordings, entries, args) -> dict:
    """Warns (stderr) about recordings that are not scored as recorded, and returns the same for the
    results' metadata: entries without a recording, recorded ids outside the evaluated entries (by
    reason), failed inferences, recordings with another number of turns than their entry, repeated ids."""
    from envtune_jax.environments.replay_files import unscored_recordings

    found = unscored_recordings(recordings, entries, args.split, args.limit)
    messages = {
        "missing": f"of {len(entries)} evaluated entries have no recording and count as wrong",
        "failed_inference": "recordings hold an error text instead of steps (a failed inference) and count as "
        "wrong, as in the official evaluation",
        "turn_count": "recordings have another number of turns than their entry and count as wrong, as in the "
        "official evaluation",
        "repeated": "ids are recorded more than once with the same result (scored once)",
    }
    for reason, ids in found.items():
        what = messages.get(reason, f"recorded entries are not scored: {reason}")
        where = recordings.where.get(ids[0])
        first = f"{ids[0]}" + (f" at {where}" if where else "")
        print(f"envtune eval: warning: {len(ids)} {what} (first: {first})", file=sys.stderr)
    return {"unscored_recordings": found} if found else {}


def _run_identity(args, source: str, categories) -> dict:
    """What makes two evaluation runs the same run (an interrupted one resumes only into its own folder)."""
    run = {
        "source": source,
        "split": args.split,
        "categories": list(categories),
        "limit": args.limit,
        "data_source": args.data_source,
    }
    if args.policy is None:  # a model: what changes its steps
        run |= {"max_new_tokens": args.max_new_tokens, "max_cache_len": args.max_cache_len, "dtype": args.dtype}
    return run


def live_text(live, steps: int, shown: int = 2) -> str:
    """The entries in play, for the progress bar: '57 steps | base_3 turn 2/4 step 3, miss_func_8 turn 1/3 step 1
    (+2 more)'; `live` holds evaluation.LiveEpisode items."""
    parts = []
    for episode in live[:shown]:
        turns = f"/{episode.num_turns}" if episode.num_turns else ""
        parts.append(
            f"{episode.episode_id.removeprefix('multi_turn_')} turn {episode.turn + 1}{turns} step {episode.step + 1}"
        )
    more = f" (+{len(live) - shown} more)" if len(live) > shown else ""
    return f"{steps} steps | {', '.join(parts)}{more}" if parts else f"{steps} steps"


def _play(args, entries, progress, extra: dict, out: Path) -> list:
    """Plays `entries` with the chosen policy (none done: no model is loaded); each record is saved to
    `progress` as its entry ends, under a progress bar."""
    from tqdm.auto import tqdm

    from envtune_jax.environments.config import EnvironmentConfig
    from envtune_jax.environments.evaluation import evaluate_bfcl
    from envtune_jax.environments.policies import DoNothingPolicy, OraclePolicy
    from envtune_jax.progress import PhaseDisplay

    done = len(progress.done)
    if done:
        print(f"envtune eval: resuming: {done} entries already evaluated in {out}", file=sys.stderr)
    if not entries:
        return []
    if args.policy == "oracle":
        policy, workers = OraclePolicy.for_bfcl(entries), args.workers
    elif args.policy == "do-nothing":
        policy, workers = DoNothingPolicy(), args.workers
    else:
        from envtune_jax.cli.common import parse_mesh
        from envtune_jax.rl.model_policy import build_model_policy

        policy = build_model_policy(
            ckpt=str(args.ckpt) if args.ckpt else None,
            hf_dir=str(args.hf) if args.hf else None,
            batch_size=args.batch_size,
            max_cache_len=args.max_cache_len,
            max_new_tokens=args.max_new_tokens,
            dtype=args.dtype,
            mesh=parse_mesh(args.mesh),
            attention_impl=args.attention,
            decode_attention=args.decode_attention,
            decode_chunk=args.decode_chunk,
        )
        workers = 1
        print(
            f"envtune eval: finished entries are saved as they end; if interrupted, run the same command with "
            f"--out {out} to go on",
            file=sys.stderr,
        )
    bar = tqdm(total=done + len(entries), initial=done, desc="eval", unit="entry", file=sys.stderr)
    # a model's entries take many steps each: the bar shows the entries in play (turn, step) and compilations
    display = PhaseDisplay(bar) if args.policy is None else None
    if display is not None:
        display.show("0 steps | prefilling the first prompts")

    def on_record(record) -> None:
        progress.add(record)
        bar.update(1)

    def on_round(live, steps: int) -> None:
        display.show(live_text(live, steps))

    keep_history = args.policy is None  # only a model reads the conversation
    try:
        records = evaluate_bfcl(
            entries,
            policy,
            EnvironmentConfig.evaluation(),
            workers,
            keep_history=keep_history,
            on_record=on_record,
            on_round=on_round if display is not None else None,
        )
    finally:
        if display is not None:
            display.close()
        bar.close()
    if args.policy is None:  # a model: how its generation went
        stats = policy.stats
        extra["generation"] = {
            "decode_calls": stats.decode_calls,
            "slot_occupancy": round(stats.slot_occupancy, 4),
            "prompt_tokens": stats.prompt_tokens,
            "prefilled_tokens": stats.prefilled_tokens,
        }
    return records
