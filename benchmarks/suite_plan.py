"""What benchmarks/gpu_suite.py runs: the steps of each group, in order, with their time budgets.

A step is one process (so each frees the GPU for the next) or one in-process check, tagged with
its group and source (ours, a peer, the probe). `expect_s` is the time a step is planned to take
(the suite starts it only if that much of the call is left); `limit_s` is the most it may take.
The 4B budgets are estimates from the peers' published timings and the size of a 4B model's bf16 weights
(docs/benchmarks-gpu.md gives each step's reckoning); every run records the seconds each step really took
(`seconds` in results.jsonl), so that a plan can be checked against them.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import re
import sys
from pathlib import Path
from typing import Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]
GROUPS = ("probe", "parity", "generate", "prefill", "train", "shared-prefix", "extend", "rollout", "memory")
PRESETS = {  # named group lists; first-light: the first measurements on an accelerator, in priority order
    "first-light": ("probe", "parity", "generate", "prefill", "train", "shared-prefix"),
}
GENERATE_SHAPES = ((1, 512, 128), (64, 512, 256), (256, 512, 128))
TINY_GENERATE_SHAPES = ((2, 16, 16),)  # a 32-slot cache: whole blocks for the Pallas decode kernel
BFCL_SHAPE, BFCL_GROUP = (64, 6144, 256), 16  # 4 GRPO groups of 16 samples of a 6k-token BFCL prompt
TINY_BFCL_SHAPE, TINY_BFCL_GROUP = (4, 64, 8), 2
MODEL_4B = ["--preset", "qwen3-4b-instruct-2507"]
TINY_MODEL = [
    "--preset",
    "tiny",
    *[
        f"--model-config={item}"
        for item in (
            "hidden_size=128",
            "intermediate_size=256",
            "num_heads=4",
            "num_kv_heads=2",
            "head_dim=32",
            "vocab_size=1000",
        )
    ],
]
SHARED_PREFIX_FLAG = "--shared-prefix"

# step key → (expect_s, limit_s) for Qwen3-4B on one H100/H200, and for the tiny CPU dry run
BUDGETS_4B = {
    "probe": (25, 90),
    "hf reference": (75, 200),
    "ours parity": (120, 300),
    "ours generate": (110, 300),
    "tunix": (130, 300),
    "tokens": (2, 60),
    "ours prefill": (40, 150),
    "hf prefill+train": (50, 200),
    "hf prefill": (35, 150),
    "hf train": (40, 150),
    "ours train": (90, 300),
    "shared-prefix": (180, 400),
    "extend": (60, 300),
    "rollout": (300, 540),
    "memory": (60, 300),
}
BUDGETS_TINY = {key: (10, 180) for key in BUDGETS_4B}


@dataclasses.dataclass
class Step:
    name: str
    group: str
    source: str  # "ours", "tunix", "hf", "probe", "check"
    variants: list[list[str]]  # argv alternatives, tried in order until one succeeds
    expect_s: float  # planned seconds: started only if this much of the call is left
    limit_s: float  # the most it may run (per variant)
    env: dict = dataclasses.field(default_factory=dict)
    results_file: str | None = None  # a file (in the step's folder) the step writes JSON lines to
    skip_reason: str | None = None
    requires: tuple[str, ...] = ()  # steps that must have succeeded (in this call or earlier on this machine)
    check: Callable[[Path], list[dict]] | None = None  # an in-process step: (state dir) → records


def envtune(*args: str) -> list[str]:
    return [sys.executable, "-m", "envtune_jax.cli.main", "bench", *args]


def script(name: str, *args: str) -> list[str]:
    return [sys.executable, str(REPO / "benchmarks" / name), *args]


def step_dir(state_dir: Path, name: str) -> Path:
    """The scratch folder of a step on the machine that runs it (emptied before each run of the step)."""
    return state_dir / re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def shared_prefix_option() -> tuple[bool, bool] | None:
    """(present, takes a value) for `envtune bench generate --shared-prefix`, read from its --help; None while
    it has no such option (or the help cannot be read)."""
    import os
    import subprocess

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    try:
        done = subprocess.run(
            [sys.executable, "-m", "envtune_jax.cli.main", "bench", "generate", "--help"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return parse_shared_prefix_help(done.stdout) if done.returncode == 0 else None


def parse_shared_prefix_help(help_text: str) -> tuple[bool, bool] | None:
    found = re.search(re.escape(SHARED_PREFIX_FLAG) + r"(?![\w-])(?:[ =]([A-Z][A-Z_]*))?", help_text)
    return None if found is None else (True, found.group(1) is not None)


def plan(
    groups, tiny: bool, peers: Path, state_dir: Path, rollout_overrides=(), generate_shapes=None, shared_prefix=None
) -> list[Step]:
    """The steps of the chosen groups, in GROUPS order (`generate_shapes`: (B, P, N) triples replacing the
    defaults; `shared_prefix`: what shared_prefix_option() says, asked only if that group is chosen)."""
    budgets = BUDGETS_TINY if tiny else BUDGETS_4B
    model = TINY_MODEL if tiny else MODEL_4B
    random = [*model, "--random-weights"]
    steps: list[Step] = []

    def add(name, group, source, variants, key, **fields):
        expect, limit = budgets[key]
        steps.append(Step(name, group, source, variants, expect, limit, **fields))

    def peer(name: str) -> tuple[list[str], str | None]:
        path = peers / name
        return [sys.executable, str(path)], (None if path.is_file() else f"{path} not found (make gpu-bundle)")

    if "probe" in groups:
        size = ["--copy-mib", "32", "--matmul-size", "512"] if tiny else []
        add("device probe", "probe", "probe", [envtune("probe", *size)], "probe")
    if "parity" in groups:
        shape = (
            ["--batch", "2", "--prompt-len", "16", "--new-tokens", "16"]
            if tiny
            else ["--batch", "2", "--prompt-len", "256", "--new-tokens", "64"]
        )
        where = ["--dir", str(state_dir / ("parity-tiny" if tiny else "parity-4b")), *model, *shape]
        add("hf reference", "parity", "hf", [script("hf_parity.py", "hf", *where)], "hf reference")
        attention = "reference,xla" if tiny else "reference,cudnn"
        add(
            "ours parity",
            "parity",
            "ours",
            [script("hf_parity.py", "ours", *where, "--attention", attention)],
            "ours parity",
            requires=("hf reference",),
        )
    shapes = list(generate_shapes or (TINY_GENERATE_SHAPES if tiny else GENERATE_SHAPES))
    shapes_arg = ",".join(f"{b}x{p}x{n}" for b, p, n in shapes)
    if "generate" in groups:
        kernels = ("reference", "pallas")
        for kernel in kernels:
            if kernel == "pallas":
                argv, missing = peer("peer_tunix_sampler.py")
                env = {"CONFIGS": shapes_arg, "FALLBACK": "0", **({"TINY": "1"} if tiny else {})}
                add(
                    "tunix sampler",
                    "generate",
                    "tunix",
                    [argv],
                    "tunix",
                    env=env,
                    results_file="results.jsonl",
                    skip_reason=missing or _missing_module("tunix", "google-tunix wheel (make gpu-bundle)"),
                )
            tokens = step_dir(state_dir, f"ours generate {kernel}") / "tokens.npz"
            add(
                f"ours generate {kernel}",
                "generate",
                "ours",
                [
                    envtune(
                        "generate",
                        *random,
                        "--shapes",
                        shapes_arg,
                        "--repeats",
                        "3",
                        "--decode-attention",
                        kernel,
                        "--tokens-out",
                        str(tokens),
                    )
                ],
                "ours generate",
            )
        add("pallas vs reference tokens", "generate", "check", [], "tokens", check=compare_decode_tokens)
    if "prefill" in groups:
        b, p = (2, 64) if tiny else (8, 2048)
        attentions = ("xla",) if tiny else ("cudnn", "xla")
        add(
            f"ours prefill {b}x{p} {attentions[0]}",
            "prefill",
            "ours",
            [
                envtune(
                    "prefill",
                    *random,
                    "--batch",
                    str(b),
                    "--prompt-len",
                    str(p),
                    "--chunk",
                    str(p),
                    "--attention",
                    attentions[0],
                )
            ],
            "ours prefill",
        )
    if "prefill" in groups or "train" in groups:
        parts = [g for g in ("prefill", "train") if g in groups]
        argv = script(
            "peer_hf.py", "--parts", ",".join(parts), *(["--tiny", *TINY_MODEL, "--repeats", "1"] if tiny else [])
        )
        add(f"hf transformers {'+'.join(parts)}", parts[0], "hf", [argv], f"hf {'+'.join(parts)}")
    if "train" in groups:
        b, length = (2, 64) if tiny else (8, 2048)
        common = [*random, "--batch", str(b), "--seq-len", str(length), "--remat", "full", "--steps", "3"]
        add(
            f"ours train {b}x{length} remat full",
            "train",
            "ours",
            [envtune("train", *common, "--attention", a) for a in (("reference",) if tiny else ("cudnn", "xla"))],
            "ours train",
        )
    if "prefill" in groups and not tiny:
        add(
            "ours prefill 8x2048 xla",
            "prefill",
            "ours",
            [
                envtune(
                    "prefill", *random, "--batch", "8", "--prompt-len", "2048", "--chunk", "2048", "--attention", "xla"
                )
            ],
            "ours prefill",
        )
    if "shared-prefix" in groups:
        steps += shared_prefix_steps(tiny, random, budgets, shared_prefix)
    if "extend" in groups:
        b, context, tail, new_prompt, chunk = (4, 32, 8, 64, 16) if tiny else (16, 2048, 128, 4096, 512)
        shape = [
            "--batch",
            str(b),
            "--context",
            str(context),
            "--tail",
            str(tail),
            "--prompt-len",
            str(new_prompt),
            "--chunk",
            str(chunk),
        ]
        add(
            f"ours extend round {b} slots",
            "extend",
            "ours",
            [
                envtune("extend", *random, *shape, "--attention", a)
                for a in (("reference",) if tiny else ("cudnn", "reference"))
            ],
            "extend",
        )
    if "rollout" in groups:
        steps += rollout_steps(tiny, budgets, list(rollout_overrides))
    if "memory" in groups:
        steps += memory_steps(tiny, budgets)
    return steps


def shared_prefix_steps(tiny: bool, random: list[str], budgets: dict, option) -> list[Step]:
    """Decode at BFCL shapes with and without a shared prompt per group, in one process: `envtune bench generate
    --shared-prefix G` measures both on the same prompts (one JSON line each, the shared one with its ratios to
    the unshared). Only once `envtune bench generate` has the option (the suite asks its --help), else one
    skipped step saying so."""
    (b, p, n), group = (TINY_BFCL_SHAPE, TINY_BFCL_GROUP) if tiny else (BFCL_SHAPE, BFCL_GROUP)
    expect, limit = budgets["shared-prefix"]
    name = f"ours generate BFCL {b}x{p}+{n} shared prefix"
    if option is None:
        return [
            Step(
                name,
                "shared-prefix",
                "ours",
                [],
                expect,
                limit,
                skip_reason=f"`envtune bench generate` has no {SHARED_PREFIX_FLAG} option yet",
            )
        ]
    _, takes_value = option
    argv = envtune(
        "generate",
        *random,
        "--batch",
        str(b),
        "--prompt-len",
        str(p),
        "--new-tokens",
        str(n),
        "--repeats",
        "1" if tiny else "3",
        *([SHARED_PREFIX_FLAG, str(group)] if takes_value else [SHARED_PREFIX_FLAG]),
    )
    return [Step(f"{name} {group} and unshared", "shared-prefix", "ours", [argv], expect, limit)]


def rollout_steps(tiny: bool, budgets: dict, overrides: list[str]) -> list[Step]:
    recipe = REPO / "configs/recipes" / ("tiny_cpu.yaml" if tiny else "qwen3_4b_instruct_2507.yaml")
    base = ["data.source=package", "sampler.batch_size=1"] if tiny else ROLLOUT_4B_ONE_GPU
    counts = (
        ["--prompts", "1", "--samples", "1", "--iterations", "1"]
        if tiny
        else ["--prompts", "2", "--samples", "16", "--iterations", "2"]
    )
    # the recipe's cuDNN attention also serves the cached (decode/extend) attention, with a dense mask
    # bias there; if cuDNN refuses those shapes, fall back to XLA's attention, then the reference
    attention = [[]] if tiny else [[], ["model.attention_impl=xla"], ["model.attention_impl=reference"]]
    expect, limit = budgets["rollout"]
    return [
        Step(
            "ours rollout",
            "rollout",
            "ours",
            [envtune("rollout", "--recipe", str(recipe), *counts, *base, *overrides, *a) for a in attention],
            expect,
            limit,
        )
    ]


def memory_steps(tiny: bool, budgets: dict) -> list[Step]:
    preset = ["--preset", "tiny"] if tiny else MODEL_4B
    dtype = ["--dtype", "float32", "--cache-dtype", "float32", "--memory-gb", "0.1"] if tiny else []
    contexts = (64,) if tiny else (8192, 32768)
    expect, limit = budgets["memory"]
    steps = [
        Step(
            f"ours memory decode fit {context}",
            "memory",
            "ours",
            [
                envtune(
                    "memory",
                    *preset,
                    "--program",
                    "decode",
                    "--context",
                    str(context),
                    "--fit",
                    "--max-batch",
                    "16" if tiny else "512",
                    *dtype,
                )
            ],
            expect,
            limit,
        )
        for context in contexts
    ]
    for param_dtype in ("float32",) if tiny else ("bfloat16", "float32"):
        extra = ["--memory-gb", "1"] if tiny else []
        steps.append(
            Step(
                f"ours memory train fit {contexts[0]} {param_dtype} weights",
                "memory",
                "ours",
                [
                    envtune(
                        "memory",
                        *preset,
                        "--program",
                        "train",
                        "--context",
                        str(contexts[0]),
                        "--param-dtype",
                        param_dtype,
                        "--fit",
                        "--max-batch",
                        "4" if tiny else "64",
                        *extra,
                    )
                ],
                expect,
                limit,
            )
        )
    return steps


# The 4B recipe fitted to one 80 GB GPU (see README "Memory arithmetic"): bf16 weights and no KL
# reference copy (the fp32 training state alone is 72 GB; this one is ~40 GB with fp32 Adam moments),
# 16 decode slots of ≤ 8,192 tokens (≤ 19 GB of KV cache), short random-weight steps.
ROLLOUT_4B_ONE_GPU = [
    "model.ckpt=null",
    "model.preset=qwen3-4b-instruct-2507",
    "model.param_dtype=bfloat16",
    "loss.kl_coef=0.0",
    "data.source=package",
    "sampler.batch_size=16",
    "sampler.max_cache_len=8192",
    "rollout.max_new_tokens_per_step=256",
    "rollout.max_context_tokens=8192",
    "rollout.max_response_tokens=4096",
    "train_step.micro_batch_size=2",
]


def compare_decode_tokens(state_dir: Path) -> list[dict]:
    """Greedy tokens of the Pallas decode kernel against the einsum's, per shape (same weights and prompts):
    rows identical, tokens equal, and the mean position of each row's first difference."""
    files = {
        kernel: step_dir(state_dir, f"ours generate {kernel}") / "tokens.npz" for kernel in ("reference", "pallas")
    }
    missing = [str(path) for path in files.values() if not path.is_file()]
    if missing:
        raise FileNotFoundError(f"no tokens from both decode attentions on this machine: {', '.join(missing)}")
    with np.load(files["reference"]) as reference, np.load(files["pallas"]) as pallas:
        records = []
        for key in sorted(set(reference.files) & set(pallas.files)):
            ref_bn, ours_bn = reference[key], pallas[key]
            differ_bn = ref_bn != ours_bn
            first_b = np.where(differ_bn.any(axis=1), differ_bn.argmax(axis=1), ref_bn.shape[1])
            b, p, n = (int(v) for v in key.split("x"))
            records.append(
                {
                    "benchmark": "decode_tokens",
                    "batch": b,
                    "prompt_len": p,
                    "new_tokens": n,
                    "rows_identical": int((first_b == n).sum()),
                    "rows": b,
                    "tokens_equal_fraction": float(1 - differ_bn.mean()),
                    "mean_first_difference": float(first_b.mean()),
                }
            )
    if not records:
        raise ValueError("the two token files share no shape")
    return records


def _missing_module(name: str, what: str) -> str | None:
    return None if importlib.util.find_spec(name) is not None else f"{name} not importable: install the {what}"
