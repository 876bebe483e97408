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

`--shared-prefix G` measures GRPO-shaped batches: the B prompts are B/G distinct prompts, each given to G
slots, and every shape runs twice in this process, first on an engine that holds each group's prompt once
(prefix regions, `shared_prefix: G` in its JSON line), then on the plain engine (`shared_prefix: null`),
same prompts and weights. Every line counts the KV bytes a decode step reads (decode_reads.py: live
tokens for the Pallas kernel, the allocated cache for the einsum) and takes its decode limit from the live
bytes; the shared line adds `vs_unshared`: its speed-ups, the KV read ratio, and how many greedy rows
and tokens equal the plain engine's (bf16 near-ties may part rows late; a bug parts them at once).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import statistics
import time


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_source_arguments(parser)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--prompt-len", type=int, default=512)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument(
        "--shapes",
        default=None,
        metavar="BxPxN,...",
        help="several (batch, prompt-len, new-tokens) shapes with one model, one JSON line each "
        "(replaces --batch, --prompt-len, --new-tokens)",
    )
    parser.add_argument(
        "--tokens-out",
        default=None,
        metavar="FILE.npz",
        help="save each shape's generated tokens [B, N] under the key BxPxN",
    )
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"], help="weights and compute")
    parser.add_argument("--cache-dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--attention", default="reference", choices=["reference", "xla", "cudnn"])
    parser.add_argument(
        "--decode-attention",
        default="reference",
        choices=["reference", "pallas"],
        help="one-token decode steps: the einsum on the cache, or JAX's Pallas GPU decode kernel",
    )
    parser.add_argument(
        "--shared-prefix",
        type=int,
        default=None,
        metavar="G",
        help="GRPO groups of G slots (B/G distinct prompts, each given to G slots): measure each "
        "shape with each group's prompt held once, then without, in this process",
    )
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
    parser.add_argument(
        "--model-config",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="change a field of the preset's Qwen3Config (repeatable), e.g. vocab_size=1000",
    )


def model_config_changes(items) -> dict:
    """{field: value} from FIELD=VALUE strings, each value converted to its field's type (YAML for the
    others); unknown fields and unconvertible values are errors."""
    import dataclasses

    import yaml

    from envtune_jax.config import ConfigError
    from envtune_jax.models.config import Qwen3Config

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
    from envtune_jax.models.config import preset

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
    from envtune_jax.config import ConfigError

    check_model_source(args)
    check.at_least(args, 1, "batch", "prompt_len", "new_tokens", "repeats", "prefill_chunk", "shared_prefix")
    check.mesh_spec(args.mesh)
    shapes = parse_shapes(args.shapes) if args.shapes else [(args.batch, args.prompt_len, args.new_tokens)]
    group = getattr(args, "shared_prefix", None)
    if group is not None:
        uneven = [f"{b}x{p}x{n}" for b, p, n in shapes if b % group]
        if uneven:
            raise ConfigError(
                f"--shared-prefix {group}: the batch must be a multiple of the group size, got {', '.join(uneven)}"
            )
        if args.decode_attention == "pallas" and args.mesh:
            raise ConfigError(
                "--shared-prefix with --decode-attention pallas runs on one device: drop --mesh or "
                "use --decode-attention reference"
            )
    return shapes


class CompileTimer:
    """Sums jax.monitoring's tracing / lowering / backend-compile durations while active."""

    EVENTS = (
        "/jax/core/compile/jaxpr_trace_duration",
        "/jax/core/compile/jaxpr_to_mlir_module_duration",
        "/jax/core/compile/backend_compile_duration",
    )

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
    """The --hf or --preset model, loaded for inference in --dtype (envtune_jax.rl.model_loader.load_model)."""
    from envtune_jax.rl.model_loader import load_model

    kernels = dict(attention_impl=args.attention, decode_attention=getattr(args, "decode_attention", "reference"))
    if args.hf:
        return load_model(
            use="inference", hf=args.hf, param_dtype=args.dtype, mesh=mesh, progress=False, **kernels
        ).model
    return load_model(
        use="inference",
        preset=args.preset,
        param_dtype=args.dtype,
        mesh=mesh,
        seed=args.seed,
        preset_changes=model_config_changes(getattr(args, "model_config", [])),
        **kernels,
    ).model


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
    """(prefill s, decode s, prefill compile s, decode compile s, tokens generated, tokens [B, N], the cache
    layout it ended with) of one generation. `capacity`: the cache (with shared prompts: the regions) to start
    with."""
    import jax

    from envtune_jax.bench.decode_reads import CacheLayout

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
    layout = (
        CacheLayout(state.capacity)
        if state.prefix is None
        else CacheLayout(state.capacity, state.prefix.num_regions, state.prefix.capacity)
    )
    return prefill_s, decode_s, prefill_compile, timer.seconds, int(result.num_tokens.sum()), result.tokens, layout


def limits_report(
    cfg, limits, reads: dict, batch, prompt_len, new_tokens, prefill_s, decode_s, distinct_prompts: int
) -> dict:
    """The run's fractions of the device limits; `reads`: decode_reads.decode_reads of the run (the step's
    floor takes its live KV bytes). The prefill floor counts each distinct prompt once (an engine prefills a
    prompt given to several slots once, shared or not)."""
    import jax.numpy as jnp

    weight_bytes = cfg.num_params * jnp.dtype(cfg.param_dtype).itemsize
    step_floor = max(
        (weight_bytes + reads["kv_bytes_live_per_step"]) / limits.bandwidth_bytes_per_s,
        2 * cfg.num_params * batch / limits.matmul_flops_per_s,
    )
    prefill_floor = 2 * cfg.num_params * distinct_prompts * prompt_len / limits.matmul_flops_per_s
    end_to_end_floor = prefill_floor + new_tokens * step_floor
    return {
        "weight_bytes": weight_bytes,
        **reads,
        "decode_step_floor_ms": 1e3 * step_floor,
        "decode_floor_tok_s": batch / step_floor,
        "decode_fraction_of_limit": step_floor / (decode_s / new_tokens),
        "prefill_floor_s": prefill_floor,
        "end_to_end_floor_tok_s": batch * new_tokens / end_to_end_floor,
        "end_to_end_fraction_of_limit": end_to_end_floor / (prefill_s + decode_s),
    }


def run(args) -> list[dict]:
    """Measures every shape with one model (with --shared-prefix: shared, then unshared); prints and returns one
    record per measurement that succeeded."""
    import traceback

    import jax
    import numpy as np

    from envtune_jax.cli.common import parse_mesh, print_json
    from envtune_jax.device_limits import device_limits

    shapes = check_arguments(args)
    mesh = parse_mesh(args.mesh)
    model = build_model(args, mesh)
    devices = list(mesh.devices.flat) if mesh is not None else jax.devices()[:1]
    limits = device_limits(probe=args.probe, devices=devices)
    group = getattr(args, "shared_prefix", None)
    records, tokens, failed = [], {}, []
    for batch, prompt_len, new_tokens in shapes:
        shape = f"{batch}x{prompt_len}x{new_tokens}"
        measured: dict[int | None, tuple[dict, np.ndarray]] = {}
        for sharing in (group, None) if group else (None,):  # shared first: its peak memory is its own
            try:
                extra = {} if group is None else {"group": group, "shared": sharing is not None}
                measured[sharing] = measure(model, mesh, devices, limits, args, batch, prompt_len, new_tokens, **extra)
            except Exception as exc:  # noqa: BLE001 - one failure (e.g. out of memory) must not hide the others
                traceback.print_exc()
                first_line = (str(exc).splitlines() or [""])[0]
                failed.append(f"{shape}{' shared' if sharing else ''}: {type(exc).__name__}: {first_line}")
        if group is not None and group in measured and None in measured:
            measured[group][0]["vs_unshared"] = compare_to_unshared(*measured[group], *measured[None])
        for sharing in (None, group) if group else (None,):
            if sharing not in measured:
                continue
            record, tokens_bn = measured[sharing]
            print_json(record)
            records.append(record)
            tokens[shape if sharing is None else f"shared{sharing}_{shape}"] = tokens_bn
        if args.tokens_out:
            np.savez(args.tokens_out, **tokens)
    if failed:
        total = len(shapes) * (2 if group else 1)
        raise RuntimeError(
            f"{len(failed)} of {total} {'measurements' if group else 'shapes'} failed: " + "; ".join(failed)
        )
    return records


def compare_to_unshared(shared: dict, shared_bn, unshared: dict, unshared_bn) -> dict:
    """What sharing the groups' prompts changed, both measured in this process on the same prompts: speed-ups,
    the KV bytes a step reads, and the greedy tokens [B, N] (rows identical, share of tokens equal)."""
    import numpy as np

    same_bn = np.asarray(shared_bn) == np.asarray(unshared_bn)
    return {
        "decode_speedup": unshared["decode_s"] / shared["decode_s"],
        "end_to_end_speedup": shared["end_to_end_tok_s"] / unshared["end_to_end_tok_s"],
        "kv_bytes_read_ratio": unshared["kv_bytes_read_per_step"] / shared["kv_bytes_read_per_step"],
        "kv_bytes_live_ratio": unshared["kv_bytes_live_per_step"] / shared["kv_bytes_live_per_step"],
        "rows_identical": int(same_bn.all(axis=1).sum()),
        "rows": int(same_bn.shape[0]),
        "tokens_equal_fraction": float(same_bn.mean()),
    }


def measure(
    model,
    mesh,
    devices,
    limits,
    args,
    batch: int,
    prompt_len: int,
    new_tokens: int,
    group: int | None = None,
    shared: bool = False,
):
    """(record, generated tokens [B, N]) of one shape: a warm-up run, then `args.repeats` timed runs.

    `group`: G slots per prompt (B/G distinct prompts; None: B distinct prompts); `shared`: each group's
    prompt held once in a prefix region."""
    import jax
    import numpy as np

    from envtune_jax.bench.decode_reads import decode_reads
    from envtune_jax.bench.profiling import maybe_trace
    from envtune_jax.models.generation.buckets import BucketConfig
    from envtune_jax.models.generation.engine import GenerationEngine
    from envtune_jax.models.generation.prefix_config import SharedPrefixConfig
    from envtune_jax.models.generation.sampling_params import SamplingParams

    cfg = model.config
    capacity = prompt_len + new_tokens
    distinct = batch if group is None else batch // group
    engine = GenerationEngine(
        model,
        batch_size=batch,
        max_cache_len=capacity,
        mesh=mesh,
        cache_dtype=args.cache_dtype,
        buckets=BucketConfig(min_chunk_len=min(16, args.prefill_chunk), prefill_chunk=args.prefill_chunk),
        shared_prefix=SharedPrefixConfig(lanes=group, regions=distinct) if shared else None,
    )
    distinct_bp = np.random.RandomState(args.seed).randint(0, cfg.vocab_size, (distinct, prompt_len))
    prompts = [distinct_bp[b * distinct // batch].tolist() for b in range(batch)]  # G consecutive slots per prompt
    sampling = SamplingParams(greedy=True, max_new_tokens=new_tokens, stop_token_ids=())
    timer = CompileTimer()
    start_capacity = prompt_len if shared else capacity  # shared: the regions; own caches grow from the smallest
    warm = one_run(engine, prompts, sampling, start_capacity, timer)
    runs = [one_run(engine, prompts, sampling, start_capacity, timer) for _ in range(args.repeats)]
    if args.profile:
        with maybe_trace(args.profile):
            one_run(engine, prompts, sampling, start_capacity, timer)
    if any(r[4] != batch * new_tokens for r in [warm, *runs]):
        raise RuntimeError("a run did not generate batch x new-tokens tokens")
    prefill_s = statistics.median(r[0] for r in runs)
    decode_s = statistics.median(r[1] for r in runs)
    layout = runs[-1][6]
    reads = decode_reads(
        cfg,
        engine.cache_dtype.itemsize,
        batch,
        prompt_len,
        new_tokens,
        group if shared else None,
        layout,
        cfg.decode_attention,
    )
    stats = devices[0].memory_stats() or {}
    record = {
        "benchmark": "generate",
        "model": args.preset or str(args.hf),
        "params": cfg.num_params,
        "batch": batch,
        "prompt_len": prompt_len,
        "new_tokens": new_tokens,
        "shared_prefix": group if shared else None,
        "distinct_prompts": distinct,
        "dtype": args.dtype,
        "cache_dtype": args.cache_dtype,
        "attention": cfg.attention_impl,
        "decode_attention": cfg.decode_attention,
        # (block_k, k_splits) of the Pallas decode kernel (over the own caches when shared); null: the einsum ran
        # (not asked, or no block divides the capacities)
        "decode_kernel_blocks": kernel_blocks(cfg, layout, batch),
        "cache_layout": dataclasses.asdict(layout),
        "prefill_chunk": args.prefill_chunk,
        "repeats": args.repeats,
        "decode_tok_s": batch * new_tokens / decode_s,
        "ms_per_decode_step": 1e3 * decode_s / new_tokens,
        "prefill_tok_s": batch * prompt_len / prefill_s,
        "end_to_end_tok_s": batch * new_tokens / (prefill_s + decode_s),
        "prefill_s": prefill_s,
        "decode_s": decode_s,
        "compile_s": {"prefill": warm[2], "decode": warm[3]},
        "first_run_s": {"prefill": warm[0], "decode": warm[1]},
        "compilations": dict(engine.trace_counts),
        "profile_dir": args.profile,
        **limits_report(cfg, limits, reads, batch, prompt_len, new_tokens, prefill_s, decode_s, distinct),
        "limits": limits.as_dict(),
        "peak_memory_bytes": stats.get("peak_bytes_in_use"),
        "jax": jax.__version__,
        "device": str(devices[0]),
        "device_kind": devices[0].device_kind,
        "num_devices": len(devices),
    }
    return record, np.asarray(runs[-1][5], np.int32)


def kernel_blocks(cfg, layout, batch: int):
    """The Pallas decode kernel's (block_k, k_splits) for the run's cache, or None when the einsum ran."""
    from envtune_jax.models.attention import decode_kernel_blocks
    from envtune_jax.models.prefix_kernels import kernel_fits

    if cfg.decode_attention != "pallas":
        return None
    if layout.regions and not kernel_fits(
        layout.region_capacity, layout.slot_capacity, layout.regions, batch, cfg.num_kv_heads
    ):
        return None
    return decode_kernel_blocks(layout.slot_capacity, batch, cfg.num_kv_heads)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench_generate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    run(parser.parse_args(argv))
    return 0
