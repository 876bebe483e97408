"""Environment overhead: tool steps per second and the time to replay all 800 ground-truth entries.

Prints one JSON line:
- tool_steps_per_s / tool_calls_per_s: `env.step` calls that execute tool calls (ground-truth calls of
  every turn, one step per turn, plus the turn-ending step that advances the twin and checks the turn),
  measured inside `env.step` only, over all 800 entries;
- replay_800_s / replay_800_cpu_s: all 800 entries played by the oracle through the whole text protocol
  (calls rendered as <tool_call> text, decoded by the official rule, executed, checked), one process;
- replay_800_2workers_s: the same over 2 spawned worker processes (start-up included);
- official_checker_800_s: the peer, the official `multi_turn_checker` on the same 800 ground truths
  (its eval-based executor; run here on trusted ground-truth strings only), and the ratio to ours.
Target: replay_800_s under 5 s on 2 CPU cores.

    python benchmarks/env_speed.py [--skip-official]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time

from environments.bfcl_data import load_entries
from environments.bfcl_env import BfclEpisode
from environments.config import EnvironmentConfig
from environments.evaluation import evaluate_bfcl
from environments.gt_calls import ground_truth_tool_calls
from environments.policies import OraclePolicy


def measure_tool_steps(entries) -> dict[str, float]:
    prepared = [(entry, [ground_truth_tool_calls(t, entry.involved_classes) for t in entry.ground_truth]) for entry in entries]
    tool_steps = calls = 0
    in_step = 0.0
    for entry, turns in prepared:
        env = BfclEpisode(entry, EnvironmentConfig.evaluation())
        env.reset()
        for turn_calls in turns:
            if turn_calls:
                started = time.perf_counter()
                env.step("", turn_calls, [])
                in_step += time.perf_counter() - started
                tool_steps, calls = tool_steps + 1, calls + len(turn_calls)
            started = time.perf_counter()
            env.step("", [], [])
            in_step += time.perf_counter() - started
        assert env.outcome().correct, entry.id
    return {"tool_steps": tool_steps, "tool_calls": calls, "step_seconds": in_step,
            "tool_steps_per_s": tool_steps / in_step, "tool_calls_per_s": calls / in_step}


def measure_replay(entries, workers: int) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    records = evaluate_bfcl(entries, OraclePolicy.for_bfcl(entries), EnvironmentConfig.evaluation(), workers=workers,
                            keep_history=False)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if sum(r.outcome.correct for r in records) != len(entries):
        raise RuntimeError("the oracle did not score 100%: the benchmark measured a broken environment")
    return wall, cpu


def measure_official_checker(entries) -> float:
    from bfcl_eval.eval_checker.multi_turn_eval.multi_turn_checker import multi_turn_checker

    started = time.perf_counter()
    for entry in entries:
        decoded = [[turn] if turn else [] for turn in entry.ground_truth]
        result = multi_turn_checker(decoded, entry.ground_truth, dataclasses.asdict(entry), entry.category, "bench")
        if not result["valid"]:
            raise RuntimeError(f"official checker rejected the ground truth of {entry.id}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-official", action="store_true", help="do not time the official checker")
    args = parser.parse_args()
    os.environ.setdefault("BFCL_PROJECT_ROOT", os.path.join(os.path.dirname(__file__), "..", ".bfcl_project_root"))
    entries = load_entries()
    measure_replay(entries[:20], workers=1)  # warm caches (doc parsing, class imports)
    steps = measure_tool_steps(entries)
    replay_s, replay_cpu_s = measure_replay(entries, workers=1)
    replay_2w_s, _ = measure_replay(entries, workers=2)
    record = {
        "benchmark": "env_speed", "entries": len(entries), "cpus": os.cpu_count(), "python": platform.python_version(),
        "tool_steps_per_s": round(steps["tool_steps_per_s"], 1), "tool_calls_per_s": round(steps["tool_calls_per_s"], 1),
        "us_per_tool_step": round(1e6 / steps["tool_steps_per_s"], 1),
        "replay_800_s": round(replay_s, 3), "replay_800_cpu_s": round(replay_cpu_s, 3),
        "replay_800_2workers_s": round(replay_2w_s, 3), "target_s": 5.0,
    }
    if not args.skip_official:
        official_s = measure_official_checker(entries)
        record["official_checker_800_s"] = round(official_s, 3)
        record["replay_vs_official_checker"] = round(replay_s / official_s, 2)
    print(json.dumps(record))


if __name__ == "__main__":
    main()
