"""`envtune bench memory`: how much device memory a decode loop or a train step needs, and the largest
batch that fits, from XLA's buffer assignment (compiled, never run).

Each program is lowered with abstract inputs (shapes only: no weights are created) and compiled for
the current backend; `Compiled.memory_analysis()` gives its argument, output, alias and temporary
bytes. Peak = arguments + outputs − aliased (donated) + temporaries: what the program holds at once.
- decode: the engine's `decode_loop` for B slots of a context of S tokens (weights in `--dtype`,
  KV cache in `--cache-dtype`), i.e. what a rollout holds while it samples;
- train: one `Trainer.step` on B rows of S tokens (all but the first in the loss), micro-batches of
  `--micro-batch` rows, `--remat`, AdamW with fp32 moments, weights in `--param-dtype`, plus a frozen
  reference copy when `--kl-coef` > 0.
With `--fit`, the largest B (doubling, then bisection: O(log B) compilations; it assumes the peak grows
with B) whose peak is ≤ `--memory-gb` × `--fraction` (default: the device's own capacity; give
--memory-gb to plan for another device). For train, B is then the rows of one micro-batch (larger
steps accumulate several), so the answer is the largest micro-batch x context a step can hold.
With `--shared-prefix --prompt P --group G` (decode), the loop is also compiled with shared prompts: B
slots holding their own `--context` − P tokens each and ceil(B / G) prefix regions of P tokens (each
group's prompt once), and both figures (and the fit of each, with their ratio) are printed.
The figures are the compiler's for the backend it ran on: a CPU compile plans CPU buffers (no cuDNN
attention, other fusions), so plan GPU batches from a GPU run. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import time

from envtune_jax.models.config import RematPolicy

REMAT_CHOICES = RematPolicy.__args__  # type: ignore[attr-defined]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", required=True, help="model shapes (qwen3-4b, qwen3-8b, tiny, ...)")
    parser.add_argument("--program", required=True, choices=["decode", "train"])
    parser.add_argument("--batch", type=int, default=1, help="slots (decode) or rows (train)")
    parser.add_argument("--context", type=int, default=8192, help="tokens per sequence (cache capacity / row length)")
    parser.add_argument(
        "--dtype",
        default=None,
        choices=["bfloat16", "float32"],
        help="compute dtype (default: bfloat16, the loader's rule for both programs)",
    )
    parser.add_argument(
        "--param-dtype",
        default=None,
        choices=["bfloat16", "float32"],
        help="weights (default: the loader's rule, docs/models.md: --dtype for decode, float32 "
        "for train as the recipes)",
    )
    parser.add_argument("--cache-dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--attention", default="reference", help="attention implementation compiled")
    parser.add_argument("--remat", default="full", choices=REMAT_CHOICES)
    parser.add_argument("--micro-batch", type=int, default=1, help="rows per micro-batch (train; 0: all)")
    parser.add_argument("--kl-coef", type=float, default=0.0, help="> 0 adds the frozen reference weights (train)")
    parser.add_argument("--fit", action="store_true", help="find the largest batch that fits")
    parser.add_argument("--memory-gb", type=float, default=None, help="device memory to fit in (default: the device's)")
    parser.add_argument(
        "--fraction", type=float, default=0.90, help="usable share of it (XLA and the runtime keep some)"
    )
    parser.add_argument("--max-batch", type=int, default=4096, help="upper end of the --fit search")
    parser.add_argument(
        "--shared-prefix",
        action="store_true",
        help="decode: also with each group's prompt held once (prefix regions), side by side",
    )
    parser.add_argument("--prompt", type=int, default=None, help="prompt tokens of a group (--shared-prefix)")
    parser.add_argument("--group", type=int, default=16, help="samples per prompt (--shared-prefix)")


def check_arguments(args) -> None:
    from envtune_jax.cli import validate as check
    from envtune_jax.config import ConfigError

    check.preset_name(args.preset)
    check.at_least(args, 1, "batch", "max_batch")
    check.at_least(args, 2, "context")
    check.at_least(args, 0, "micro_batch", "kl_coef")
    if args.memory_gb is not None and not args.memory_gb > 0:
        raise ConfigError(f"--memory-gb must be > 0, got {args.memory_gb}")
    if not 0 < args.fraction <= 1:
        raise ConfigError(f"--fraction must lie in (0, 1], got {args.fraction}")


def model_config(args):
    """The preset's config in the dtypes of the loader's rule for the program (decode: inference, train: training)."""
    from envtune_jax.models.config import preset
    from envtune_jax.models.dtype_rule import model_dtypes

    dtypes = model_dtypes("inference" if args.program == "decode" else "train", args.param_dtype, args.dtype)
    return preset(
        args.preset, param_dtype=dtypes.param, dtype=dtypes.compute, attention_impl=args.attention, remat=args.remat
    )


def _abstract(tree):
    import jax

    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


def _analysis(compiled) -> dict:
    stats = compiled.memory_analysis()
    fields = {name: int(getattr(stats, f"{name}_size_in_bytes")) for name in ("argument", "output", "alias", "temp")}
    fields["peak"] = fields["argument"] + fields["output"] - fields["alias"] + fields["temp"]
    return fields


def decode_memory(
    cfg, batch: int, context: int, cache_dtype: str, prompt: int | None = None, group: int | None = None
) -> dict:
    """Bytes of the engine's decode loop for `batch` slots of `context` tokens (with `prompt` and `group`: each
    group's prompt held once, the slots holding context - prompt own tokens)."""
    return _analysis(lower_decode(cfg, batch, context, cache_dtype, prompt, group).compile())


def lower_decode(cfg, batch: int, context: int, cache_dtype: str, prompt: int | None = None, group: int | None = None):
    """The engine's decode loop (sampling, not greedy) for `batch` slots of `context` tokens, lowered from
    shapes alone (jax `Lowered`: `.compile()` it for XLA's buffer assignment or optimised HLO). With
    `prompt` and `group`: ceil(batch / group) prefix regions of `prompt` tokens, slots of context - prompt."""
    import dataclasses

    import jax
    import jax.numpy as jnp
    from flax import nnx

    from envtune_jax.models.generation.engine import GenerationEngine
    from envtune_jax.models.generation.prefix_config import SharedPrefixConfig
    from envtune_jax.models.generation.sampling import MAX_STOP_TOKENS
    from envtune_jax.models.generation.state import empty_state
    from envtune_jax.models.qwen3 import Qwen3

    model = nnx.eval_shape(lambda: Qwen3(cfg, rngs=nnx.Rngs(0)))
    shared = None if prompt is None else SharedPrefixConfig(lanes=group, regions=-(-batch // group))
    engine = GenerationEngine(
        model, batch_size=batch, max_cache_len=context, cache_dtype=cache_dtype, shared_prefix=shared
    )
    params = _abstract(nnx.state(model))

    def empty():
        if shared is None:
            return engine._empty_state(context)
        own = empty_state(
            cfg.num_layers,
            cfg.num_kv_heads,
            cfg.head_dim,
            cfg.hidden_size,
            batch,
            context - prompt,
            engine.cache_dtype,
            jnp.dtype(cfg.dtype),
        )
        return dataclasses.replace(own, prefix=engine.prefix_slots.empty_prefix(prompt, jnp.dtype(cfg.dtype)))

    state = jax.eval_shape(empty)
    scalar = jax.ShapeDtypeStruct((), jnp.float32)
    lowered = engine._decode.lower(
        params,
        state,
        jax.ShapeDtypeStruct((batch,), bool),
        jax.ShapeDtypeStruct((batch,), jnp.int32),
        jax.ShapeDtypeStruct((MAX_STOP_TOKENS,), jnp.int32),
        scalar,
        scalar,
        jax.ShapeDtypeStruct((), jnp.int32),
        greedy=False,
        top_k=0,
        use_top_p=False,
    )
    return lowered


def train_memory(cfg, batch: int, context: int, micro_batch: int, kl_coef: float) -> dict:
    """Bytes of one Trainer.step on `batch` rows of `context` tokens."""
    import jax
    import numpy as np
    from flax import nnx

    from envtune_jax.models.qwen3 import Qwen3
    from envtune_jax.rl.batch import TrainBatch
    from envtune_jax.rl.optimizer import OptimizerConfig
    from envtune_jax.rl.rl_config import LossConfig
    from envtune_jax.rl.train_step import Trainer, TrainStepConfig

    model = nnx.eval_shape(lambda: Qwen3(cfg, rngs=nnx.Rngs(0)))
    graphdef, params = nnx.split(model, nnx.Param)
    params = _abstract(params)
    trainer = Trainer(
        graphdef,
        LossConfig(kl_coef=kl_coef),
        OptimizerConfig(),
        TrainStepConfig(micro_batch_size=micro_batch, old_logprobs="sampler"),
    )
    state = jax.eval_shape(trainer.init, params)
    ref = params if kl_coef > 0 else None
    k = context - 1  # every token after the first is in the loss (the worst case; rollouts have fewer)
    abstract_batch = TrainBatch(
        tokens_bt=jax.ShapeDtypeStruct((batch, context), np.int32),
        target_index_bk=jax.ShapeDtypeStruct((batch, k), np.int32),
        mask_bk=jax.ShapeDtypeStruct((batch, k), np.float32),
        old_logprobs_bk=jax.ShapeDtypeStruct((batch, k), np.float32),
        advantages_b=jax.ShapeDtypeStruct((batch,), np.float32),
    )
    return _analysis(trainer._step.lower(state, ref, abstract_batch).compile())


def device_memory_bytes() -> int | None:
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("bytes_limit")


def largest_fitting_batch(measure, limit_bytes: float, max_batch: int) -> tuple[int, dict]:
    """(largest B ≤ max_batch with measure(B)['peak'] ≤ limit, its analysis); (0, {}) if B=1 does not fit.
    Doubles B until it does not fit, then bisects: O(log B) compilations."""
    tried: dict[int, dict] = {}

    def fits(b: int) -> bool:
        tried[b] = measure(b)
        return tried[b]["peak"] <= limit_bytes

    if not fits(1):
        return 0, tried[1]
    low, high = 1, 2
    while high <= max_batch and fits(high):
        low, high = high, high * 2
    high = min(high, max_batch + 1)
    while high - low > 1:
        mid = (low + high) // 2
        if fits(mid):
            low = mid
        else:
            high = mid
    return low, tried[low]


def run(args) -> dict:
    import jax

    from envtune_jax.cli.common import print_json
    from envtune_jax.config import ConfigError

    if args.batch < 1 or args.context < 2:
        raise ConfigError(f"--batch must be ≥ 1 and --context ≥ 2, got {args.batch} and {args.context}")
    cfg = model_config(args)
    if args.shared_prefix and (
        args.program != "decode" or args.prompt is None or not 1 <= args.prompt < args.context or args.group < 1
    ):
        raise ConfigError("--shared-prefix needs --program decode, 1 ≤ --prompt < --context and --group ≥ 1")
    if not args.shared_prefix and args.prompt is not None:
        raise ConfigError("--prompt is set but --shared-prefix is not")
    if args.program == "decode":

        def measure(b):
            return decode_memory(cfg, b, args.context, args.cache_dtype)

        def measure_shared(b):
            return decode_memory(cfg, b, args.context, args.cache_dtype, args.prompt, args.group)
    else:
        if args.micro_batch and args.batch % args.micro_batch and not args.fit:
            raise ConfigError(f"--micro-batch {args.micro_batch} must divide --batch {args.batch}")

        def measure(b):  # with --fit, B rows in one micro-batch: the most a step can hold at once
            return train_memory(cfg, b, args.context, 0 if args.fit else args.micro_batch, args.kl_coef)

    start = time.perf_counter()
    record = {
        "benchmark": "memory",
        "program": args.program,
        "model": args.preset,
        "params": cfg.num_params,
        "context": args.context,
        "dtype": str(cfg.dtype),
        "param_dtype": str(cfg.param_dtype),
        "cache_dtype": args.cache_dtype if args.program == "decode" else None,
        "remat": args.remat if args.program == "train" else None,
        "micro_batch": args.micro_batch if args.program == "train" else None,
        "kl_coef": args.kl_coef,
        "attention": args.attention,
        "backend": jax.default_backend(),
        "device_kind": jax.devices()[0].device_kind,
        "jax": jax.__version__,
    }
    if args.fit:
        capacity = args.memory_gb * 1e9 if args.memory_gb else device_memory_bytes()
        if capacity is None:
            raise ConfigError("this device does not report its memory: pass --memory-gb")
        limit = capacity * args.fraction
        batch, analysis = largest_fitting_batch(measure, limit, args.max_batch)
        record.update(
            fit=True,
            memory_bytes=capacity,
            limit_bytes=limit,
            largest_batch=batch,
            tokens=batch * args.context,
            **{f"{k}_bytes": v for k, v in analysis.items()},
        )
        if args.shared_prefix:
            shared_batch, analysis = largest_fitting_batch(measure_shared, limit, args.max_batch)
            record["shared_prefix"] = {
                "prompt": args.prompt,
                "group": args.group,
                "largest_batch": shared_batch,
                "batch_ratio": shared_batch / max(batch, 1),
                **{f"{k}_bytes": v for k, v in analysis.items()},
            }
    else:
        analysis = measure(args.batch)
        record.update(
            fit=False,
            batch=args.batch,
            tokens=args.batch * args.context,
            **{f"{k}_bytes": v for k, v in analysis.items()},
        )
        if args.shared_prefix:
            shared = measure_shared(args.batch)
            record["shared_prefix"] = {
                "prompt": args.prompt,
                "group": args.group,
                "peak_ratio": analysis["peak"] / shared["peak"],
                **{f"{k}_bytes": v for k, v in shared.items()},
            }
    record["compile_s"] = time.perf_counter() - start
    print_json(record)
    return record
