"""Our benchmarks and the peers', side by side in one device call, written up as a Markdown table.

Run on a GPU machine (docs/benchmarks.md; `make gpu-bundle` first puts the peer scripts in .peers/ and the
wheels a GPU image may lack in .whl/), one group or several per call:

    python benchmarks/gpu_suite.py --groups generate --out $OUT --commit <sha>

Groups, each ours next to its peer (same shapes, Qwen3-4B-Instruct-2507, random bf16 weights):
- probe:    the device's bf16 matmul rate and copy bandwidth (the peer scripts' jax_probe.py)
- generate: `envtune bench generate` at (B, P, N) = (1, 512, 128), (64, 512, 256), (256, 512, 128)
            and the Tunix sampler (peer_tunix_sampler.py) at the same shapes
- decode-kernel: `envtune bench generate --decode-attention pallas` at the generate shapes (JAX's Pallas
            GPU decode kernel instead of the einsum; no peer step: the generate group's Tunix figures
            are the comparison)
- prefill:  `envtune bench prefill` 8 x 2048 (cuDNN and reference attention) and HF transformers
            (peer_hf_qwen3.py, which also times HF generation at the generate shapes), then
            `envtune bench extend` (an evaluation round: compacted extends vs all-slot calls)
- train:    `envtune bench train` 8 x 2048 with full remat and HF's fwd+bwd with gradient
            checkpointing (peer_hf_train.py)
- rollout:  `envtune bench rollout`: GRPO iterations of the 4B recipe on the real BFCL environments
- memory:   `envtune bench memory --fit`: the largest decode batch at 8k and 32k tokens of context, and the
            largest training micro-batch of 8k-token rows (bf16 and fp32 weights), from XLA's buffers
Every step is its own process (each frees the GPU for the next) with a time limit; a step that
fails or times out is recorded with the end of its log and the next variant, if any, is tried.
Results: OUT/results.jsonl (every record, tagged with its step) and OUT/RESULTS.md
(benchmarks/results_table.py; several calls' results.jsonl merge into one table). `--tiny` runs the
same steps with tiny shapes on any machine (CPU), skipping the peers that need CUDA.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GROUPS = ("probe", "generate", "decode-kernel", "prefill", "train", "rollout", "memory")
GENERATE_SHAPES = ((1, 512, 128), (64, 512, 256), (256, 512, 128))
TINY_GENERATE_SHAPES = ((1, 16, 8), (4, 16, 8))
TINY_KERNEL_SHAPES = ((1, 16, 16), (4, 16, 16))  # caches of 32 slots: whole 32-slot blocks for the decode kernel
TINY_MODEL_CONFIG = [f"--model-config={item}" for item in (
    "hidden_size=128", "intermediate_size=256", "num_heads=4", "num_kv_heads=2", "head_dim=32", "vocab_size=1000")]
MEM_FRACTION = "0.92"  # JAX would preallocate 75% of the GPU; the peers were measured with more


@dataclasses.dataclass
class Step:
    name: str
    group: str
    source: str  # "ours", "tunix", "hf", "probe"
    variants: list[list[str]]  # argv alternatives, tried in order until one succeeds
    timeout_s: int
    env: dict = dataclasses.field(default_factory=dict)
    results_file: str | None = None  # a file (under the step's folder) the step writes JSON lines to
    skip_reason: str | None = None


def envtune(*args: str) -> list[str]:
    return [sys.executable, "-m", "envtune_jax.cli.main", "bench", *args]


def plan(groups, tiny: bool, peers: Path, rollout_overrides: list[str], generate_shapes=None) -> list[Step]:
    """The steps of the chosen groups, in order (`generate_shapes`: (B, P, N) triples replacing the defaults)."""
    steps: list[Step] = []
    model = ["--preset", "qwen3-4b-instruct-2507", "--random-weights"]
    if tiny:  # the Tunix peer's own tiny shapes (its TINY=1 mode), so the CPU smoke run compares like with like
        model = ["--preset", "tiny", "--random-weights", *TINY_MODEL_CONFIG]
    no_cuda = "needs CUDA (HF peer)" if tiny else None

    def peer(script: str) -> tuple[list[str], str | None]:
        path = peers / script
        return [sys.executable, str(path)], (None if path.is_file() else f"{path} not found (make gpu-bundle)")

    if "probe" in groups:
        argv, missing = peer("jax_probe.py")
        steps.append(Step("device probe", "probe", "probe", [argv], 300,
                          skip_reason=missing or ("an 8192^3 matmul: too slow off GPU" if tiny else None)))
    shapes = generate_shapes or (TINY_GENERATE_SHAPES if tiny else GENERATE_SHAPES)
    if "generate" in groups:
        for b, p, n in shapes:
            steps.append(Step(f"ours generate {b}x{p}+{n}", "generate", "ours",
                              [envtune("generate", *model, "--batch", str(b), "--prompt-len", str(p),
                                       "--new-tokens", str(n), "--repeats", "3")], 300))
        argv, missing = peer("peer_tunix_sampler.py")
        env = {"CONFIGS": ",".join(f"{b}x{p}x{n}" for b, p, n in shapes), "FALLBACK": "0"}
        if tiny:
            env["TINY"] = "1"
        steps.append(Step("tunix sampler", "generate", "tunix", [argv], 420, env=env, results_file="results.jsonl",
                          skip_reason=missing or _missing_module("tunix", "google-tunix wheel (make gpu-bundle)")))
    if "decode-kernel" in groups:
        for b, p, n in generate_shapes or (TINY_KERNEL_SHAPES if tiny else GENERATE_SHAPES):
            steps.append(Step(f"ours generate {b}x{p}+{n} pallas decode", "decode-kernel", "ours",
                              [envtune("generate", *model, "--batch", str(b), "--prompt-len", str(p),
                                       "--new-tokens", str(n), "--repeats", "3", "--decode-attention", "pallas")],
                              300))
    if "prefill" in groups:
        b, p, chunk = (2, 64, 64) if tiny else (8, 2048, 2048)
        for attention in ("cudnn", "reference") if not tiny else ("reference",):
            steps.append(Step(f"ours prefill {b}x{p} {attention}", "prefill", "ours",
                              [envtune("prefill", *model, "--batch", str(b), "--prompt-len", str(p),
                                       "--chunk", str(chunk), "--attention", attention)], 240))
        argv, missing = peer("peer_hf_qwen3.py")
        steps.append(Step("hf transformers prefill+generate", "prefill", "hf", [argv], 420,
                          skip_reason=missing or no_cuda))
        b, context, tail, new_prompt, chunk = (4, 32, 8, 64, 16) if tiny else (16, 2048, 128, 4096, 512)
        shape = ["--batch", str(b), "--context", str(context), "--tail", str(tail), "--prompt-len", str(new_prompt),
                 "--chunk", str(chunk)]
        steps.append(Step(f"ours extend round {b} slots", "prefill", "ours",
                          [envtune("extend", *model, *shape, "--attention", a)
                           for a in (("reference",) if tiny else ("cudnn", "reference"))], 300))
    if "train" in groups:
        b, length = (2, 64) if tiny else (8, 2048)
        common = [*model[:3], "--batch", str(b), "--seq-len", str(length), "--remat", "full", "--steps", "3"]
        variants = [envtune("train", *common, "--attention", a) for a in (("reference",) if tiny else ("cudnn", "xla"))]
        steps.append(Step(f"ours train {b}x{length} remat full", "train", "ours", variants, 420))
        argv, missing = peer("peer_hf_train.py")
        steps.append(Step("hf transformers train", "train", "hf", [argv], 300, skip_reason=missing or no_cuda))
    if "rollout" in groups:
        recipe = REPO / "configs/recipes" / ("tiny_cpu.yaml" if tiny else "qwen3_4b_instruct_2507.yaml")
        base = ["data.source=package", "sampler.batch_size=1"] if tiny else ROLLOUT_4B_ONE_GPU
        counts = ["--prompts", "1", "--samples", "1", "--iterations", "1"] if tiny else \
            ["--prompts", "2", "--samples", "16", "--iterations", "2"]
        # the recipe's cuDNN attention also serves the cached (decode/extend) attention, with a dense mask
        # bias there; if cuDNN refuses those shapes, fall back to XLA's attention, then the reference
        attention = [[]] if tiny else [[], ["model.attention_impl=xla"], ["model.attention_impl=reference"]]
        steps.append(Step("ours rollout", "rollout", "ours",
                          [envtune("rollout", "--recipe", str(recipe), *counts, *base, *rollout_overrides, *a)
                           for a in attention], 540))
    if "memory" in groups:
        preset_flags = ["--preset", "tiny"] if tiny else ["--preset", "qwen3-4b-instruct-2507"]
        dtype = ["--dtype", "float32", "--cache-dtype", "float32", "--memory-gb", "0.1"] if tiny else []
        contexts = (64,) if tiny else (8192, 32768)
        for context in contexts:
            steps.append(Step(f"ours memory decode fit {context}", "memory", "ours",
                              [envtune("memory", *preset_flags, "--program", "decode", "--context", str(context),
                                       "--fit", "--max-batch", "16" if tiny else "512", *dtype)], 300))
        train_dtypes = ("float32",) if tiny else ("bfloat16", "float32")
        for param_dtype in train_dtypes:
            extra = ["--memory-gb", "1"] if tiny else []
            steps.append(Step(f"ours memory train fit {contexts[0]} {param_dtype} weights", "memory", "ours",
                              [envtune("memory", *preset_flags, "--program", "train", "--context", str(contexts[0]),
                                       "--param-dtype", param_dtype, "--fit", "--max-batch", "4" if tiny else "64",
                                       *extra)], 300))
    return steps


# The 4B recipe fitted to one 80 GB GPU (see docs/launching.md, "Memory arithmetic"): bf16 weights and no KL
# reference copy (the fp32 training state alone is 72 GB; this one is ~40 GB with fp32 Adam moments),
# 16 decode slots of ≤ 8,192 tokens (≤ 19 GB of KV cache), short random-weight steps.
ROLLOUT_4B_ONE_GPU = [
    "model.ckpt=null", "model.preset=qwen3-4b-instruct-2507", "model.param_dtype=bfloat16", "loss.kl_coef=0.0",
    "data.source=package", "sampler.batch_size=16", "sampler.max_cache_len=8192", "sampler.max_new_tokens=256",
    "rollout.max_new_tokens_per_step=256", "rollout.max_context_tokens=8192", "rollout.max_response_tokens=4096",
    "train_step.micro_batch_size=2",
]


def _missing_module(name: str, what: str) -> str | None:
    import importlib.util

    return None if importlib.util.find_spec(name) is not None else f"{name} not importable: carry the {what}"


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


def run_step(step: Step, out: Path, deadline: float) -> list[dict]:
    """Runs the step's variants until one succeeds; returns its records (or one error record)."""
    tag = {"step": step.name, "group": step.group, "source": step.source}
    if step.skip_reason:
        return [{**tag, "status": "skipped", "reason": step.skip_reason}]
    folder = out / "steps" / step.name.replace(" ", "_").replace("+", "p")
    folder.mkdir(parents=True, exist_ok=True)
    failures = []
    for index, argv in enumerate(step.variants):
        remaining = deadline - time.monotonic()
        if remaining < 30:
            return [{**tag, "status": "skipped", "reason": "the call's time ran out", "failures": failures}]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "XLA_PYTHON_CLIENT_MEM_FRACTION": MEM_FRACTION,
               "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
               "OUT": str(folder), **step.env}
        log = folder / f"variant{index}.log"
        start = time.monotonic()
        print(f"[suite] {step.name} (variant {index}): {' '.join(argv[1:])}", flush=True)
        try:
            done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True,
                                  timeout=min(step.timeout_s, remaining - 10))
            code, stdout, stderr = done.returncode, done.stdout, done.stderr
        except subprocess.TimeoutExpired as exc:
            code, stdout, stderr = "timeout", _text(exc.stdout), _text(exc.stderr)
        seconds = time.monotonic() - start
        log.write_text(f"$ {' '.join(argv)}\n--- stdout\n{stdout}\n--- stderr\n{stderr}")
        records = parse_json_lines(stdout)
        if step.results_file and (folder / step.results_file).is_file():
            records = parse_json_lines((folder / step.results_file).read_text())
        if code == 0 and records:
            variant = {"variant": index, "argv": argv[1:], "seconds": seconds, "failures": failures}
            return [{**tag, **variant, "status": "ok", **record} for record in records]
        failures.append({"variant": index, "argv": argv[1:], "returncode": code, "seconds": seconds,
                         "stderr_tail": stderr[-1500:], "records": records})
        print(f"[suite] {step.name} variant {index} failed ({code}); log {log}", flush=True)
    partial = failures[-1]["records"] if failures else []
    return [{**tag, "status": "failed", "failures": failures}] + [{**tag, "status": "partial", **r} for r in partial]


def _text(value) -> str:
    if value is None:
        return ""
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--groups", default=",".join(GROUPS), help=f"comma-separated, from {', '.join(GROUPS)}")
    parser.add_argument("--out", default=os.environ.get("OUT", "benchmarks/out"), help="results folder (default $OUT)")
    parser.add_argument("--peers", default=str(REPO / ".peers"), help="folder holding the peer scripts")
    parser.add_argument("--commit", default=None, help="the commit measured (default: git HEAD, else .peers/COMMIT)")
    parser.add_argument("--budget-s", type=float, default=540, help="stop starting steps after this many seconds")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes on any machine (CPU smoke run)")
    parser.add_argument("--generate-shapes", default=None, metavar="BxPxN,...",
                        help="generate group shapes (default: 1x512x128,64x512x256,256x512x128), e.g. to split them "
                             "over two calls when one runs out of time")
    parser.add_argument("--rollout-override", action="append", default=[], metavar="key=value",
                        help="extra recipe override for the rollout group (repeatable)")
    args = parser.parse_args(argv)
    groups = [g for g in args.groups.split(",") if g]
    unknown = sorted(set(groups) - set(GROUPS))
    if unknown:
        parser.error(f"unknown group(s) {unknown}; choose from {', '.join(GROUPS)}")
    shapes = None
    if args.generate_shapes:
        try:
            shapes = [tuple(int(v) for v in item.split("x")) for item in args.generate_shapes.split(",") if item]
        except ValueError:
            shapes = []
        if not shapes or any(len(shape) != 3 for shape in shapes):
            parser.error(f"--generate-shapes {args.generate_shapes!r}: expected BxPxN[,BxPxN...]")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + args.budget_s
    meta = {"step": "meta", "group": "meta", "source": "suite", "status": "ok", "groups": groups, "tiny": args.tiny,
            "commit": args.commit or _git_commit(), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "python": sys.version.split()[0], **_versions()}
    records = [meta]
    for step in plan(groups, args.tiny, Path(args.peers), args.rollout_override, shapes):
        records.extend(run_step(step, out, deadline))
        with open(out / "results.jsonl", "w") as f:  # rewritten after every step: nothing lost on a timeout
            f.writelines(json.dumps(r) + "\n" for r in records)
    from results_table import render

    (out / "RESULTS.md").write_text(render(records))
    print((out / "RESULTS.md").read_text(), flush=True)
    return 0


def _git_commit() -> str | None:
    """HEAD, or on the device (whose copy of the tree has no .git) the commit `make gpu-bundle` wrote."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        written = REPO / ".peers" / "COMMIT"
        return written.read_text().strip() + " (as bundled)" if written.is_file() else None


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
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
