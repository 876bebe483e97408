"""Environment overhead: BFCL environment steps per second, this code against a baseline in one run.

Measured over all 800 entries with their ground-truth calls (one tool-calling step per turn, then the
turn-ending step that runs the turn's checks), timing whole episodes (reset, every step, outcome):
- steps_per_s / calls_per_s / us_per_step / us_per_call: `env.step` calls and the tool calls in them;
- replay_800_s: all 800 entries played by the oracle through the whole text protocol (calls rendered as
  <tool_call> text, decoded by the official rule, executed, checked), one process;
- single_call_step_us_median / _mean: one episode stepping 3,000 times with one cheap call (`pwd`): the
  price of a tool call on its own (the median is the typical call; the mean adds the waits a busy
  machine imposes);
- tool_process_round_trip_us: an empty request to the tool process and its answer (median of 2000),
  the machine's price of one synchronous hop between two processes.
Configurations: "current" (this tree, the default 5 s per-call limit: calls run in the tool process),
"current_in_process" (this tree, no limit: the in-process reference path) and, with --baseline REF,
"baseline" (that git revision of this repository, exported with `git archive`, default limit). Each
configuration runs in its own fresh process, alternating, `--rounds` times; the medians are reported
with current / baseline ratios and the cost per tool call of the enforced limit. Optionally the
official `multi_turn_checker` on the same 800 ground truths (`--official`), as an outside reference.

    python benchmarks/env_speed.py --baseline main [--rounds 3] [--official]

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def measure_episodes(limit_s: float | None) -> dict[str, float]:
    """Whole episodes of every entry played with its ground-truth calls (this process's code)."""
    from envtune_jax.environments.bfcl_data import load_entries
    from envtune_jax.environments.bfcl_env import BfclEpisode
    from envtune_jax.environments.config import EnvironmentConfig
    from envtune_jax.environments.gt_calls import ground_truth_tool_calls

    config = dataclasses.replace(EnvironmentConfig.evaluation(), call_time_limit_s=limit_s)
    entries = load_entries()
    prepared = [
        (entry, [ground_truth_tool_calls(t, entry.involved_classes) for t in entry.ground_truth]) for entry in entries
    ]
    steps = calls = 0
    started = time.perf_counter()
    for entry, turns in prepared:
        env = BfclEpisode(entry, config)
        env.reset()
        for turn_calls in turns:
            if turn_calls:
                env.step("", turn_calls, [])
                steps, calls = steps + 1, calls + len(turn_calls)
            env.step("", [], [])
            steps += 1
        if not env.outcome().correct:
            raise RuntimeError(f"the ground truth of {entry.id} failed: the benchmark measured a broken environment")
    seconds = time.perf_counter() - started
    return {"steps": steps, "calls": calls, "seconds": seconds}


def measure_replay(limit_s: float | None) -> float:
    from envtune_jax.environments.bfcl_data import load_entries
    from envtune_jax.environments.config import EnvironmentConfig
    from envtune_jax.environments.evaluation import evaluate_bfcl
    from envtune_jax.environments.policies import OraclePolicy

    config = dataclasses.replace(EnvironmentConfig.evaluation(), call_time_limit_s=limit_s)
    entries = load_entries()
    started = time.perf_counter()
    records = evaluate_bfcl(entries, OraclePolicy.for_bfcl(entries), config, keep_history=False)
    seconds = time.perf_counter() - started
    if sum(r.outcome.correct for r in records) != len(entries):
        raise RuntimeError("the oracle did not score 100%: the benchmark measured a broken environment")
    return seconds


def measure_official_checker() -> float:
    from bfcl_eval.eval_checker.multi_turn_eval.multi_turn_checker import multi_turn_checker

    from envtune_jax.environments.bfcl_data import load_entries

    entries = load_entries()
    started = time.perf_counter()
    for entry in entries:
        decoded = [[turn] if turn else [] for turn in entry.ground_truth]
        result = multi_turn_checker(decoded, entry.ground_truth, dataclasses.asdict(entry), entry.category, "bench")
        if not result["valid"]:
            raise RuntimeError(f"official checker rejected the ground truth of {entry.id}")
    return time.perf_counter() - started


def measure_single_calls(limit_s: float | None, count: int = 3000) -> list[float]:
    """Seconds of each of `count` steps making one cheap call (`pwd`) in one episode: the per-call price."""
    from envtune_jax.environments.base import ToolCall
    from envtune_jax.environments.bfcl_data import entry_by_id
    from envtune_jax.environments.bfcl_env import BfclEpisode
    from envtune_jax.environments.config import EnvironmentConfig

    config = dataclasses.replace(EnvironmentConfig.evaluation(), call_time_limit_s=limit_s, max_steps_per_turn=None)
    env = BfclEpisode(entry_by_id("multi_turn_base_0"), config)
    env.reset()
    seconds = []
    for _ in range(count):
        started = time.perf_counter()
        env.step("", [ToolCall("pwd", {})], [])
        seconds.append(time.perf_counter() - started)
    return seconds


def measure_round_trip(count: int = 2000) -> float | None:
    """Median seconds of an empty request to the tool process (None: this code has no tool process)."""
    try:
        from envtune_jax.environments.hosted_backend import tool_host_client
    except ImportError:
        return None
    client = tool_host_client()
    return statistics.median(client.round_trip_s() for _ in range(count))


def _measure_here(limit_s: float | None) -> dict[str, float]:
    """One configuration, in this process: a warm-up, then the episodes and the replay."""
    measure_episodes(limit_s)  # warm caches (doc parsing, class imports, the tool process)
    record = measure_episodes(limit_s)
    record["replay_800_s"] = measure_replay(limit_s)
    single = measure_single_calls(limit_s)
    record["single_call_median_s"], record["single_call_mean_s"] = statistics.median(single), statistics.mean(single)
    if limit_s is not None:
        record["round_trip_s"] = measure_round_trip()
    return record


def _run_configuration(source_root: Path, limit_s: float | None) -> dict[str, float]:
    """Measures one configuration in a fresh process whose imports resolve to `source_root`."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(source_root), os.environ.get("PYTHONPATH", "")]))
    env.setdefault("BFCL_PROJECT_ROOT", str(REPO / ".bfcl_project_root"))
    command = [sys.executable, str(Path(__file__).resolve()), "--measure-only", json.dumps(limit_s)]
    output = subprocess.run(command, env=env, cwd=source_root, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def _export_revision(revision: str, into: Path) -> str:
    """Writes the files of `revision` into `into`; returns its commit id."""
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--verify", f"{revision}^{{commit}}"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", commit], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return commit


def _summary(runs: list[dict[str, float]]) -> dict[str, float]:
    steps_per_s = statistics.median(r["steps"] / r["seconds"] for r in runs)
    calls_per_s = statistics.median(r["calls"] / r["seconds"] for r in runs)
    summary = {
        "steps_per_s": round(steps_per_s, 1),
        "calls_per_s": round(calls_per_s, 1),
        "us_per_step": round(1e6 / steps_per_s, 1),
        "us_per_call": round(1e6 / calls_per_s, 1),
        "replay_800_s": round(statistics.median(r["replay_800_s"] for r in runs), 3),
        "single_call_step_us_median": round(1e6 * statistics.median(r["single_call_median_s"] for r in runs), 1),
        "single_call_step_us_mean": round(1e6 * statistics.median(r["single_call_mean_s"] for r in runs), 1),
    }
    round_trips = [r["round_trip_s"] for r in runs if r.get("round_trip_s") is not None]
    if round_trips:
        summary["tool_process_round_trip_us"] = round(1e6 * statistics.median(round_trips), 1)
    return summary


def _this_tree() -> str:
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True
    ).stdout.strip()
    return head + ("+changes" if dirty else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", metavar="REF", help="git revision to compare with (e.g. main)")
    parser.add_argument("--rounds", type=int, default=3, help="measurements per configuration (median kept)")
    parser.add_argument("--official", action="store_true", help="also time the official checker")
    parser.add_argument("--measure-only", metavar="LIMIT_JSON", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure_only is not None:
        print(json.dumps(_measure_here(json.loads(args.measure_only))))
        return
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    with tempfile.TemporaryDirectory(prefix="env_speed_baseline_") as baseline_dir:
        configurations = {"current": (REPO, 5.0), "current_in_process": (REPO, None)}
        record: dict = {
            "benchmark": "env_speed",
            "entries": 800,
            "date": datetime.date.today().isoformat(),
            "cpus": os.cpu_count(),
            "machine": platform.machine(),
            "python": platform.python_version(),
            "current_revision": _this_tree(),
            "rounds": args.rounds,
        }
        if args.baseline:
            record["baseline_revision"] = f"{args.baseline} ({_export_revision(args.baseline, Path(baseline_dir))})"
            configurations["baseline"] = (Path(baseline_dir), 5.0)
        runs: dict[str, list] = {name: [] for name in configurations}
        for _ in range(args.rounds):  # alternate, so that load changes on the machine hit every configuration
            for name, (root, limit_s) in configurations.items():
                runs[name].append(_run_configuration(root, limit_s))
        results = {name: _summary(measured) for name, measured in runs.items()}
    record.update(results)
    if "baseline" in results:
        current, baseline = results["current"], results["baseline"]
        record["steps_per_s_current_over_baseline"] = round(current["steps_per_s"] / baseline["steps_per_s"], 3)
        record["limit_cost_us_per_call"] = round(current["us_per_call"] - baseline["us_per_call"], 1)
        record["limit_cost_us_per_step"] = round(current["us_per_step"] - baseline["us_per_step"], 1)
        record["limit_cost_us_per_single_call_median"] = round(
            current["single_call_step_us_median"] - baseline["single_call_step_us_median"], 1
        )
    record["current_over_in_process"] = round(
        results["current"]["steps_per_s"] / results["current_in_process"]["steps_per_s"], 3
    )
    if args.official:
        os.environ.setdefault("BFCL_PROJECT_ROOT", str(REPO / ".bfcl_project_root"))
        record["official_checker_800_s"] = round(measure_official_checker(), 3)
    print(json.dumps(record))


if __name__ == "__main__":
    main()
