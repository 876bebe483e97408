"""`envtune bench generate`: decode and end-to-end generation speed, against the device's limits.

Batch B of random P-token prompts, N new tokens each (greedy, stop tokens off, cache sized P + N as
the peers use). One warm-up run compiles; then `--repeats` timed runs, reporting the median:
- decode-only: tok/s = B·N / decode time; ms per decode step = decode time / N;
- end-to-end: B·N / (prefill + decode time), compilation excluded;
- compile seconds (tracing + lowering + XLA compile, from jax.monitoring) per phase, separately.
Limits (docs/benchmarks-gpu.md): decode step floor = max(bytes / bandwidth,
flops / matmul rate) with bytes = weight bytes + KV bytes of the live tokens (B·(P + N/2) on
average) and flops = 2·params·B; prefill floor = 2·params·B·P / matmul rate. The fractions are
floor / measured. Prints one JSON line per shape: `--shapes 1x512x128,64x512x256` measures several
(B, P, N) with one model (built once); a shape that fails prints its error and the others still run,
then the command exits non-zero. `--tokens-out FILE.npz` saves each shape's generated tokens [B, N]
(key "BxPxN") so two runs (e.g. the einsum and the Pallas decode attention, same seed) can be compared.
`peak_memory_bytes` is the process's peak so far: with several shapes, list them smallest first.
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
    parser.add_argument("--shapes", default=None, metavar="BxPxN,...",
                        help="several (batch, prompt-len, new-tokens) shapes with one model, one JSON line each "
                             "(replaces --batch, --prompt-len, --new-tokens)")
    parser.add_argument("--tokens-out", default=None, metavar="FILE.npz",
                        help="save each shape's generated tokens [B, N] under the key BxPxN")
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


def check_model_source(args) -> None:
    """--hf names a loadable checkpoint, or --preset a known preset (with --random-weights) whose
    --model-config changes make a valid Qwen3Config; ConfigError otherwise (before anything heavy loads)."""
    from envtune_jax.cli import validate as check
    from envtune_jax.config import ConfigError
    from models.config import preset

    if args.hf:
        check.hf_checkpoint(args.hf)
        return
    check.preset_name(args.preset)
    if not args.random_weights:
        raise ConfigError("--preset needs --random-weights (or pass --hf DIR)")
    try:
        preset(args.preset, **model_config_changes(getattr(args, "model_config", [])))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"--model-config: {exc}") from None


def check_arguments(args) -> list[tuple[int, int, int]]:
    """The (B, P, N) shapes to measure; ConfigError (one line, exit 2) before any model loads."""
    from envtune_jax.cli import validate as check

    check_model_source(args)
    check.at_least(args, 1, "batch", "prompt_len", "new_tokens", "repeats", "prefill_chunk")
    check.mesh_spec(args.mesh)
    return parse_shapes(args.shapes) if args.shapes else [(args.batch, args.prompt_len, args.new_tokens)]


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
    """The --hf or --preset model, loaded for inference in --dtype (rl.model_loader.load_model)."""
    from rl.model_loader import load_model

    kernels = dict(attention_impl=args.attention, decode_attention=getattr(args, "decode_attention", "reference"))
    if args.hf:
        return load_model(use="inference", hf=args.hf, param_dtype=args.dtype, mesh=mesh, progress=False,
                          **kernels).model
    return load_model(use="inference", preset=args.preset, param_dtype=args.dtype, mesh=mesh, seed=args.seed,
                      preset_changes=model_config_changes(getattr(args, "model_config", [])), **kernels).model


def parse_shapes(text: str) -> list[tuple[int, int, int]]:
    """[(B, P, N), ...] from "BxPxN,BxPxN"; ConfigError for anything else."""
    from envtune_jax.config import ConfigError

    shapes = []
    for item in text.split(","):
        parts = item.strip().split("x")
        try:
            shape = tuple(int(v) for v in parts)
        except ValueError:
            shape = ()
        if len(shape) != 3 or min(shape) < 1:
            raise ConfigError(f"--shapes {text!r}: expected BxPxN[,BxPxN...] of positive integers, got {item!r}")
        shapes.append(shape)
    return shapes


def one_run(engine, prompts, sampling, capacity, timer):
    """(prefill s, decode s, prefill compile s, decode compile s, tokens generated, tokens [B, N]) of one
    generation."""
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
    return prefill_s, decode_s, prefill_compile, timer.seconds, int(result.num_tokens.sum()), result.tokens


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


def run(args) -> list[dict]:
    """Measures every shape with one model; prints and returns one record per shape that succeeded."""
    import traceback

    import jax
    import numpy as np

    from envtune_jax.bench.device_limits import device_limits
    from envtune_jax.cli.common import parse_mesh, print_json

    shapes = check_arguments(args)
    mesh = parse_mesh(args.mesh)
    model = build_model(args, mesh)
    devices = list(mesh.devices.flat) if mesh is not None else jax.devices()[:1]
    limits = device_limits(probe=args.probe, devices=devices)
    records, tokens, failed = [], {}, []
    for batch, prompt_len, new_tokens in shapes:
        try:
            record, tokens_bn = measure(model, mesh, devices, limits, args, batch, prompt_len, new_tokens)
        except Exception as exc:  # noqa: BLE001 - one shape's failure (e.g. out of memory) must not hide the others
            traceback.print_exc()
            first_line = (str(exc).splitlines() or [""])[0]
            failed.append(f"{batch}x{prompt_len}x{new_tokens}: {type(exc).__name__}: {first_line}")
            continue
        print_json(record)
        records.append(record)
        tokens[f"{batch}x{prompt_len}x{new_tokens}"] = tokens_bn
        if args.tokens_out:
            np.savez(args.tokens_out, **tokens)
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(shapes)} shapes failed: " + "; ".join(failed))
    return records


def measure(model, mesh, devices, limits, args, batch: int, prompt_len: int, new_tokens: int):
    """(record, generated tokens [B, N]) of one shape: a warm-up run, then `args.repeats` timed runs."""
    import jax
    import numpy as np

    from envtune_jax.bench.profiling import maybe_trace
    from models.attention import decode_kernel_blocks
    from models.generation import BucketConfig, GenerationEngine, SamplingParams

    cfg = model.config
    capacity = prompt_len + new_tokens
    engine = GenerationEngine(model, batch_size=batch, max_cache_len=capacity, mesh=mesh,
                              cache_dtype=args.cache_dtype,
                              buckets=BucketConfig(min_chunk_len=min(16, args.prefill_chunk),
                                                   prefill_chunk=args.prefill_chunk))
    prompts = np.random.RandomState(args.seed).randint(0, cfg.vocab_size, (batch, prompt_len)).tolist()
    sampling = SamplingParams(greedy=True, max_new_tokens=new_tokens, stop_token_ids=())
    timer = CompileTimer()
    warm = one_run(engine, prompts, sampling, capacity, timer)
    runs = [one_run(engine, prompts, sampling, capacity, timer) for _ in range(args.repeats)]
    if args.profile:
        with maybe_trace(args.profile):
            one_run(engine, prompts, sampling, capacity, timer)
    if any(r[4] != batch * new_tokens for r in [warm, *runs]):
        raise RuntimeError("a run did not generate batch x new-tokens tokens")
    prefill_s = statistics.median(r[0] for r in runs)
    decode_s = statistics.median(r[1] for r in runs)
    stats = devices[0].memory_stats() or {}
    record = {
        "benchmark": "generate", "model": args.preset or str(args.hf), "params": cfg.num_params,
        "batch": batch, "prompt_len": prompt_len, "new_tokens": new_tokens,
        "dtype": args.dtype, "cache_dtype": args.cache_dtype, "attention": cfg.attention_impl,
        "decode_attention": cfg.decode_attention,
        # (block_k, k_splits) of the Pallas decode kernel; null: the einsum ran (not asked, or no block divides S)
        "decode_kernel_blocks": (decode_kernel_blocks(capacity, batch, cfg.num_kv_heads)
                                 if cfg.decode_attention == "pallas" else None),
        "prefill_chunk": args.prefill_chunk, "repeats": args.repeats,
        "decode_tok_s": batch * new_tokens / decode_s,
        "ms_per_decode_step": 1e3 * decode_s / new_tokens,
        "prefill_tok_s": batch * prompt_len / prefill_s,
        "end_to_end_tok_s": batch * new_tokens / (prefill_s + decode_s),
        "prefill_s": prefill_s, "decode_s": decode_s,
        "compile_s": {"prefill": warm[2], "decode": warm[3]},
        "first_run_s": {"prefill": warm[0], "decode": warm[1]},
        "compilations": dict(engine.trace_counts), "profile_dir": args.profile,
        **limits_report(cfg, engine, limits, batch, prompt_len, new_tokens, prefill_s, decode_s),
        "limits": limits.as_dict(),
        "peak_memory_bytes": stats.get("peak_bytes_in_use"),
        "jax": jax.__version__, "device": str(devices[0]), "device_kind": devices[0].device_kind,
        "num_devices": len(devices),
    }
    return record, np.asarray(runs[-1][5], np.int32)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="bench_generate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    run(parser.parse_args(argv))
    return 0
