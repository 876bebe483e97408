"""`envtune bench extend`: one evaluation round's prefill, with compacted extends and with all-slot calls.

The round an evaluation step runs when one episode ends and a new one takes its slot: B slots hold a
`--context`-token conversation; B - 1 of them append a `--tail`-token step (the model's last reply and
the tool results) and the last slot replaces its conversation with a new `--prompt-len`-token prompt
(`GenerationEngine.replace_tail`, what `ModelPolicy` calls). Timed twice in the same run, on two engines
over the same weights: with compacted extends (the default: extend_plan.py runs the long prompt's later
chunks on its row only, and the short tails at their own width) and with every call on all B slots
(`compact_rows: false`). One warm-up round each compiles; then the median of
`--repeats` rounds (the set-up prefill of the contexts is not timed). Reports seconds per round, the
token-rows each mode computed, the speed-up (all-slot seconds / compacted seconds), and the FLOPs the
appended tokens need (their layer matmuls, 2·(params − embedding rows) each, plus their attention over
the tokens before them, 4·layers·N·H per pair: what the prefill benchmark calls executed FLOPs) over
the device's matmul rate.
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import statistics
import time

from envtune_jax.bench.generate import add_model_source_arguments
from envtune_jax.bench.prefill import check_chunk
from envtune_jax.models.dtype_rule import DTYPE_RULE


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_source_arguments(parser)
    parser.add_argument("--batch", type=int, default=16, help="slots (B)")
    parser.add_argument("--context", type=int, default=2048, help="tokens each slot holds before the round")
    parser.add_argument("--tail", type=int, default=128, help="tokens each of B - 1 slots appends")
    parser.add_argument("--prompt-len", type=int, default=4096, help="the new episode's prompt in the last slot")
    parser.add_argument("--chunk", type=int, default=512, help="widest prefill chunk (tokens per forward pass)")
    parser.add_argument(
        "--dtype",
        default=DTYPE_RULE["inference"].param,
        choices=["bfloat16", "float32"],
        help="weights and compute (default: the loader's rule for inference)",
    )
    parser.add_argument("--cache-dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--attention", default="reference", choices=["reference", "xla", "cudnn"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--probe", action="store_true", help="measure bandwidth/matmul rate instead of the table")
    parser.add_argument("--mesh", default=None, metavar="data=D,fsdp=F,tensor=T")
    parser.add_argument("--seed", type=int, default=0)


def check_arguments(args) -> None:
    from envtune_jax.bench.generate import check_model_source
    from envtune_jax.cli import validate as check
    from envtune_jax.config import ConfigError

    if args.batch < 2 or min(args.context, args.tail, args.prompt_len, args.repeats) < 1:
        raise ConfigError("--batch must be ≥ 2 and --context, --tail, --prompt-len, --repeats ≥ 1")
    check_chunk(args.chunk)
    check_model_source(args)
    check.mesh_spec(args.mesh)


def time_round(engine, contexts, tails, prompt) -> tuple[float, int]:
    """(seconds, token-rows computed) of one round, from freshly prefilled contexts (not timed)."""
    import jax

    state = engine.start(contexts, rng=0)
    jax.block_until_ready(state)
    computed = engine.extend_tokens["computed"]
    replacements = {slot: (len(contexts[slot]), tail) for slot, tail in enumerate(tails)}
    replacements[len(contexts) - 1] = (0, prompt)
    start = time.perf_counter()
    state = engine.replace_tail(state, replacements)
    jax.block_until_ready(state)
    return time.perf_counter() - start, engine.extend_tokens["computed"] - computed


def round_flops(cfg, args) -> float:
    """FLOPs the round's appended tokens need: layer matmuls + attention to every earlier token."""
    appended = (args.batch - 1) * args.tail + args.prompt_len
    pairs = (
        (args.batch - 1) * args.tail * (args.context + (args.tail + 1) / 2)  # each tail token sees its past
        + args.prompt_len * (args.prompt_len + 1) / 2
    )  # the new prompt, causal
    return 2.0 * cfg.layer_params * appended + 4.0 * cfg.num_layers * cfg.num_heads * cfg.head_dim * pairs


def run(args) -> dict:
    import jax
    import numpy as np

    from envtune_jax.bench.generate import CompileTimer, build_model
    from envtune_jax.cli.common import parse_mesh, print_json
    from envtune_jax.device_limits import device_limits
    from envtune_jax.models.generation.buckets import BucketConfig
    from envtune_jax.models.generation.engine import GenerationEngine

    check_arguments(args)
    mesh = parse_mesh(args.mesh)
    model = build_model(args, mesh)
    cfg = model.config
    rng = np.random.RandomState(args.seed)
    contexts = rng.randint(0, cfg.vocab_size, (args.batch, args.context)).tolist()
    tails = rng.randint(0, cfg.vocab_size, (args.batch - 1, args.tail)).tolist()
    prompt = rng.randint(0, cfg.vocab_size, args.prompt_len).tolist()
    capacity = max(args.context + args.tail, args.prompt_len)
    timer = CompileTimer()
    modes = {}
    for name, compact in (("compacted", True), ("all_slots", False)):
        buckets = BucketConfig(
            min_cache_len=capacity, min_chunk_len=min(16, args.chunk), prefill_chunk=args.chunk, compact_rows=compact
        )
        engine = GenerationEngine(
            model,
            batch_size=args.batch,
            max_cache_len=capacity,
            mesh=mesh,
            cache_dtype=args.cache_dtype,
            buckets=buckets,
        )
        with timer.measure():
            time_round(engine, contexts, tails, prompt)
        compile_s = timer.seconds
        runs = [time_round(engine, contexts, tails, prompt) for _ in range(args.repeats)]
        modes[name] = {
            "round_s": statistics.median(s for s, _ in runs),
            "round_s_min": min(s for s, _ in runs),
            "token_rows": runs[0][1],
            "compile_s": compile_s,
            "compilations": dict(engine.trace_counts),
        }
    devices = list(mesh.devices.flat) if mesh is not None else jax.devices()[:1]
    limits = device_limits(probe=args.probe, devices=devices)
    appended = (args.batch - 1) * args.tail + args.prompt_len
    floor_s = round_flops(cfg, args) / limits.matmul_flops_per_s
    record = {
        "benchmark": "extend",
        "model": args.preset or str(args.hf),
        "params": cfg.num_params,
        "batch": args.batch,
        "context": args.context,
        "tail": args.tail,
        "prompt_len": args.prompt_len,
        "chunk": args.chunk,
        "dtype": args.dtype,
        "cache_dtype": args.cache_dtype,
        "attention": cfg.attention_impl,
        "repeats": args.repeats,
        "appended_tokens": appended,
        **modes,
        "speedup": modes["all_slots"]["round_s"] / modes["compacted"]["round_s"],
        "token_rows_ratio": modes["all_slots"]["token_rows"] / modes["compacted"]["token_rows"],
        "floor_s": floor_s,
        "fraction_of_matmul_rate": floor_s / modes["compacted"]["round_s"],
        "all_slots_fraction_of_matmul_rate": floor_s / modes["all_slots"]["round_s"],
        "limits": limits.as_dict(),
        "device_kind": devices[0].device_kind,
        "num_devices": len(devices),
        "jax": jax.__version__,
    }
    print_json(record)
    return record
