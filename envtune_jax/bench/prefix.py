"""`envtune bench prefix`: what sharing a GRPO group's prompt saves, counted at BFCL shapes, and the train step
timed side by side on a tiny model.

Counted (envtune_jax/bench/prefix_accounting.py), with and without sharing, in one JSON line:
- KV bytes read per decode step of a group (live tokens: the Pallas kernel path; capacity: the einsum
  path), and the whole step's bytes with the weights for `--decode-groups` groups;
- KV bytes held per group at `--max-own` own tokens per sample, and the largest decode batch that fits
  `--memory-gb` x `--fraction` next to the weights (whole groups when shared);
- the same batch when one long episode forces every slot's own capacity to `--long-own` (one capacity
  for the whole batch), and with per-slot capacities (blocks): that episode at `--long-own`, the others
  at `--max-own`;
- train tokens and FLOPs per group at `--train-own` own tokens per sample.
Ratios say what sharing gains: unshared / shared for costs, shared / unshared for the batch.
Defaults are the BFCL figures: prompt 6,000 tokens (the median first prompt is 5.6-6.0k), G = 16, 750
live own tokens per sample in decode, own tokens up to 2,000 in memory, 1,500 in training; Qwen3-4B
in bf16 on an 80 GB device.
With `--time-train`: one Trainer.step on a tiny model (2 layers, hidden 64, 2 heads of 16, vocabulary
4,096; so that attention and the transformer, not the output layer, carry the cost) over the group's
tokens unshared (G rows of prompt + own; "chunked" attention) and shared (one row: prompt once, then G
continuation blocks; two-level attention), after one warm-up step each, `--steps` timed steps each,
alternating; the ratio of the mean step times is printed, of wall time and of the process's CPU time
(all threads; steadier than wall time on a machine shared with other work).
"""

from __future__ import annotations

import argparse
import statistics
import time


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="qwen3-4b", help="model whose shapes are counted")
    parser.add_argument("--prompt", type=int, default=6000, help="prompt tokens per group (P)")
    parser.add_argument("--group", type=int, default=16, help="samples per prompt (G)")
    parser.add_argument("--live-own", type=int, default=750, help="own tokens per sample so far (decode step)")
    parser.add_argument("--max-own", type=int, default=2000, help="own-token capacity per sample (memory)")
    parser.add_argument("--train-own", type=int, default=1500, help="own tokens per sample (train step)")
    parser.add_argument(
        "--train-sampled",
        type=int,
        default=None,
        help="model-sampled tokens per sample in training (default: all own tokens)",
    )
    parser.add_argument("--long-own", type=int, default=24576, help="own capacity one long episode forces")
    parser.add_argument("--decode-groups", type=int, default=4, help="groups in the decode step with weights")
    parser.add_argument("--memory-gb", type=float, default=80.0, help="device memory (GB, 1e9 bytes)")
    parser.add_argument("--fraction", type=float, default=0.90, help="usable share of it")
    parser.add_argument("--cache-bytes", type=int, default=2, help="bytes per cached key/value (bf16: 2)")
    parser.add_argument("--weight-bytes", type=int, default=2, help="bytes per weight held by the sampler")
    parser.add_argument("--time-train", action="store_true", help="time the tiny model's train step both ways")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per layout (after one warm-up)")


def check_arguments(args) -> None:
    from envtune_jax.config import ConfigError

    for name in ("prompt", "group", "live_own", "max_own", "train_own", "long_own", "decode_groups", "steps"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be ≥ 1, got {getattr(args, name)}")
    if args.train_sampled is not None and not 0 <= args.train_sampled <= args.train_own:
        raise ConfigError(f"--train-sampled must be in [0, --train-own], got {args.train_sampled}")
    if not 0 < args.fraction <= 1 or args.memory_gb <= 0:
        raise ConfigError(f"need --memory-gb > 0 and --fraction in (0, 1], got {args.memory_gb}, {args.fraction}")


def _both(fn, gain: bool = False) -> dict:
    """fn(shared) both ways and their ratio: unshared / shared for a cost, shared / unshared (gain) for a capacity."""
    from envtune_jax.bench.prefix_accounting import ratio

    unshared, shared = fn(False), fn(True)
    gained = ratio(shared, unshared) if gain else ratio(unshared, shared)
    return {"unshared": unshared, "shared": shared, "ratio": gained}


def counted(args) -> dict:
    """Every counted figure (see the module docstring)."""
    from envtune_jax.bench import prefix_accounting as acc
    from envtune_jax.models.config import preset

    cfg = preset(args.preset)
    kv = acc.kv_bytes_per_token(cfg, args.cache_bytes)
    weights = cfg.num_params * args.weight_bytes
    memory = args.memory_gb * 1e9 * args.fraction
    live = acc.GroupShape(args.prompt, args.group, args.live_own)
    held = acc.GroupShape(args.prompt, args.group, args.max_own)
    long = acc.GroupShape(args.prompt, args.group, args.long_own)
    train = acc.GroupShape(args.prompt, args.group, args.train_own)
    sampled = args.train_own if args.train_sampled is None else args.train_sampled

    def step_with_weights(shared: bool) -> int:
        return weights + args.decode_groups * acc.decode_step_kv_bytes(live, kv, shared)

    def largest(group, reserved=0):
        return lambda shared: acc.largest_decode_batch(group, kv, weights, memory, shared, reserved_bytes=reserved)

    # per-slot capacities: the long episode holds its own tokens, every other slot --max-own
    long_slot_extra = (args.long_own - args.max_own) * kv

    flops = {shared: acc.train_flops(train, cfg, sampled, shared) for shared in (False, True)}
    return {
        "model": args.preset,
        "kv_bytes_per_token": kv,
        "weight_bytes": weights,
        "shapes": {
            "prompt": args.prompt,
            "group": args.group,
            "live_own": args.live_own,
            "max_own": args.max_own,
            "train_own": args.train_own,
            "train_sampled": sampled,
            "long_own": args.long_own,
        },
        "decode_step_kv_bytes_per_group": _both(lambda s: acc.decode_step_kv_bytes(live, kv, s)),
        "decode_step_bytes_with_weights": {"groups": args.decode_groups, **_both(step_with_weights)},
        "kv_bytes_per_group": _both(lambda s: acc.group_kv_bytes(held, kv, s)),
        "largest_decode_batch": {"memory_bytes": memory, **_both(largest(held), gain=True)},
        "one_capacity_long_episode": {
            "own_capacity": args.long_own,
            "kv_bytes_per_group": _both(lambda s: acc.group_kv_bytes(long, kv, s)),
            "largest_decode_batch": _both(largest(long), gain=True),
            "largest_decode_batch_per_slot_capacities": _both(largest(held, long_slot_extra), gain=True),
        },
        "train_tokens_per_group": _both(train.tokens),
        "train_flops_per_group": {
            "unshared": flops[False],
            "shared": flops[True],
            "ratio": acc.ratio(flops[False]["total"], flops[True]["total"]),
        },
        "train_attention_pairs_per_group": _both(lambda s: acc.attention_pairs(train, s)),
    }


# the tiny preset with these changes, in float32 (random weights from the model loader)
TIMING_MODEL = dict(
    vocab_size=4096,
    hidden_size=64,
    intermediate_size=128,
    num_layers=2,
    num_heads=2,
    num_kv_heads=1,
    head_dim=16,
    tie_word_embeddings=True,
    max_position_embeddings=40960,
)


def _batches(args, vocab: int):
    """(unshared TrainBatch, shared TrainBatch) of one group: random prompt and own tokens, all own sampled."""
    import numpy as np

    from envtune_jax.rl.batch import pack_batch
    from envtune_jax.rl.prefix_packing import pack_shared_prefix

    rng = np.random.RandomState(0)
    prompt = rng.randint(0, vocab, args.prompt)
    tokens, masks, logprobs = [], [], []
    for _ in range(args.group):
        own = rng.randint(0, vocab, args.train_own)  # (samples differ at once: the shared part is the prompt)
        tokens.append(np.concatenate([prompt, own]).astype(np.int32))
        masks.append(np.concatenate([np.zeros(args.prompt), np.ones(args.train_own)]).astype(np.int32))
        logprobs.append(np.where(masks[-1] > 0, -np.log(vocab), 0.0).astype(np.float32))
    advantages = rng.randn(args.group).astype(np.float32)
    return (
        pack_batch(tokens, masks, logprobs, advantages),
        pack_shared_prefix(tokens, masks, logprobs, advantages, [0] * args.group),
    )


def time_train(args) -> dict:
    """Mean Trainer.step seconds for the group unshared and shared, alternating, on the tiny timing model."""
    import jax
    from flax import nnx

    from envtune_jax.rl.model_loader import load_model
    from envtune_jax.rl.optimizer import OptimizerConfig
    from envtune_jax.rl.rl_config import LossConfig
    from envtune_jax.rl.train_step import Trainer, TrainStepConfig

    model = load_model(
        use="train",
        preset="tiny",
        preset_changes=TIMING_MODEL,
        param_dtype="float32",
        dtype="float32",
        seed=0,
        attention_impl="chunked",
    ).model
    cfg = model.config
    graphdef, params = nnx.split(model, nnx.Param)
    unshared_batch, shared_batch = _batches(args, cfg.vocab_size)
    runs = {}
    for name, mode, batch in (("unshared", "off", unshared_batch), ("shared", "two_level", shared_batch)):
        trainer = Trainer(graphdef, LossConfig(kl_coef=0.0), OptimizerConfig(), TrainStepConfig(shared_prefix=mode))
        state = trainer.init(jax.tree.map(lambda x: x.copy(), params))
        start = time.perf_counter()
        state, metrics = trainer.step(state, None, batch)
        jax.block_until_ready(metrics)
        runs[name] = {
            "trainer": trainer,
            "state": state,
            "batch": batch,
            "times": [],
            "first_step_s": time.perf_counter() - start,
            "model_tokens": float(metrics["model_tokens"]),
        }
    for _ in range(args.steps):
        for run in runs.values():
            start, start_cpu = time.perf_counter(), time.process_time()
            run["state"], metrics = run["trainer"].step(run["state"], None, run["batch"])
            jax.block_until_ready(metrics)
            run["times"].append(time.perf_counter() - start)
            run.setdefault("cpu_times", []).append(time.process_time() - start_cpu)
    out = {"model": {k: v for k, v in TIMING_MODEL.items() if k != "max_position_embeddings"}, "steps": args.steps}
    for name, run in runs.items():
        rows = run["batch"].tokens_bt.shape
        out[name] = {
            "step_s": statistics.mean(run["times"]),
            "step_times_s": run["times"],
            "step_cpu_s": statistics.mean(run["cpu_times"]),
            "step_cpu_times_s": run["cpu_times"],
            "first_step_s": run["first_step_s"],
            "rows": rows[0],
            "row_tokens": rows[1],
            "computed_tokens": rows[0] * rows[1],
            "model_tokens": run["model_tokens"],
        }
    out["speedup"] = out["unshared"]["step_s"] / out["shared"]["step_s"]
    out["speedup_cpu_time"] = out["unshared"]["step_cpu_s"] / out["shared"]["step_cpu_s"]
    return out


def run(args) -> dict:
    import jax

    from envtune_jax.cli.common import print_json

    check_arguments(args)
    record = {"benchmark": "prefix", **counted(args)}
    if args.time_train:
        record["train_step_tiny_cpu"] = time_train(args)
        record["device_kind"] = jax.devices()[0].device_kind
    print_json(record)
    return record
