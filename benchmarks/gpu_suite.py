"""Our benchmarks and the peers', side by side in one command, under one deadline, written up as a table.

    python benchmarks/gpu_suite.py --preset first-light --budget-s 510 --out $OUT          # a first call
    python benchmarks/gpu_suite.py --preset first-light --resume --budget-s 165 --out $OUT # the rest

(benchmarks/gpu_first_light.sh wraps both; docs/benchmarks-gpu.md has the plan.)
The steps (benchmarks/suite_plan.py), in order, each its own process with its own time limit:
probe (matmul rate, copy bandwidth), parity (our 4B logits and greedy tokens against transformers'),
generate (ours with the einsum and the Pallas decode attention, the Tunix sampler, the two kernels'
tokens compared), prefill and train (ours beside HF transformers), shared-prefix (decode at BFCL
shapes with and without a shared prompt, once `envtune bench generate` has `--shared-prefix`), and
on request extend, rollout, memory. A step starts only if its planned time fits in what is left of
`--budget-s`, and runs at most until the deadline; one that cannot start is skipped with that
reason, and the next one that fits still runs. A failure is recorded with the end of its output
and the next variant, if any, is tried.

Written as it goes (three files, so that a call cut short still leaves its results): OUT/results.jsonl
(this call's records, rewritten after every step), OUT/suite.log (every step's output, streamed),
and at the end OUT/RESULTS.md (benchmarks/results_table.py, over the earlier calls' records too).
Step scratch (the 4B reference checkpoint, generated tokens) lives in --state-dir on the machine,
where a later call on the same machine finds it. `--resume [FILE ...]` runs only the steps that
have no result yet in those results (default: the calls this machine ran before, from --state-dir);
failed steps too with `--retry-failed`. `--tiny` runs the same plan at tiny shapes on any machine
(the test suite's dry run, on CPU).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from suite_plan import GROUPS, PRESETS, REPO, Step, plan, shared_prefix_option, step_dir  # noqa: E402

MEM_FRACTION = "0.92"  # JAX would preallocate 75% of the GPU; the peers were measured with more
DEFAULT_STATE_DIR = Path(os.environ.get("ENVTUNE_SUITE_STATE", "/tmp/envtune-gpu-suite"))
LOG_CAP_BYTES = 4 << 20  # per step, in OUT/suite.log
DEADLINE_MARGIN_S = 5  # a step is stopped this long before the deadline: time to write the results


def parse_json_lines(text: str) -> list[dict]:
    """The JSON objects among a step's output lines (other lines are logs)."""
    records = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{") and line.endswith("}"):
            try:
                value = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(value, dict):
                records.append(value)
    return records


class Log:
    """OUT/suite.log: the suite's own lines and every step's output, streamed, capped per step."""

    def __init__(self, path: Path | None):
        self.file = open(path, "a", buffering=1) if path is not None else None
        self.written = 0
        self.lock = threading.Lock()

    def line(self, text: str) -> None:
        print(text, flush=True)
        self.write(text + "\n", capped=False)

    def write(self, text: str, capped: bool = True) -> None:
        if self.file is None:
            return
        with self.lock:
            if capped and self.written > LOG_CAP_BYTES:
                return
            self.file.write(text)
            if capped:
                self.written += len(text)
                if self.written > LOG_CAP_BYTES:
                    self.file.write(f"\n[suite] ... output past {LOG_CAP_BYTES >> 20} MiB left out\n")


def run_process(argv: list[str], env: dict, timeout_s: float, log: Log) -> tuple[int | str, str]:
    """(exit code or "timeout", stdout + stderr) of one process, streamed into the log as it runs."""
    log.written = 0
    process = subprocess.Popen(
        argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
    )
    lines: list[str] = []

    def pump():
        for line in process.stdout:
            lines.append(line)
            log.write(line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        code: int | str = process.wait(timeout=max(timeout_s, 1))
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        code = "timeout"
    reader.join(timeout=10)
    return code, "".join(lines)


def run_step(step: Step, state_dir: Path, deadline: float, log: Log, succeeded=frozenset()) -> list[dict]:
    """Runs the step's variants until one succeeds; returns its records (or why it failed or was skipped).

    `succeeded`: the steps that have succeeded so far (this call, or earlier on this machine)."""
    tag = {
        "step": step.name,
        "group": step.group,
        "source": step.source,
        "expect_s": step.expect_s,
        "limit_s": step.limit_s,
    }
    if step.skip_reason:
        return [{**tag, "status": "skipped", "reason": step.skip_reason}]
    unmet = [name for name in step.requires if name not in succeeded]
    if unmet:
        return [{**tag, "status": "skipped", "reason": f"needs {', '.join(unmet)}, which did not succeed"}]
    if step.check is not None:
        if deadline - time.monotonic() - DEADLINE_MARGIN_S < step.expect_s:
            return [{**tag, "status": "skipped", "resumable": True, "reason": "no time left in this call"}]
        try:
            return [{**tag, "status": "ok", **record} for record in step.check(state_dir)]
        except Exception as exc:  # noqa: BLE001 - a check that cannot run says why
            return [{**tag, "status": "skipped", "reason": f"{type(exc).__name__}: {exc}"}]
    folder = step_dir(state_dir, step.name)
    failures: list[dict] = []
    for index, argv in enumerate(step.variants):
        left = deadline - time.monotonic()
        if left - DEADLINE_MARGIN_S < step.expect_s:
            return [
                {
                    **tag,
                    "status": "skipped",
                    "resumable": True,
                    "failures": failures,
                    "reason": f"needs ~{step.expect_s:.0f} s, {max(left, 0):.0f} s left in this call",
                }
            ]
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "XLA_PYTHON_CLIENT_MEM_FRACTION": MEM_FRACTION,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
            "OUT": str(folder),
            **step.env,
        }
        cut_by_deadline = left - DEADLINE_MARGIN_S < step.limit_s
        log.line(
            f"[suite] {step.name} (variant {index}, planned {step.expect_s:.0f} s, "
            f"limit {min(step.limit_s, left - DEADLINE_MARGIN_S):.0f} s): {' '.join(argv[1:])}"
        )
        start = time.monotonic()
        code, output = run_process(argv, env, min(step.limit_s, left - DEADLINE_MARGIN_S), log)
        seconds = time.monotonic() - start
        if code == "timeout" and cut_by_deadline:
            code = "deadline"  # stopped by the call's deadline, not its own limit: a later call may finish it
        records = parse_json_lines(output)
        if step.results_file and (folder / step.results_file).is_file():
            records = parse_json_lines((folder / step.results_file).read_text())
        log.line(f"[suite] {step.name}: exit {code} after {seconds:.0f} s, {len(records)} records")
        if code == 0 and records:
            variant = {"variant": index, "argv": argv[1:], "seconds": seconds, "failures": failures}
            return [{**tag, **variant, "status": "ok", **record} for record in records]
        failures.append(
            {
                "variant": index,
                "argv": argv[1:],
                "returncode": code,
                "seconds": seconds,
                "output_tail": output[-1500:],
                "records": records,
            }
        )
    partial = failures[-1]["records"] if failures else []
    resumable = {"resumable": True} if failures and failures[-1]["returncode"] == "deadline" else {}
    return [{**tag, "status": "failed", **resumable, "failures": failures}] + [
        {**tag, "status": "partial", **record} for record in partial
    ]


def load_records(paths) -> list[dict]:
    records = []
    for path in paths:
        for line in Path(path).read_text().splitlines():
            if line.strip():
                records.append(json.loads(line))
    return records


def steps_to_run(steps: list[Step], earlier: list[dict], retry_failed: bool) -> tuple[list[Step], set[str]]:
    """(the steps still to run, the names of those that already succeeded) given earlier calls' records.

    Done: a step with an ok record. Left: one never run, skipped, or stopped by a call's deadline;
    failed ones only with `retry_failed`. A step that runs takes the steps it requires with it (they
    reuse what they left on the machine, or make it again)."""
    done, failed = set(), set()
    for record in earlier:
        if record.get("status") == "ok":
            done.add(record["step"])
        elif record.get("status") == "failed" and not record.get("resumable"):
            failed.add(record["step"])
    wanted = {s.name for s in steps if s.name not in done and (retry_failed or s.name not in failed - done)}
    by_name = {s.name: s for s in steps}
    for name in list(wanted):
        wanted.update(r for r in by_name[name].requires if r in by_name)
    return [s for s in steps if s.name in wanted], done - wanted


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    choice = parser.add_mutually_exclusive_group()
    choice.add_argument("--preset", choices=sorted(PRESETS), help="a named list of groups")
    choice.add_argument("--groups", help=f"comma-separated, from {', '.join(GROUPS)}")
    parser.add_argument("--only", default=None, metavar="STEP,...", help="run only these steps (names or groups)")
    parser.add_argument(
        "--resume",
        nargs="*",
        default=None,
        metavar="RESULTS.jsonl",
        help="skip the steps these earlier results hold (no file: the earlier calls on this machine)",
    )
    parser.add_argument("--retry-failed", action="store_true", help="with --resume, run failed steps again too")
    parser.add_argument("--out", default=os.environ.get("OUT", "benchmarks/out"), help="results folder (default $OUT)")
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=DEFAULT_STATE_DIR,
        help="this machine's scratch and call history (default $ENVTUNE_SUITE_STATE or %(default)s)",
    )
    parser.add_argument("--peers", default=str(REPO / ".peers"), help="folder holding the peer scripts")
    parser.add_argument("--commit", default=None, help="the commit measured (default: git HEAD, else .peers/COMMIT)")
    parser.add_argument("--budget-s", type=float, default=510, help="no step runs past this many seconds")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes on any machine (CPU dry run)")
    parser.add_argument(
        "--generate-shapes",
        default=None,
        metavar="BxPxN,...",
        help="generate group shapes (default: 1x512x128,64x512x256,256x512x128)",
    )
    parser.add_argument(
        "--rollout-override",
        action="append",
        default=[],
        metavar="key=value",
        help="extra recipe override for the rollout group (repeatable)",
    )
    args = parser.parse_args(argv)
    groups = list(PRESETS[args.preset]) if args.preset else [g for g in (args.groups or "").split(",") if g]
    unknown = sorted(set(groups) - set(GROUPS))
    if not groups or unknown:
        parser.error(f"unknown or no group(s) {unknown}; choose from {', '.join(GROUPS)} or a --preset")
    shapes = None
    if args.generate_shapes:
        try:
            shapes = [tuple(int(v) for v in item.split("x")) for item in args.generate_shapes.split(",") if item]
        except ValueError:
            shapes = []
        if not shapes or any(len(shape) != 3 for shape in shapes):
            parser.error(f"--generate-shapes {args.generate_shapes!r}: expected BxPxN[,BxPxN...]")
    history = args.state_dir / "calls"
    earlier_files = (
        (sorted(history.glob("*.jsonl")) if history.is_dir() else []) if args.resume == [] else (args.resume or [])
    )
    missing = [str(p) for p in earlier_files if not Path(p).is_file()]
    if missing:
        parser.error(f"--resume: no such file(s): {', '.join(missing)}")
    earlier = load_records(earlier_files)

    start = time.monotonic()
    deadline = start + args.budget_s
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    history.mkdir(parents=True, exist_ok=True)
    call = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]
    steps = plan(
        groups,
        args.tiny,
        Path(args.peers),
        args.state_dir,
        args.rollout_override,
        shapes,
        shared_prefix_option() if "shared-prefix" in groups else None,
    )
    if args.only:
        names = {n.strip() for n in args.only.split(",") if n.strip()}
        unknown = names - {s.name for s in steps} - set(groups)
        if unknown:
            parser.error(
                f"--only: no step or group {sorted(unknown)} in this plan; steps: {', '.join(s.name for s in steps)}"
            )
        steps = [s for s in steps if s.name in names or s.group in names]
    steps, succeeded = steps_to_run(steps, earlier, args.retry_failed) if args.resume is not None else (steps, set())
    meta = {
        "step": "meta",
        "group": "meta",
        "source": "suite",
        "status": "ok",
        "call": call,
        "groups": groups,
        "preset": args.preset,
        "tiny": args.tiny,
        "budget_s": args.budget_s,
        "resumed_from": [str(p) for p in earlier_files] if args.resume is not None else None,
        "planned": [s.name for s in steps],
        "commit": args.commit or _git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "python": sys.version.split()[0],
        "gpu": _gpu_name(),
        **_versions(),
    }
    records = [meta]
    log = Log(out / "suite.log")
    log.line(f"[suite] call {call}: {len(steps)} steps in {args.budget_s:.0f} s: {', '.join(s.name for s in steps)}")

    def save():  # after every step: nothing is lost if the call is cut short
        text = "".join(json.dumps(r) + "\n" for r in records)
        (out / "results.jsonl").write_text(text)
        (history / f"{call}.jsonl").write_text(text)

    save()
    for step in steps:
        results = [{**r, "call": call} for r in run_step(step, args.state_dir, deadline, log, frozenset(succeeded))]
        if any(r["status"] == "ok" for r in results):
            succeeded.add(step.name)
        status = results[0]["status"]
        log.line(
            f"[suite {time.monotonic() - start:4.0f} s] {step.name}: {status}"
            + (f" ({results[0]['reason']})" if results[0].get("reason") else "")
        )
        records.extend(results)
        save()
    from results_table import render

    (out / "RESULTS.md").write_text(render(earlier + records))
    log.line((out / "RESULTS.md").read_text())
    return 0


def _git_commit() -> str | None:
    """HEAD, or on the device (whose copy of the tree has no .git) the commit `make gpu-bundle` wrote."""
    try:
        return subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=10"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        written = REPO / ".peers" / "COMMIT"
        return written.read_text().strip() + " (as bundled)" if written.is_file() else None


def _gpu_name() -> str | None:
    """The GPU as nvidia-smi names it (the suite itself never starts JAX or PyTorch on the device)."""
    try:
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


def _versions() -> dict:
    import importlib.metadata

    found = {}
    for name in ("jax", "jaxlib", "flax", "optax", "transformers", "torch", "google-tunix"):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


if __name__ == "__main__":
    sys.exit(main())
