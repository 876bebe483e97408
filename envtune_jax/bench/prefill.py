"""`envtune bench prefill`: prompt processing speed (B prompts of P tokens into an empty KV cache).

Times `GenerationEngine.refill` on B random P-token prompts: the forward pass over every prompt
token, writing the KV cache, and the final hidden state of each prompt's last token; no logits are
computed for prompt positions (the peer, benchmarks/peer_hf.py, keeps one position's logits
with `logits_to_keep=1`). Prompts longer than `--chunk` go through in chunks. One warm-up run
compiles; then `--repeats` timed runs, reporting the median:
- tokens/s = B·P / prefill seconds;
- model TFLOP/s = 2·params·B·P / seconds and `fraction_of_limit` = that over the devices' matmul rate
  (the formulas of docs/benchmarks-gpu.md and the peer; device_limits: the
  measured table, e.g. H100 789e12 bf16; other devices are probed);
- `executed_tflops_per_s` and `fraction_of_matmul_rate`: the FLOPs prefill really does, i.e. the
  matmuls of every layer (2·(params − embedding rows)·B·P: the embedding is a lookup and no logits
  are computed) plus causal attention (QKᵀ and PV, 2·layers·B·N·H·P²), over seconds and the rate;
- compile seconds (tracing + lowering + XLA compile, from jax.monitoring) apart from the runs.
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import statistics
import time

from envtune_jax.bench.generate import add_model_source_arguments
from envtune_jax.models.dtype_rule import DTYPE_RULE

ATTENTION_CHOICES = ("reference", "chunked", "xla", "cudnn")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_source_arguments(parser)
    parser.add_argument("--batch", type=int, default=8, help="prompts (B)")
    parser.add_argument("--prompt-len", type=int, default=2048, help="tokens per prompt (P)")
    parser.add_argument("--chunk", type=int, default=2048, help="widest prefill chunk (tokens per forward pass)")
    parser.add_argument(
        "--dtype",
        default=DTYPE_RULE["inference"].param,
        choices=["bfloat16", "float32"],
        help="weights and compute (default: the loader's rule for inference)",
    )
    parser.add_argument("--cache-dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--attention", default="reference", choices=ATTENTION_CHOICES)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--probe", action="store_true", help="measure bandwidth/matmul rate instead of the table")
    parser.add_argument("--mesh", default=None, metavar="data=D,fsdp=F,tensor=T")
    parser.add_argument("--profile", default=None, metavar="DIR", help="write a jax.profiler trace of one extra run")
    parser.add_argument("--seed", type=int, default=0)


def check_arguments(args) -> None:
    from envtune_jax.bench.generate import check_model_source
    from envtune_jax.cli import validate as check
    from envtune_jax.config import ConfigError

    if args.batch < 1 or args.prompt_len < 1 or args.repeats < 1:
        raise ConfigError(
            f"--batch, --prompt-len and --repeats must be ≥ 1, got {args.batch}, {args.prompt_len}, {args.repeats}"
        )
    check_chunk(args.chunk)
    check_model_source(args)
    check.mesh_spec(args.mesh)


def check_chunk(chunk: int) -> None:
    """--chunk must be a power of two, as the engine's chunk widths are."""
    from envtune_jax.config import ConfigError

    if chunk < 1 or chunk & (chunk - 1):
        raise ConfigError(f"--chunk must be a power of two (the engine's chunk widths are), got {chunk}")


def prefill_flops(cfg, batch: int, prompt_len: int) -> tuple[float, float]:
    """(model FLOPs 2·params·B·P as the peer counts them, FLOPs executed: layer matmuls without the
    embedding table(s) + causal attention 2·layers·B·N·H·P²) of one prefill."""
    model = 2.0 * cfg.num_params * batch * prompt_len
    attention = 2.0 * cfg.num_layers * batch * cfg.num_heads * cfg.head_dim * prompt_len**2
    return model, 2.0 * cfg.layer_params * batch * prompt_len + attention


def time_prefill(engine, prompts, capacity: int) -> float:
    """Seconds of one refill of `prompts` into a fresh state (the state's allocation is not timed)."""
    import jax

    state = engine.new_state(capacity)
    jax.block_until_ready(state)
    start = time.perf_counter()
    state = engine.refill(state, dict(enumerate(prompts)))
    jax.block_until_ready(state)
    return time.perf_counter() - start


def run(args) -> dict:
    import jax
    import numpy as np

    from envtune_jax.bench.generate import CompileTimer, build_model
    from envtune_jax.bench.profiling import maybe_trace
    from envtune_jax.cli.common import parse_mesh, print_json
    from envtune_jax.device_limits import device_limits
    from envtune_jax.models.generation.buckets import BucketConfig
    from envtune_jax.models.generation.engine import GenerationEngine

    check_arguments(args)
    mesh = parse_mesh(args.mesh)
    model = build_model(args, mesh)
    cfg = model.config
    engine = GenerationEngine(
        model,
        batch_size=args.batch,
        max_cache_len=args.prompt_len,
        mesh=mesh,
        cache_dtype=args.cache_dtype,
        buckets=BucketConfig(min_chunk_len=min(16, args.chunk), prefill_chunk=args.chunk),
    )
    prompts = np.random.RandomState(args.seed).randint(0, cfg.vocab_size, (args.batch, args.prompt_len)).tolist()
    timer = CompileTimer()
    with timer.measure():  # compiles the cache allocation and the extend program(s)
        start = time.perf_counter()
        time_prefill(engine, prompts, args.prompt_len)
        first_s = time.perf_counter() - start
    compile_s = timer.seconds
    times = [time_prefill(engine, prompts, args.prompt_len) for _ in range(args.repeats)]
    with maybe_trace(args.profile):
        profiled_s = time_prefill(engine, prompts, args.prompt_len) if args.profile else None
    seconds = statistics.median(times)
    devices = list(mesh.devices.flat) if mesh is not None else jax.devices()[:1]
    limits = device_limits(probe=args.probe, devices=devices)
    model_flops, executed_flops = prefill_flops(cfg, args.batch, args.prompt_len)
    stats = devices[0].memory_stats() or {}
    record = {
        "benchmark": "prefill",
        "model": args.preset or str(args.hf),
        "params": cfg.num_params,
        "batch": args.batch,
        "prompt_len": args.prompt_len,
        "chunk": args.chunk,
        "dtype": args.dtype,
        "cache_dtype": args.cache_dtype,
        "attention": cfg.attention_impl,
        "repeats": args.repeats,
        "tok_s": args.batch * args.prompt_len / seconds,
        "prefill_s": seconds,
        "prefill_s_min": min(times),
        "model_tflops_per_s": model_flops / seconds / 1e12,
        "executed_tflops_per_s": executed_flops / seconds / 1e12,
        "fraction_of_matmul_rate": executed_flops / seconds / limits.matmul_flops_per_s,
        "floor_s": model_flops / limits.matmul_flops_per_s,
        "limit_tok_s": args.batch * args.prompt_len * limits.matmul_flops_per_s / model_flops,
        "fraction_of_limit": model_flops / limits.matmul_flops_per_s / seconds,
        "compile_s": compile_s,
        "first_run_s": first_s,
        "profiled_run_s": profiled_s,
        "profile_dir": args.profile,
        "compilations": dict(engine.trace_counts),
        "limits": limits.as_dict(),
        "peak_memory_bytes": stats.get("peak_bytes_in_use"),
        "device_kind": devices[0].device_kind,
        "num_devices": len(devices),
        "jax": jax.__version__,
    }
    print_json(record)
    return record
