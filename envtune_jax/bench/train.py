"""`envtune bench train`: Trainer.step throughput on a synthetic batch, as model TFLOP/s and MFU.

Batch B x L of random token ids where every token after the first counts as model-sampled, so the
vocabulary projection covers every position, as in the peer's full fwd+bwd of a causal-LM loss
(benchmarks/peer_hf.py: `model(x, labels=x).loss.backward()`). Our step also applies AdamW
(the peer's does not), and with `--kl-coef` > 0 runs a frozen reference forward that the model-FLOP
count below leaves out. One warm-up step compiles; then `--steps` timed steps (each waited for):
- tokens/s = B·L / mean step seconds (mean, as the peer averages its timed steps);
- model TFLOP/s = 6·params·tokens/s / 1e12; MFU = model FLOP/s / the devices' matmul rate
  (device_limits: the measured table, e.g. H100 789e12 bf16; other devices are probed);
- compile seconds (tracing + lowering + XLA compile, from jax.monitoring) apart from step times.
Weights are random, in `--dtype` (default bfloat16 weights and compute, as the HF peer runs; recipes train
float32 weights) and created on their devices by the model loader (rl/model_loader.py).
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import statistics
import time

from envtune_jax.models.config import AttentionImpl, RematPolicy

ATTENTION_CHOICES = AttentionImpl.__args__  # type: ignore[attr-defined]
REMAT_CHOICES = RematPolicy.__args__  # type: ignore[attr-defined]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", required=True, help="model shapes (qwen3-4b, qwen3-0.6b, tiny, ...)")
    parser.add_argument("--random-weights", action="store_true", help="random weights created on device (required)")
    parser.add_argument(
        "--model-config",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="change a field of the preset's Qwen3Config (repeatable), e.g. vocab_size=1000",
    )
    parser.add_argument("--batch", type=int, default=8, help="sequences per step (B)")
    parser.add_argument("--seq-len", type=int, default=2048, help="tokens per sequence (L)")
    parser.add_argument(
        "--micro-batch", type=int, default=0, help="rows per gradient-accumulation micro-batch (0: all)"
    )
    parser.add_argument("--remat", default="none", choices=REMAT_CHOICES, help="per-layer rematerialisation policy")
    parser.add_argument("--steps", type=int, default=5, help="timed steps after the warm-up step")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"], help="weights and compute")
    parser.add_argument("--attention", default="reference", choices=ATTENTION_CHOICES)
    parser.add_argument(
        "--kl-coef",
        type=float,
        default=0.0,
        help="KL weight; > 0 adds a reference forward per step (not counted in model FLOPs)",
    )
    parser.add_argument("--logprob-chunk-t", type=int, default=512, help="tokens per vocabulary-projection chunk")
    parser.add_argument("--logprob-chunk-v", type=int, default=16384, help="vocabulary columns per chunk")
    parser.add_argument("--probe", action="store_true", help="measure the matmul rate instead of the table")
    parser.add_argument("--mesh", default=None, metavar="data=D,fsdp=F,tensor=T")
    parser.add_argument("--profile", default=None, metavar="DIR", help="write a jax.profiler trace of one extra step")
    parser.add_argument("--seed", type=int, default=0)


def check_arguments(args) -> None:
    """ConfigError (printed by the CLI as one line) for arguments the benchmark cannot run with."""
    from envtune_jax.cli import validate as check
    from envtune_jax.config import ConfigError

    check.preset_name(args.preset)
    if not args.random_weights:
        raise ConfigError("--preset needs --random-weights (the benchmark's weights are random)")
    check.mesh_spec(args.mesh)
    check.at_least(args, 1, "logprob_chunk_t", "logprob_chunk_v")
    if args.batch < 1 or args.steps < 1:
        raise ConfigError(f"--batch and --steps must be ≥ 1, got {args.batch} and {args.steps}")
    if args.seq_len < 2:
        raise ConfigError(f"--seq-len must be ≥ 2 (a token predicts the next one), got {args.seq_len}")
    if args.micro_batch < 0 or (args.micro_batch and args.batch % args.micro_batch):
        raise ConfigError(f"--micro-batch {args.micro_batch} must divide --batch {args.batch}")


def check_rows_split_over_mesh(batch: int, micro_batch: int, mesh) -> None:
    """Rows of a step and of a micro-batch must split evenly over the data-parallel devices (data x fsdp):
    otherwise they are replicated (wasted compute), and on CPU such a step was seen to deadlock in
    XLA's in-process collectives (micro-batch 2 on 4 devices)."""
    from envtune_jax.config import ConfigError

    if mesh is None:
        return
    sizes = dict(zip(mesh.axis_names, mesh.axis_sizes))
    data_parallel = sizes.get("data", 1) * sizes.get("fsdp", 1)
    for name, rows in (("--batch", batch), ("--micro-batch", micro_batch or batch)):
        if rows % data_parallel:
            raise ConfigError(
                f"{name} {rows} is not a multiple of the {data_parallel} data-parallel devices (mesh {sizes})"
            )


def synthetic_batch(batch: int, seq_len: int, vocab_size: int, seed: int):
    """A packed TrainBatch whose every token after the first is model-sampled: tokens [B, T], the
    rest [B, K] with K ≥ L - 1 (T and K rounded up to envtune_jax.rl.batch's buckets; padding is masked out)."""
    import numpy as np

    from envtune_jax.rl.batch import pack_batch

    rng = np.random.RandomState(seed)
    tokens_bl = rng.randint(0, vocab_size, (batch, seq_len)).astype(np.int32)
    mask_bl = np.ones((batch, seq_len), np.int32)
    uniform_logprob_bl = np.full((batch, seq_len), -np.log(vocab_size), np.float32)
    advantages_b = rng.randn(batch).astype(np.float32)
    return pack_batch(list(tokens_bl), list(mask_bl), list(uniform_logprob_bl), advantages_b)


def place_batch(batch, mesh):
    """The batch on the mesh, rows over the data-parallel axes (unchanged without a mesh)."""
    import jax

    from envtune_jax.sharding import named_sharding

    if mesh is None:
        return jax.device_put(batch)
    axes = ("act_batch", "act_seq")
    return jax.tree.map(lambda x: jax.device_put(x, named_sharding(mesh, axes[: x.ndim], x.shape)), batch)


def model_flops_report(num_params: int, tokens_per_step: int, step_s: float, matmul_flops_per_s: float) -> dict:
    """tokens/s, model TFLOP/s (6·params·tokens/s) and MFU (its fraction of the matmul rate)."""
    tokens_per_s = tokens_per_step / step_s
    model_flops_per_s = 6 * num_params * tokens_per_s
    return {
        "tokens_per_s": tokens_per_s,
        "model_tflops_per_s": model_flops_per_s / 1e12,
        "mfu": model_flops_per_s / matmul_flops_per_s,
    }


def run(args) -> dict:
    import contextlib

    import jax
    from flax import nnx

    from envtune_jax.bench.generate import CompileTimer, model_config_changes
    from envtune_jax.bench.profiling import maybe_trace
    from envtune_jax.cli.common import parse_mesh, print_json
    from envtune_jax.device_limits import device_limits
    from envtune_jax.rl.model_loader import load_model
    from envtune_jax.rl.optimizer import OptimizerConfig
    from envtune_jax.rl.rl_config import LossConfig
    from envtune_jax.rl.train_step import Trainer, TrainStepConfig

    check_arguments(args)
    mesh = parse_mesh(args.mesh)
    check_rows_split_over_mesh(args.batch, args.micro_batch, mesh)
    model = load_model(
        use="train",
        preset=args.preset,
        param_dtype=args.dtype,
        dtype=args.dtype,
        mesh=mesh,
        seed=args.seed,
        preset_changes=model_config_changes(args.model_config),
        attention_impl=args.attention,
        remat=args.remat,
    ).model
    cfg = model.config
    graphdef, params = nnx.split(model, nnx.Param)
    del model
    loss_cfg = LossConfig(kl_coef=args.kl_coef)
    trainer = Trainer(
        graphdef,
        loss_cfg,
        OptimizerConfig(),
        TrainStepConfig(
            micro_batch_size=args.micro_batch,
            logprob_chunk_t=args.logprob_chunk_t,
            logprob_chunk_v=args.logprob_chunk_v,
            old_logprobs="sampler",
        ),
    )
    on_mesh = jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext()
    with on_mesh:
        ref_params = jax.tree.map(lambda x: x.copy(), params) if args.kl_coef > 0 else None
        state = trainer.init(params)
        batch = place_batch(synthetic_batch(args.batch, args.seq_len, cfg.vocab_size, args.seed), mesh)
        timer = CompileTimer()
        with timer.measure():
            start = time.perf_counter()
            state, metrics = trainer.step(state, ref_params, batch)
            jax.block_until_ready((state, metrics))
            first_step_s = time.perf_counter() - start
        compile_s = timer.seconds
        step_times = []
        for _ in range(args.steps):
            start = time.perf_counter()
            state, metrics = trainer.step(state, ref_params, batch)
            jax.block_until_ready((state, metrics))
            step_times.append(time.perf_counter() - start)
        if args.profile:
            with maybe_trace(args.profile):
                state, _ = trainer.step(state, ref_params, batch)
                jax.block_until_ready(state)
        metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
    devices = list(mesh.devices.flat) if mesh is not None else jax.devices()[:1]
    limits = device_limits(probe=args.probe, devices=devices)
    step_s = statistics.mean(step_times)
    tokens_per_step = args.batch * args.seq_len
    stats = devices[0].memory_stats() or {}
    record = {
        "benchmark": "train",
        "model": args.preset,
        "params": cfg.num_params,
        "batch": args.batch,
        "seq_len": args.seq_len,
        "padded_shape": {"T": int(batch.tokens_bt.shape[1]), "K": int(batch.mask_bk.shape[1])},
        "micro_batch": args.micro_batch or args.batch,
        "remat": args.remat,
        "attention": args.attention,
        "dtype": args.dtype,
        "kl_coef": args.kl_coef,
        "optimizer": "adamw (fp32 moments), clip 1.0",
        "steps": args.steps,
        "tokens_per_step": tokens_per_step,
        "step_s": step_s,
        "step_s_median": statistics.median(step_times),
        "step_s_min": min(step_times),
        **model_flops_report(cfg.num_params, tokens_per_step, step_s, limits.matmul_flops_per_s),
        "compile_s": compile_s,
        "first_step_s": first_step_s,
        "loss": metrics["loss"],
        "model_tokens": metrics["model_tokens"],
        "limits": limits.as_dict(),
        "peak_memory_bytes": stats.get("peak_bytes_in_use"),
        "profile_dir": args.profile,
        "device_kind": devices[0].device_kind,
        "num_devices": len(devices),
        "mesh": dict(zip(mesh.axis_names, mesh.axis_sizes)) if mesh is not None else None,
        "jax": jax.__version__,
    }
    print_json(record)
    return record


def main(argv=None) -> int:
    """The plain-script entry point (benchmarks/bench_train.py)."""
    from envtune_jax.config import ConfigError

    parser = argparse.ArgumentParser(
        prog="bench_train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    try:
        run(parser.parse_args(argv))
    except ConfigError as exc:
        parser.error(str(exc))
    return 0
