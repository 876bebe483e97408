"""Multi-process (multi-host) JAX on one machine, and the launch scripts.

Two local processes with two fake CPU devices each form one 4-device mesh (cross-process collectives
over gloo, JAX's default CPU collectives). Each runs tests/rl/multihost_worker.py: load a tiny HF
checkpoint (real Qwen3 vocabulary) sharded over both processes, roll out synthetic multi-turn episodes
through a GenerationEngine on that mesh, train on the trajectories (each process supplying its own
rows), roll out again with the new weights, checkpoint, restore, export. Every process must agree —
same trajectories, losses and parameters — and match a single-process run; only process 0 may write
the export and the metrics log.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from envtune_jax import mesh as mesh_module
from tests.conftest import write_tiny_qwen3
from tests.rl.multihost_worker import BATCH_B, LEARNING_RATE, RESULT_PREFIX

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).resolve().parent / "multihost_worker.py"
LAUNCH = ROOT / "launch"
STEPS = 1
# Cluster variables of the machine running the tests must not leak into the workers.
CLUSTER_VARS = (
    "JAX_COORDINATOR_ADDRESS",
    "JAX_NUM_PROCESSES",
    "JAX_PROCESS_ID",
    "ENVTUNE_DISTRIBUTED",
    "TPU_WORKER_HOSTNAMES",
    "MEGASCALE_COORDINATOR_ADDRESS",
    *mesh_module.SLURM_STEP_VARS,
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker_env(devices: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CLUSTER_VARS}
    # Optimisation level 0 without LLVM's expensive passes: the tiny train step compiles in about half the
    # time (compilation dominates these runs). One compute thread per process: three processes share two
    # cores, and more threads only contend. All runs share the flags.
    flags = (
        f"--xla_force_host_platform_device_count={devices} --xla_backend_optimization_level=0 "
        "--xla_llvm_disable_expensive_passes=true --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    )
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT), XLA_FLAGS=flags, **extra)
    return env


def _run_all(jobs: dict[str, tuple[list[str], dict]], logs: Path, timeout: float = 240) -> dict[str, dict]:
    """Starts every job at once; if one fails the others are stopped (they would wait forever in a
    collective). Returns each job's MULTIHOST_RESULT record."""
    logs.mkdir(parents=True, exist_ok=True)
    procs = {}
    for name, (argv, env) in jobs.items():
        with open(logs / f"{name}.log", "w") as log:
            procs[name] = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    deadline = time.monotonic() + timeout
    try:
        while any(p.poll() is None for p in procs.values()):
            failed = [n for n, p in procs.items() if p.returncode not in (None, 0)]
            if failed or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    texts = {name: (logs / f"{name}.log").read_text() for name in procs}
    bad = {n: p.returncode for n, p in procs.items() if p.returncode != 0}
    assert not bad, f"exit codes {bad}:\n" + "\n".join(f"--- {n}\n{texts[n][-3000:]}" for n in bad)
    results = {}
    for name, text in texts.items():
        lines = [line for line in text.splitlines() if line.startswith(RESULT_PREFIX)]
        assert len(lines) == 1, f"{name}: expected one result line\n{text[-3000:]}"
        results[name] = json.loads(lines[0][len(RESULT_PREFIX) :])
    return results


def _worker_argv(hf: Path, out: Path, mesh: str) -> list[str]:
    return [sys.executable, str(WORKER), "--hf", str(hf), "--out", str(out), "--steps", str(STEPS), "--mesh", mesh]


def _multi_and_reference(
    hf: Path, tmp: Path, processes: int, devices: int, mesh: str, timeout: float = 240
) -> tuple[list[dict], dict]:
    """Runs `processes` distributed workers and a one-device single-process reference side by side."""
    address = f"127.0.0.1:{_free_port()}"
    jobs = {
        f"process{i}": (
            _worker_argv(hf, tmp / "multi", mesh),
            _worker_env(
                devices, JAX_COORDINATOR_ADDRESS=address, JAX_NUM_PROCESSES=str(processes), JAX_PROCESS_ID=str(i)
            ),
        )
        for i in range(processes)
    }
    jobs["reference"] = (_worker_argv(hf, tmp / "single", "1,-1,1"), _worker_env(1))
    results = _run_all(jobs, tmp / "logs", timeout)
    return [results[f"process{i}"] for i in range(processes)], results["reference"]


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(path))


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory) -> Path:
    """A tiny Qwen3 with the real vocabulary, and the Qwen3 tokenizer.json next to it (loading that file
    takes each worker ~1 s; building the tokenizer from its ranks ~3 s)."""
    from envtune_jax.chat import default_tokenizer
    from envtune_jax.chat.tokenizer import save_tokenizer

    path = write_tiny_qwen3(tmp_path_factory.mktemp("hf") / "tiny", "untied_kv1", vocab_size=151936)
    save_tokenizer(default_tokenizer(), path)
    return path


def _assert_same_params(checksum: list[float], expected: list[float]) -> None:
    """Checksums are per leaf (sum |x|, ramp-weighted sum); the second nearly cancels, so it is held to
    a tolerance relative to the leaf's size. AdamW's normalised steps amplify float noise a little."""
    got, want = np.asarray(checksum).reshape(-1, 2), np.asarray(expected).reshape(-1, 2)
    np.testing.assert_allclose(got[:, 0], want[:, 0], rtol=1e-5)
    np.testing.assert_array_less(np.abs(got[:, 1] - want[:, 1]), 1e-5 * want[:, 0] + 1e-7)


def _assert_same_weights(got: np.ndarray, want: np.ndarray, name: str) -> None:
    """Equal to 1% of one AdamW step (1e-4), except for a few elements at most one step apart: AdamW
    divides each gradient element by its own magnitude, so an element whose gradient is at the level
    of float noise can move by a different fraction of a step (seen: 1 of the 7.3M elements of the
    151,936 x 48 output projection). A real sharding error moves many elements, or by more than a step."""
    off = ~np.isclose(got, want, rtol=1e-4, atol=1e-4)
    assert off.sum() <= max(2, 1e-6 * got.size), f"{name}: {off.sum()} of {got.size} elements differ"
    np.testing.assert_allclose(got, want, rtol=0, atol=LEARNING_RATE, err_msg=name)


def _check_rollouts(workers: list[dict], reference: dict) -> None:
    """Every process holds every trajectory, identical everywhere and to the single-process run's."""
    for w in workers:
        assert w["rollouts"] == workers[0]["rollouts"]
    rollouts = workers[0]["rollouts"]
    assert len(rollouts) == STEPS + 1  # one per train step, one for the resume phase
    for got, want in zip(rollouts, reference["rollouts"]):
        for key in ("token_ids", "loss_masks", "rewards", "truncated"):
            assert got[key] == want[key], key
        for lp_got, lp_want in zip(got["sampler_logprobs"], want["sampler_logprobs"]):
            np.testing.assert_allclose(lp_got, lp_want, rtol=1e-5, atol=1e-5)
    for record in rollouts:  # real trajectories: sampled tokens with their log-probs, not padding
        assert len(record["token_ids"]) == BATCH_B
        for ids, mask, logprobs in zip(record["token_ids"], record["loss_masks"], record["sampler_logprobs"]):
            mask, logprobs = np.asarray(mask, bool), np.asarray(logprobs)
            assert 0 < mask.sum() < len(ids)
            assert np.all(logprobs[mask] < 0) and np.all(logprobs[~mask] == 0)
        sampled = [
            tuple(np.asarray(ids)[np.asarray(mask, bool)])
            for ids, mask in zip(record["token_ids"], record["loss_masks"])
        ]
        assert len(set(sampled)) == len(sampled), "two slots sampled the same tokens"
    assert len({tuple(map(tuple, r["token_ids"])) for r in rollouts}) == len(rollouts)
    # the trainer's log-probs of the sampled tokens are the sampler's (importance ratio 1 on fresh rollouts),
    # also after a step: the engine sampled with the trained, sharded weights
    assert len(workers[0]["ratio_means"]) == STEPS + 1
    np.testing.assert_allclose(workers[0]["ratio_means"], 1.0, atol=1e-4)


def _check_agreement(workers: list[dict], reference: dict, processes: int, out: Path, ref_out: Path) -> None:
    assert sorted(w["process_index"] for w in workers) == list(range(processes))
    _check_rollouts(workers, reference)
    for w in workers:
        assert w["distributed"] and w["process_count"] == processes and w["num_devices"] == 4
    # the batch rows are split between processes, and so are the parameters
    spans = sorted(tuple(w["rows"]) for w in workers)
    assert spans[0][0] == 0 and spans[-1][1] == BATCH_B and all(a[1] == b[0] for a, b in zip(spans, spans[1:])), spans
    assert all(a[1] > a[0] for a in spans)
    assert all(w["fraction_of_params_held"] < 0.75 for w in workers), [w["fraction_of_params_held"] for w in workers]
    # every process sees the same numbers ...
    for key in ("losses", "param_checksum", "continued_loss", "resumed_loss", "resumed_checksum"):
        assert all(w[key] == workers[0][key] for w in workers), key
    # ... which are those of one process holding the whole batch
    first = workers[0]
    np.testing.assert_allclose(first["losses"], reference["losses"], rtol=1e-5)
    _assert_same_params(first["param_checksum"], reference["param_checksum"])
    # (after an AdamW step, whose normalised updates amplify float noise (see _assert_same_weights): the
    # 4-process (data=2, fsdp=2) run was seen 1.9e-7 off a loss of -0.0108)
    np.testing.assert_allclose(first["continued_loss"], reference["continued_loss"], rtol=1e-5, atol=1e-6)
    # PolicyLearner.iterate (the production loop's step): each process supplied only its own rows, and
    # the step equals the one-process run's
    assert sorted(w["learner"]["rows_supplied"] for w in workers) == sorted(b - a for a, b in spans)
    assert reference["learner"]["rows_supplied"] == BATCH_B
    for w in workers:
        assert w["learner"] == workers[0]["learner"]
    assert first["learner"]["rewards"] == reference["learner"]["rewards"]
    np.testing.assert_allclose(first["learner"]["loss"], reference["learner"]["loss"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(first["learner"]["grad_norm"], reference["learner"]["grad_norm"], rtol=1e-3)
    # (its parameters are not compared with the one-process run's: the random model earns the same reward
    # on every sample, so advantages are 0 and the gradient is the entropy bonus alone, ~2e-5, where
    # AdamW turns float-noise differences of single elements into whole steps)
    # a restored checkpoint continues exactly as the uninterrupted run
    assert first["restored_step"] == STEPS
    assert first["resumed_loss"] == first["continued_loss"]
    assert first["resumed_checksum"] == first["continued_checksum"]

    # process 0 alone held the run directory's lock, every process saw it as the holder, and it is gone
    holders = [w for w in workers if w["lock"]["held_here"]]
    assert [w["process_index"] for w in holders] == [0], [w["lock"] for w in workers]
    assert all(w["lock"]["holder_pid"] == holders[0]["lock"]["pid"] for w in workers)
    assert not (out / "run").exists()
    # one metrics log, one line per step (two writers would have appended twice)
    logs = list(out.rglob("metrics.jsonl"))
    assert logs == [out / "metrics" / "metrics.jsonl"], logs
    records = [json.loads(line) for line in logs[0].read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, STEPS + 2))
    np.testing.assert_allclose([r["loss"] for r in records], first["losses"] + [first["continued_loss"]], rtol=1e-6)
    # one complete export, no half-written folders, equal to the single-process export
    assert sorted(p.name for p in out.iterdir() if "export" in p.name) == ["export"]
    assert sorted(p.name for p in (out / "export").iterdir()) == [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    exported = _read_safetensors(out / "export" / "model.safetensors")
    expected = _read_safetensors(ref_out / "export" / "model.safetensors")
    assert exported.keys() == expected.keys()
    for name in expected:
        _assert_same_weights(exported[name], expected[name], name)


@pytest.mark.multidevice
def test_two_processes_train_resume_and_export_like_one_process(tiny_hf, tmp_path):
    workers, reference = _multi_and_reference(tiny_hf, tmp_path, processes=2, devices=2, mesh="1,-1,1")
    assert all(w["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1} for w in workers)
    _check_agreement(workers, reference, 2, tmp_path / "multi", tmp_path / "single")


@pytest.mark.multidevice
@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("ENVTUNE_SLOW_TESTS") != "1",
    reason="5 processes take minutes on 2 shared CPU cores; set ENVTUNE_SLOW_TESTS=1 to run",
)
def test_four_processes_one_device_each_with_data_and_fsdp_axes(tiny_hf, tmp_path):
    workers, reference = _multi_and_reference(tiny_hf, tmp_path, processes=4, devices=1, mesh="2,2,1", timeout=900)
    assert all(w["mesh"] == {"data": 2, "fsdp": 2, "tensor": 1} for w in workers)
    _check_agreement(workers, reference, 4, tmp_path / "multi", tmp_path / "single")


# --- initialize_distributed: which environments start the distributed runtime -------------------


@pytest.mark.parametrize(
    "env, expected",
    [
        ({}, None),
        ({"SLURM_JOB_ID": "7"}, None),  # an sbatch/salloc shell outside srun: one process
        (
            {
                "SLURM_JOB_ID": "7",
                "SLURM_STEP_NODELIST": "n[1-2]",
                "SLURM_NTASKS": "2",
                "SLURM_PROCID": "1",
                "SLURM_LOCALID": "0",
            },
            {},
        ),
        ({"TPU_WORKER_HOSTNAMES": "w0,w1"}, {}),
        ({"ENVTUNE_DISTRIBUTED": "1"}, {}),
        (
            {"JAX_COORDINATOR_ADDRESS": "h:1234", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"},
            {"coordinator_address": "h:1234", "num_processes": 2, "process_id": 1},
        ),
    ],
)
def test_initialize_distributed_detects_the_environment(monkeypatch, env, expected):
    for name in CLUSTER_VARS:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    import jax  # (the module under test imports it where it is used)

    calls = []
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
    assert mesh_module.initialize_distributed() is (expected is not None)
    assert calls == ([] if expected is None else [expected])


def test_initialize_distributed_names_missing_variables(monkeypatch):
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "h:1234")
    monkeypatch.delenv("JAX_NUM_PROCESSES", raising=False)
    monkeypatch.setenv("JAX_PROCESS_ID", "0")
    import jax

    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    with pytest.raises(ValueError, match="JAX_NUM_PROCESSES"):
        mesh_module.initialize_distributed()


# --- launch scripts ----------------------------------------------------------------------------

SCRIPTS = sorted(LAUNCH.glob("*.sh"))


def test_launch_scripts_exist():
    assert {p.name for p in SCRIPTS} >= {"tpu_pod.sh", "slurm_gpu.sh", "single_host.sh", "setup_env.sh"}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_launch_script_is_valid_bash_and_strict(script):
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash\n") and "set -euo pipefail" in text
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_launch_script_prints_usage(script):
    result = subprocess.run(
        ["bash", str(script), "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp")},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage:"), result.stdout


def test_tpu_pod_script_refuses_to_run_without_its_variables():
    result = subprocess.run(
        ["bash", str(LAUNCH / "tpu_pod.sh"), "run", "train"],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": os.environ["PATH"]},
    )
    assert result.returncode == 2 and "TPU_NAME" in result.stderr, result.stderr


def _fake_tools(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """A PATH whose `gcloud` runs the --command locally in a fake home and whose `srun` runs its
    command; a repository there whose .venv/bin/envtune prints its environment and arguments."""
    bin_dir, home = tmp_path / "bin", tmp_path / "home"
    repo_bin = home / "envtune-jax" / ".venv" / "bin"
    for path in (bin_dir, repo_bin):
        path.mkdir(parents=True)
    scripts = {
        bin_dir
        / "gcloud": 'while [ $# -gt 0 ]; do [ "$1" = --command ] && cd "$HOME" && exec bash -c "$2"; shift; done\n',
        bin_dir / "srun": 'while [ "${1#--}" != "$1" ]; do echo "srun $1"; shift; done; exec "$@"\n',
        repo_bin / "envtune": (
            'echo "DIST=${ENVTUNE_DISTRIBUTED:-} IDS=${JAX_LOCAL_DEVICE_IDS:-} PWD=$PWD"; printf "<%s>\\n" "$@"\n'
        ),
    }
    for path, body in scripts.items():
        path.write_text("#!/usr/bin/env bash\n" + body)
        path.chmod(0o755)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "HOME": str(home)}
    return env, home / "envtune-jax"


def test_tpu_pod_run_passes_arguments_intact_to_every_worker(tmp_path):
    env, repo = _fake_tools(tmp_path)
    env.update(TPU_NAME="slice", ZONE="zone", EXTRA_ENV="JAX_TRACEBACK_FILTERING=off")
    args = ["train", "--config", "a b.yaml", "model.ckpt=/x y", "$(touch pwned)"]
    result = subprocess.run(
        ["bash", str(LAUNCH / "tpu_pod.sh"), "run", *args], capture_output=True, text=True, timeout=30, env=env
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"DIST=1 IDS= PWD={repo}"
    assert lines[1:] == [f"<{a}>" for a in args]
    assert not (repo / "pwned").exists()


def test_slurm_script_runs_one_process_per_gpu_or_per_node(tmp_path):
    env, repo = _fake_tools(tmp_path)
    env.update(SLURM_JOB_ID="42", REPO_DIR=str(repo), GPUS_PER_NODE="4")
    script = str(LAUNCH / "slurm_gpu.sh")
    per_gpu = subprocess.run(
        ["bash", script, "eval", "--split", "test"], capture_output=True, text=True, timeout=30, env=env
    )
    assert per_gpu.returncode == 0, per_gpu.stderr
    assert "srun --ntasks-per-node=4" in per_gpu.stdout and "IDS= " in per_gpu.stdout
    assert per_gpu.stdout.splitlines()[-3:] == ["<eval>", "<--split>", "<test>"]
    per_node = subprocess.run(
        ["bash", script, "eval"], capture_output=True, text=True, timeout=30, env=dict(env, PROCESS_PER="node")
    )
    assert "srun --ntasks-per-node=1" in per_node.stdout and "IDS=0,1,2,3 " in per_node.stdout


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_launch_scripts_pass_shellcheck():
    result = subprocess.run(
        ["shellcheck", "--shell=bash", "--severity=style", *map(str, SCRIPTS)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
