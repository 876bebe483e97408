"""`envtune bench generate`: decode and end-to-end generation speed, against the device's limits.

Batch B of random P-token prompts, N new tokens each (greedy, stop tokens off, cache sized P + N as
the peers use). One warm-up run compiles; then `--repeats` timed runs, reporting the median:
- decode-only: tok/s = B·N / decode time; ms per decode step = decode time / N;
- end-to-end: B·N / (prefill + decode time), compilation excluded;
- compile seconds (tracing + lowering + XLA compile, from jax.monitoring) per phase, separately.
Limits (docs/benchmarks.md): decode step floor = max(bytes / bandwidth,
flops / matmul rate) with bytes = weight bytes + KV bytes of the live tokens (B·(P + N/2) on
average) and flops = 2·params·B; prefill floor = 2·params·B·P / matmul rate. The fractions are
floor / measured. Prints one JSON line.
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import time


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_source_arguments(parser)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--prompt-len", type=int, default=512)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"], help="weights and compute")
    parser.add_argument("--cache-dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--attention", default="reference", choices=["reference", "xla", "cudnn"])
    parser.add_argument("--decode-attention", default="reference", choices=["reference", "pallas"],
                        help="one-token decode steps: the einsum on the cache, or JAX's Pallas GPU decode kernel")
    parser.add_argument("--prefill-chunk", type=int, default=256, help="widest prefill chunk (tokens)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--probe", action="store_true", help="measure bandwidth/matmul rate instead of the table")
    parser.add_argument("--mesh", default=None, metavar="data=D,fsdp=F,tensor=T")
    parser.add_argument("--profile", default=None, metavar="DIR", help="write a jax.profiler trace of one extra run")
    parser.add_argument("--seed", type=int, default=0)


def add_model_source_arguments(parser: argparse.ArgumentParser) -> None:
    """--preset (with --random-weights and --model-config changes) or --hf: the model `build_model` makes."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--preset", help="model shapes (qwen3-4b, qwen3-0.6b, tiny, ...); needs --random-weights")
    source.add_argument("--hf", help="a Hugging Face Qwen3 checkpoint directory")
    parser.add_argument("--random-weights", action="store_true", help="random weights created on device")
    parser.add_argument("--model-config", action="append", default=[], metavar="FIELD=VALUE",
                        help="change a field of the preset's Qwen3Config (repeatable), e.g. vocab_size=1000")


def model_config_changes(items) -> dict:
    """{field: value} from FIELD=VALUE strings, each value converted to its field's type (YAML for the
    others); unknown fields and unconvertible values are errors."""
    import dataclasses

    import yaml

    from envtune_jax.config import ConfigError
    from models.config import Qwen3Config

    fields = {f.name for f in dataclasses.fields(Qwen3Config)}
    changes = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or name not in fields:
            raise ConfigError(f"--model-config {item!r}: expected FIELD=VALUE with FIELD one of {sorted(fields)}")
        default = getattr(Qwen3Config(), name)
        try:
            if isinstance(default, bool) or not isinstance(default, (int, float)):
                changes[name] = yaml.safe_load(value)
            else:
                changes[name] = type(default)(float(value) if isinstance(default, float) else int(value))
        except ValueError as exc:
            raise ConfigError(f"--model-config {item!r}: {name} must be of type {type(default).__name__}") from exc
    return changes


class CompileTimer:
    """Sums jax.monitoring's tracing / lowering / backend-compile durations while active."""

    EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
              "/jax/core/compile/backend_compile_duration")

    def __init__(self):
        import jax

        self.seconds = 0.0
        self.active = False
        jax.monitoring.register_event_duration_secs_listener(self._listen)

    def _listen(self, event, duration, *args, **kwargs):
        if self.active and event in self.EVENTS:
            self.seconds += duration

    @contextlib.contextmanager
    def measure(self):
        self.seconds, self.active = 0.0, True
        try:
            yield self
        finally:
            self.active = False


def build_model(args, mesh):
    from envtune_jax import hf_io
    from models.config import preset

    if args.hf:
        return hf_io.load_pretrained(args.hf, dtype=args.dtype, mesh=mesh, attention_impl=args.attention,
                                     decode_attention=getattr(args, "decode_attention", "reference"), progress=False)
    if not args.random_weights:
        raise SystemExit("envtune bench generate: --preset needs --random-weights (or pass --hf DIR)")
    from envtune_jax.bench.random_weights import random_model
    cfg = preset(args.preset, param_dtype=args.dtype, dtype=args.dtype, attention_impl=args.attention,
                 decode_attention=getattr(args, "decode_attention", "reference"),
                 **model_config_changes(getattr(args, "model_config", [])))
    return random_model(cfg, mesh, seed=args.seed)


def one_run(engine, prompts, sampling, capacity, timer):
    """(prefill s, decode s, prefill compile s, decode compile s, tokens generated) of one generation."""
    import jax

    state = engine.new_state(capacity)
    jax.block_until_ready(state)
    with timer.measure():
        start = time.perf_counter()
        state = engine.refill(state, dict(enumerate(prompts)))
        jax.block_until_ready(state)
        prefill_s = time.perf_counter() - start
    prefill_compile = timer.seconds
    with timer.measure():
        start = time.perf_counter()
        state, result = engine.decode(state, sampling)  # returns after pulling the tokens to the host
        decode_s = time.perf_counter() - start
    return prefill_s, decode_s, prefill_compile, timer.seconds, int(result.num_tokens.sum())


def limits_report(cfg, engine, limits, batch, prompt_len, new_tokens, prefill_s, decode_s):
    import jax.numpy as jnp

    weight_bytes = cfg.num_params * jnp.dtype(cfg.param_dtype).itemsize
    kv_per_token = cfg.num_layers * 2 * cfg.num_kv_heads * cfg.head_dim * engine.cache_dtype.itemsize
    live_tokens = batch * (prompt_len + new_tokens / 2)
    step_floor = max((weight_bytes + kv_per_token * live_tokens) / limits.bandwidth_bytes_per_s,
                     2 * cfg.num_params * batch / limits.matmul_flops_per_s)
    prefill_floor = 2 * cfg.num_params * batch * prompt_len / limits.matmul_flops_per_s
    end_to_end_floor = prefill_floor + new_tokens * step_floor
    return {
        "weight_bytes": weight_bytes, "kv_bytes_per_token": kv_per_token,
        "decode_step_floor_ms": 1e3 * step_floor, "decode_floor_tok_s": batch / step_floor,
        "decode_fraction_of_limit": step_floor / (decode_s / new_tokens),
        "prefill_floor_s": prefill_floor,
        "end_to_end_floor_tok_s": batch * new_tokens / end_to_end_floor,
        "end_to_end_fraction_of_limit": end_to_end_floor / (prefill_s + decode_s),
    }


def run(args) -> dict:
    import jax
    import numpy as np

    from envtune_jax.bench.device_limits import device_limits
    from envtune_jax.bench.profiling import maybe_trace
    from envtune_jax.cli.common import parse_mesh, print_json
    from models.generation import BucketConfig, GenerationEngine, SamplingParams
    from models.attention import decode_kernel_blocks

    mesh = parse_mesh(args.mesh)
    model = build_model(args, mesh)
    cfg = model.config
    capacity = args.prompt_len + args.new_tokens
    engine = GenerationEngine(model, batch_size=args.batch, max_cache_len=capacity, mesh=mesh,
                              cache_dtype=args.cache_dtype,
                              buckets=BucketConfig(min_chunk_len=min(16, args.prefill_chunk),
                                                   prefill_chunk=args.prefill_chunk))
    prompts = np.random.RandomState(args.seed).randint(0, cfg.vocab_size, (args.batch, args.prompt_len)).tolist()
    sampling = SamplingParams(greedy=True, max_new_tokens=args.new_tokens, stop_token_ids=())
    timer = CompileTimer()
    warm = one_run(engine, prompts, sampling, capacity, timer)
    runs = [one_run(engine, prompts, sampling, capacity, timer) for _ in range(args.repeats)]
    if args.profile:
        with maybe_trace(args.profile):
            one_run(engine, prompts, sampling, capacity, timer)
    if any(r[4] != args.batch * args.new_tokens for r in [warm, *runs]):
        raise RuntimeError("a run did not generate batch x new-tokens tokens")
    prefill_s = statistics.median(r[0] for r in runs)
    decode_s = statistics.median(r[1] for r in runs)
    devices = list(mesh.devices.flat) if mesh is not None else jax.devices()[:1]
    limits = device_limits(probe=args.probe, devices=devices)
    stats = devices[0].memory_stats() or {}
    record = {
        "benchmark": "generate", "model": args.preset or str(args.hf), "params": cfg.num_params,
        "batch": args.batch, "prompt_len": args.prompt_len, "new_tokens": args.new_tokens,
        "dtype": args.dtype, "cache_dtype": args.cache_dtype, "attention": cfg.attention_impl,
        "decode_attention": cfg.decode_attention,
        # (block_k, k_splits) of the Pallas decode kernel; null: the einsum ran (not asked, or no block divides S)
        "decode_kernel_blocks": (decode_kernel_blocks(capacity, args.batch, cfg.num_kv_heads)
                                 if cfg.decode_attention == "pallas" else None),
        "prefill_chunk": args.prefill_chunk, "repeats": args.repeats,
        "decode_tok_s": args.batch * args.new_tokens / decode_s,
        "ms_per_decode_step": 1e3 * decode_s / args.new_tokens,
        "prefill_tok_s": args.batch * args.prompt_len / prefill_s,
        "end_to_end_tok_s": args.batch * args.new_tokens / (prefill_s + decode_s),
        "prefill_s": prefill_s, "decode_s": decode_s,
        "compile_s": {"prefill": warm[2], "decode": warm[3]},
        "first_run_s": {"prefill": warm[0], "decode": warm[1]},
        "compilations": dict(engine.trace_counts), "profile_dir": args.profile,
        **limits_report(cfg, engine, limits, args.batch, args.prompt_len, args.new_tokens, prefill_s, decode_s),
        "limits": limits.as_dict(),
        "peak_memory_bytes": stats.get("peak_bytes_in_use"),
        "jax": jax.__version__, "device": str(devices[0]), "device_kind": devices[0].device_kind,
        "num_devices": len(devices),
    }
    print_json(record)
    return record


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="bench_generate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    run(parser.parse_args(argv))
    return 0
