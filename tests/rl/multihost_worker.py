"""One process of the multi-host test (tests/rl/test_multihost.py), also runnable alone as the reference.

Every process runs this same program (multi-controller JAX). Phases run in order, each a function
of a shared `ctx` dict (a new one slots into `PHASES`):
  load      the tiny HF checkpoint (real 151,936-token vocabulary) onto a mesh spanning every process's devices;
  rollout   a GenerationEngine on that mesh and the real tokenizer; plays the first batch of synthetic
            multi-turn episodes (environments/synthetic.py) with rl/rollout.py's `run_rollouts`;
  train     GRPO-shaped iterations: pack the latest rollout's trajectories (each process supplies the rows
            its devices hold), one Trainer step, then the engine rolls out the next batch with the new weights;
  resume    save a RunCheckpointer checkpoint, roll out one more batch, continue one step, restore into
            zeroed state, step again on the same batch;
  export    hf_io.save_pretrained (process 0 writes), the run directory lock (process 0 holds it) and
            MetricsWriter (process 0 writes).
Every rollout's trajectories (token ids, sampler log-probs, rewards) are part of the result.
The random model earns reward 0 on every episode, so group-normalised advantages would all be 0 and a
step would only apply weight decay; rows therefore train with fixed advantages (`ROW_ADVANTAGES`).
Each process prints one line `MULTIHOST_RESULT {json}` that the test compares across processes.
Distribution comes from the environment (`initialize_distributed`): JAX_COORDINATOR_ADDRESS,
JAX_NUM_PROCESSES, JAX_PROCESS_ID; without them this is a single-process run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402

from envtune_jax.chat.chat_config import ChatConfig  # noqa: E402
from envtune_jax.chat.tokenizer import load_tokenizer  # noqa: E402
from envtune_jax.environments.synthetic import SyntheticConfig, SyntheticEpisode, make_synthetic_tasks  # noqa: E402
from envtune_jax.folder_lock import LOCK_FILE, hold_folder  # noqa: E402
from envtune_jax.mesh import MeshConfig, initialize_distributed, make_mesh  # noqa: E402
from envtune_jax.models import hf_io  # noqa: E402
from envtune_jax.models.generation.buckets import BucketConfig  # noqa: E402
from envtune_jax.models.generation.engine import GenerationEngine  # noqa: E402
from envtune_jax.models.generation.sampling import SamplingParams  # noqa: E402
from envtune_jax.rl.batch import process_batch  # noqa: E402
from envtune_jax.rl.grpo import PolicyLearner  # noqa: E402
from envtune_jax.rl.metrics_log import MetricsWriter  # noqa: E402
from envtune_jax.rl.optimizer import OptimizerConfig  # noqa: E402
from envtune_jax.rl.rl_config import LossConfig  # noqa: E402
from envtune_jax.rl.rollout import RolloutConfig, Trajectory, run_rollouts  # noqa: E402
from envtune_jax.rl.run_checkpoint import RunCheckpointer  # noqa: E402
from envtune_jax.rl.train_step import Trainer, TrainStepConfig  # noqa: E402

RESULT_PREFIX = "MULTIHOST_RESULT "
PROMPTS, SAMPLES_PER_PROMPT = 2, 4
BATCH_B = PROMPTS * SAMPLES_PER_PROMPT  # one engine slot per episode, one train row per trajectory
ROW_ADVANTAGES = np.linspace(-1.0, 1.0, BATCH_B, dtype=np.float32)  # [B]
LEARNING_RATE = 1e-2
TASK_CONFIG = SyntheticConfig(num_turns=2, doc_style="system")  # ~45-token prompts
NEW_TOKENS_PER_STEP = 4
CACHE_LEN = 128
# One cache capacity and one chunk width (a prompt and an environment reply each fit 64 tokens):
# the engine compiles each of its programs once, which keeps this CPU test short.
BUCKETS = BucketConfig(min_cache_len=CACHE_LEN, min_chunk_len=64, prefill_chunk=64)


class SyntheticRollouts:
    """Plays BATCH_B synthetic episodes (PROMPTS tasks x SAMPLES_PER_PROMPT samples) through one
    GenerationEngine on the global mesh. The engine reads the model's current weights at every call
    and gathers its results to every process, so every process gets every trajectory."""

    def __init__(self, model, mesh, tokenizer_dir):
        self.engine = GenerationEngine(
            model, batch_size=BATCH_B, max_cache_len=CACHE_LEN, mesh=mesh, cache_dtype="float32", buckets=BUCKETS
        )
        self.tokenizer, self.chat = load_tokenizer(tokenizer_dir), ChatConfig()
        self.sampling = SamplingParams(temperature=1.0, max_new_tokens=NEW_TOKENS_PER_STEP)
        self.config = RolloutConfig(
            max_prompt_tokens=CACHE_LEN // 2,
            max_response_tokens=CACHE_LEN // 2,
            max_context_tokens=CACHE_LEN,
            max_new_tokens_per_step=NEW_TOKENS_PER_STEP,
        )

    def play(self, seed: int) -> list[Trajectory]:
        tasks = make_synthetic_tasks(PROMPTS, TASK_CONFIG, seed=seed)
        episodes = [SyntheticEpisode(task, TASK_CONFIG) for task in tasks for _ in range(SAMPLES_PER_PROMPT)]
        groups = [g for g in range(PROMPTS) for _ in range(SAMPLES_PER_PROMPT)]
        return run_rollouts(
            self.engine, self.tokenizer, self.chat, episodes, groups, self.sampling, self.config, rng=seed
        )


def trajectory_record(trajectories: list[Trajectory]) -> dict:
    """What the test compares across processes: token ids, sampler log-probs, loss masks, rewards."""
    return {
        "token_ids": [t.token_ids.tolist() for t in trajectories],
        "sampler_logprobs": [t.sampler_logprobs.tolist() for t in trajectories],
        "loss_masks": [t.loss_mask.tolist() for t in trajectories],
        "rewards": [t.reward for t in trajectories],
        "truncated": [t.truncated for t in trajectories],
    }


def global_batch(mesh, trajectories: list[Trajectory]):
    """(batch, this process's rows (start, stop)) as envtune_jax.rl.batch.process_batch builds it: this process packs
    and supplies only its own rows."""
    return process_batch(
        mesh,
        [t.token_ids for t in trajectories],
        [t.loss_mask for t in trajectories],
        [t.sampler_logprobs for t in trajectories],
        ROW_ADVANTAGES,
    )


@jax.jit
def _leaf_sums(leaves: list[jax.Array]) -> jax.Array:
    """[2 * leaves]: per leaf, sum |x| and sum x·w with w a fixed ramp over the flattened leaf."""
    out = []
    for x in leaves:
        x = x.astype(jnp.float32).reshape(-1)
        out += [jnp.abs(x).sum(), (x * jnp.linspace(-1.0, 1.0, x.size, dtype=jnp.float32)).sum()]
    return jnp.stack(out)


def checksum(tree) -> list[float]:
    """Per-leaf [sum |x|, sum x·ramp], computed on device and replicated to every process."""
    return [float(v) for v in _leaf_sums(jax.tree.leaves(tree))]


def copy_tree(tree):
    """A copy with the same shardings (the train step donates its input state)."""
    return jax.jit(lambda t: jax.tree.map(jnp.copy, t), out_shardings=jax.tree.map(lambda x: x.sharding, tree))(tree)


def zeros_like_tree(tree):
    """Zeros with the same shardings: the target a checkpoint is restored into."""
    return jax.jit(lambda t: jax.tree.map(jnp.zeros_like, t), out_shardings=jax.tree.map(lambda x: x.sharding, tree))(
        tree
    )


def fraction_held(tree) -> float:
    """Share of all parameter elements that live on this process's devices (1.0: a full copy)."""
    held = total = 0
    for x in jax.tree.leaves(tree):
        regions = {tuple((s.start, s.stop) for s in shard.index) for shard in x.addressable_shards}
        held += sum(int(np.prod([(b or n) - (a or 0) for (a, b), n in zip(r, x.shape)])) for r in regions)
        total += x.size
    return held / total


def phase_load(ctx: dict) -> None:
    model = hf_io.load_pretrained(ctx["args"].hf, mesh=ctx["mesh"], progress=False)
    graphdef, params = nnx.split(model, nnx.Param)
    ctx.update(model=model, model_config=model.config, graphdef=graphdef, params=params)
    ctx["result"]["fraction_of_params_held"] = fraction_held(params)


def phase_rollout(ctx: dict) -> None:
    rollouts = SyntheticRollouts(ctx["model"], ctx["mesh"], ctx["args"].hf)
    trajectories = rollouts.play(seed=0)
    ctx.update(rollouts=rollouts, trajectories=trajectories)
    ctx["result"]["rollouts"] = [trajectory_record(trajectories)]


def phase_train(ctx: dict) -> None:
    """`steps` iterations of: step on the latest rollout, then the sampler rolls out with the new weights."""
    args, model, rollouts = ctx["args"], ctx["model"], ctx["rollouts"]
    trainer = Trainer(
        ctx["graphdef"],
        LossConfig(),
        OptimizerConfig(learning_rate=LEARNING_RATE),
        TrainStepConfig(micro_batch_size=BATCH_B // 2, logprob_chunk_t=64),
    )
    ref_params = copy_tree(ctx["params"])
    state = trainer.init(copy_tree(ctx["params"]))
    losses, metric_records = [], []
    for step in range(args.steps):
        batch, rows = global_batch(ctx["mesh"], ctx["trajectories"])
        state, metrics = trainer.step(state, ref_params, batch)
        nnx.update(model, state.params)  # the engine samples with the new weights from here on
        losses.append(float(metrics["loss"]))
        metric_records.append({k: float(v) for k, v in metrics.items()})
        ctx["result"]["rows"] = list(rows)
        if step + 1 < args.steps:  # the last iteration's rollout is the resume phase's
            ctx["trajectories"] = rollouts.play(seed=step + 1)
            ctx["result"]["rollouts"].append(trajectory_record(ctx["trajectories"]))
    ctx.update(trainer=trainer, state=state, ref_params=ref_params, metric_records=metric_records)
    ctx["result"].update(
        losses=losses,
        param_checksum=checksum(state.params),
        engine_compilations=dict(rollouts.engine.trace_counts),
        sampler_weight_copies=rollouts.engine.weights.copied_arrays,
    )


def phase_resume(ctx: dict) -> None:
    args, trainer, state, ref = ctx["args"], ctx["trainer"], ctx["state"], ctx["ref_params"]
    step = int(state.step)
    checkpointer = RunCheckpointer(Path(args.out) / "run_ckpt", keep=2)
    checkpointer.save(step, state, ref, {"step": step, "data_position": step * BATCH_B})
    checkpointer.wait()
    trajectories = ctx["rollouts"].play(seed=args.steps)  # with the weights of `state`
    ctx["result"]["rollouts"].append(trajectory_record(trajectories))
    next_batch, _ = global_batch(ctx["mesh"], trajectories)
    continued, metrics = trainer.step(copy_tree(state), ref, next_batch)
    restored = checkpointer.restore(trainer.init(zeros_like_tree(state.params)), zeros_like_tree(ref))
    checkpointer.close()
    restored_state, restored_ref, record = restored
    resumed, resumed_metrics = trainer.step(restored_state, restored_ref, next_batch)
    ctx["state"] = continued
    ctx["metric_records"].append({k: float(v) for k, v in metrics.items()})
    # importance ratios of every step (1 when the trainer's log-probs equal the sampler's, i.e. when the
    # sampler rolled out with the weights being trained)
    ctx["result"]["ratio_means"] = [r["ratio_mean"] for r in ctx["metric_records"]]
    ctx["result"].update(
        restored_step=int(record["step"]),
        continued_loss=float(metrics["loss"]),
        resumed_loss=float(resumed_metrics["loss"]),
        resumed_checksum=checksum(resumed.params),
        continued_checksum=checksum(continued.params),
    )


def phase_export(ctx: dict) -> None:
    out = Path(ctx["args"].out)
    model = nnx.merge(ctx["graphdef"], ctx["state"].params)
    hf_io.save_pretrained(model, out / "export", tokenizer_dir=ctx["args"].hf, progress=False)
    with hold_folder(out / "run", "run directory") as lock:  # what `envtune train` holds: process 0 alone
        holder = json.loads((out / "run" / LOCK_FILE).read_text())
        ctx["result"]["lock"] = {
            "held_here": lock is not None and lock.held,
            "pid": os.getpid(),
            "holder_pid": holder["pid"],
        }
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("lock read")  # before process 0 releases it
    writer = MetricsWriter(out / "metrics", tensorboard=False)
    for step, record in enumerate(ctx["metric_records"], start=1):
        writer.write(step, record)
    writer.close()


def phase_learner(ctx: dict) -> None:
    """One PolicyLearner.iterate (what `envtune train` runs): rollouts, group advantages, the batch built
    from each process's own rows (rl/batch.process_batch), the optimizer step."""
    rollouts = ctx["rollouts"]
    learner = PolicyLearner(ctx["model"], rollouts.engine, ctx["trainer"], rollouts.tokenizer, LossConfig())
    tasks = make_synthetic_tasks(PROMPTS, TASK_CONFIG, seed=100)
    groups = [[SyntheticEpisode(task, TASK_CONFIG) for _ in range(SAMPLES_PER_PROMPT)] for task in tasks]
    metrics, trajectories = learner.iterate(groups, rollouts.chat, rollouts.sampling, rollouts.config, rng=100)
    ctx["result"]["learner"] = {
        "loss": metrics["loss"],
        "grad_norm": metrics["grad_norm"],
        "rows_supplied": metrics["train_rows_supplied"],
        "rewards": [t.reward for t in trajectories],
        "checksum": checksum(learner.state.params),
    }


PHASES = {
    "load": phase_load,
    "rollout": phase_rollout,
    "train": phase_train,
    "resume": phase_resume,
    "export": phase_export,
    "learner": phase_learner,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hf", required=True, help="tiny HF checkpoint directory, with the Qwen3 tokenizer.json")
    parser.add_argument("--out", required=True, help="shared output directory (checkpoints, export, metrics)")
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--mesh", default="1,-1,1", help="data,fsdp,tensor sizes (one may be -1)")
    parser.add_argument("--phases", default=",".join(PHASES), help=f"comma-separated subset of {list(PHASES)}")
    args = parser.parse_args(argv)

    distributed = initialize_distributed()  # before any JAX computation
    jax.config.update("jax_default_matmul_precision", "highest")
    data, fsdp, tensor = (int(s) for s in args.mesh.split(","))
    mesh = make_mesh(MeshConfig(data=data, fsdp=fsdp, tensor=tensor))
    ctx = {
        "args": args,
        "mesh": mesh,
        "result": {
            "process_index": jax.process_index(),
            "process_count": jax.process_count(),
            "distributed": distributed,
            "num_devices": jax.device_count(),
            "local_devices": jax.local_device_count(),
            "mesh": dict(zip(mesh.axis_names, mesh.axis_sizes)),
        },
    }
    timings = ctx["result"]["seconds"] = {}
    cpu_timings = ctx["result"]["cpu_seconds"] = {"startup": round(time.process_time(), 2)}  # imports, runtime
    with jax.set_mesh(mesh):
        for name in args.phases.split(","):
            started, cpu_started = time.perf_counter(), time.process_time()
            PHASES[name](ctx)
            timings[name] = round(time.perf_counter() - started, 2)
            cpu_timings[name] = round(time.process_time() - cpu_started, 2)
    print(RESULT_PREFIX + json.dumps(ctx["result"]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
