"""benchmarks/gpu_suite.py (ours and the peers in device calls under a deadline), its plan (suite_plan.py),
benchmarks/results_table.py (RESULTS.md), and a dry run of both device calls of
benchmarks/gpu_first_light.sh at tiny shapes on CPU (the peers absent, so their steps are skipped)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import gpu_suite  # noqa: E402
import hf_parity  # noqa: E402
import results_table  # noqa: E402
import suite_plan  # noqa: E402

META = {
    "step": "meta",
    "group": "meta",
    "source": "suite",
    "status": "ok",
    "groups": ["generate"],
    "tiny": False,
    "commit": "abc1234",
    "date": "2026-11-24T10:00:00+00:00",
    "python": "3.12.3",
    "jax": "0.11.2",
    "call": "c1",
}
H100 = "NVIDIA H100 80GB HBM3"


def _ok(source: str, call: str = "c1", **fields) -> dict:
    return {
        "step": f"{source} step {fields.get('benchmark') or fields.get('what') or fields.get('kind')}",
        "group": "g",
        "source": source,
        "status": "ok",
        "call": call,
        **fields,
    }


def test_table_prints_ratios_to_the_peers_and_the_goals():
    records = [
        META,
        _ok(
            "ours",
            benchmark="generate",
            batch=64,
            prompt_len=512,
            new_tokens=256,
            decode_tok_s=12_000.0,
            end_to_end_tok_s=9_500.0,
            ms_per_decode_step=5.33,
            decode_fraction_of_limit=0.91,
            compile_s={"prefill": 4.0, "decode": 20.0},
            device_kind=H100,
        ),
        dict(
            _ok(
                "ours",
                benchmark="generate",
                batch=64,
                prompt_len=512,
                new_tokens=256,
                decode_tok_s=13_073.0,
                end_to_end_tok_s=10_000.0,
                ms_per_decode_step=4.9,
                decode_fraction_of_limit=0.99,
                decode_attention="pallas",
                decode_kernel_blocks=[128, 3],
                compile_s={"prefill": 4.0, "decode": 25.0},
                device_kind=H100,
            ),
            step="ours generate pallas",
        ),
        _ok("tunix", kind="split", B=64, P=512, N=256, decode_only_tok_per_s=8_715.0, decode_ms_per_step=7.34),
        _ok("tunix", kind="e2e", B=64, P=512, N=256, tok_per_s_median=6_261.0),
        _ok("hf", what="hf_generate", batch=64, prompt=512, new=256, out_tok_s=581.0),
        _ok(
            "ours",
            benchmark="prefill",
            batch=8,
            prompt_len=2048,
            attention="cudnn",
            tok_s=75_000.0,
            model_tflops_per_s=603.0,
            fraction_of_limit=0.76,
            device_kind=H100,
        ),
        _ok("hf", what="hf_prefill", batch=8, seq=2048, tok_s=46_972.0, tflops=378.0),
        _ok(
            "ours",
            benchmark="extend",
            batch=16,
            context=2048,
            tail=128,
            prompt_len=4096,
            attention="cudnn",
            compacted={"round_s": 0.25, "token_rows": 6144},
            all_slots={"round_s": 1.5, "token_rows": 65536},
            speedup=6.0,
            fraction_of_matmul_rate=0.5,
            all_slots_fraction_of_matmul_rate=0.0833,
        ),
        _ok(
            "ours",
            benchmark="train",
            batch=8,
            seq_len=2048,
            remat="full",
            attention="cudnn",
            tokens_per_s=16_000.0,
            model_tflops_per_s=386.0,
            mfu=0.45,
            peak_memory_bytes=60e9,
        ),
        _ok(
            "hf", what="hf_train_fwd_bwd_remat", batch=8, seq=2048, tok_s=11_074.0, model_tflops=267.0, peak_mem_gb=50.0
        ),
        _ok(
            "ours",
            benchmark="memory",
            program="decode",
            param_dtype="bfloat16",
            context=8192,
            largest_batch=212,
            tokens=212 * 8192,
            peak_bytes=70.1e9,
            argument_bytes=64.0e9,
            limit_bytes=70.2e9,
            remat=None,
        ),
        {
            "step": "ours rollout",
            "group": "rollout",
            "source": "ours",
            "status": "failed",
            "call": "c1",
            "failures": [{"returncode": 1, "output_tail": "Traceback...\nRESOURCE_EXHAUSTED: out of memory"}],
        },
    ]
    text = results_table.render(records)
    assert "No GPU figures" not in text
    generation = next(line for line in text.splitlines() if line.startswith("| 64, 512, 256 | reference |"))
    kernel_row = next(line for line in text.splitlines() if line.startswith("| 64, 512, 256 | pallas |"))
    assert "13,073 | 8,715 | 1.50x" in kernel_row and "99%" in kernel_row  # each decode attention its own row
    fallback = dict(records[2], decode_kernel_blocks=None)
    text_fallback = results_table.render([*records[:2], fallback])
    assert "| 64, 512, 256 | pallas asked, einsum ran (no block divides S) |" in text_fallback
    assert "12,000 | 8,715 | 1.38x" in generation  # decode-only, ours / Tunix
    assert "met (≥ 11,000)" in generation and "91%" in generation
    assert "9,500 | 6,261 | 581 | 1.52x | 16.35x | met (≥ 9,000)" in generation  # end-to-end vs Tunix and HF
    prefill = next(line for line in text.splitlines() if line.startswith("| 8 x 2048 | ours | cudnn"))
    assert "75,000 | 1.60x | 603 | 76%" in prefill and "met (≥ 70,000)" in prefill
    train = next(line for line in text.splitlines() if line.startswith("| 8 x 2048 | ours ("))
    extend = next(line for line in text.splitlines() if line.startswith("| 16, 2048, 128, 4096 |"))
    assert "| cudnn | 0.250 | 1.500 | 6.00x | 6,144 / 65,536 | 50% / 8% |" in extend
    assert "16,000 | 1.44x | met (≥ 1.3x)" in train and "386 | 45% | met (≥ 40%)" in train and "60.0" in train
    assert H100 in text and "abc1234" in text and "jax 0.11.2" in text
    assert "| decode loop (slots) | bfloat16 | 8,192 | 212 | 1,736,704 | 70.10 | 64.00 | 70.20 |" in text
    assert "- ours rollout: failed — exit 1: RESOURCE_EXHAUSTED: out of memory" in text


def test_table_says_not_met_below_a_goal():
    records = [
        META,
        _ok(
            "ours",
            benchmark="prefill",
            batch=8,
            prompt_len=2048,
            attention="reference",
            tok_s=40_000.0,
            model_tflops_per_s=320.0,
            fraction_of_limit=0.41,
        ),
    ]
    assert "not met (≥ 70,000)" in results_table.render(records)


def test_table_keeps_each_steps_latest_run_and_marks_ratios_across_calls():
    """A step skipped for time in the first call and run in the second shows once, from the second; its ratio
    to a peer measured in the first call is marked †; the skip is not listed as a problem."""
    prefill = dict(
        step="ours prefill",
        group="prefill",
        source="ours",
        benchmark="prefill",
        batch=8,
        prompt_len=2048,
        attention="cudnn",
        tok_s=75_000.0,
        model_tflops_per_s=603.0,
        fraction_of_limit=0.76,
        device_kind=H100,
    )
    records = [
        META,
        {
            **prefill,
            "status": "skipped",
            "reason": "needs ~40 s, 12 s left in this call",
            "resumable": True,
            "call": "c1",
        },
        _ok("hf", what="hf_prefill", batch=8, seq=2048, tok_s=50_000.0, tflops=400.0),
        dict(META, call="c2"),
        {**prefill, "status": "ok", "call": "c2"},
    ]
    text = results_table.render(records)
    assert text.count("| 8 x 2048 | ours | cudnn") == 1 and "1.50x †" in text
    assert "needs ~40 s" not in text and "call c1" in text and "call c2" in text
    only_skipped = results_table.render(records[:2])
    assert "- ours prefill: skipped — needs ~40 s, 12 s left in this call (a later call can run it" in only_skipped


def test_shared_prefix_table_shows_both_engines_and_their_same_process_ratios():
    common = dict(
        group="shared-prefix",
        step="ours generate BFCL 64x6144+256 shared prefix 16 and unshared",
        batch=64,
        prompt_len=6144,
        new_tokens=256,
        decode_attention="reference",
        device_kind=H100,
    )
    unshared = _ok(
        "ours",
        benchmark="generate",
        shared_prefix=None,
        decode_tok_s=4_000.0,
        ms_per_decode_step=16.0,
        kv_bytes_read_per_step=60.4e9,
        kv_bytes_live_per_step=59.2e9,
        decode_fraction_of_limit=0.5,
        end_to_end_tok_s=2_000.0,
        peak_memory_bytes=70e9,
        **common,
    )
    shared = _ok(
        "ours",
        benchmark="generate",
        shared_prefix=16,
        decode_tok_s=12_000.0,
        ms_per_decode_step=5.33,
        kv_bytes_read_per_step=6.04e9,
        kv_bytes_live_per_step=4.83e9,
        decode_fraction_of_limit=0.6,
        end_to_end_tok_s=5_000.0,
        peak_memory_bytes=20e9,
        vs_unshared={
            "decode_speedup": 3.0,
            "end_to_end_speedup": 2.5,
            "kv_bytes_read_ratio": 10.0,
            "kv_bytes_live_ratio": 12.25,
            "rows_identical": 60,
            "rows": 64,
            "tokens_equal_fraction": 0.99,
        },
        **common,
    )
    text = results_table.render([META, shared, unshared])
    rows = [line for line in text.splitlines() if line.startswith("| 64, 6144, 256 |")]
    assert rows == [
        "| 64, 6144, 256 | per slot | reference | 4,000 | 16.00 | 60.40 (59.20) | 50% | 2,000 | 70.0 |",
        "| 64, 6144, 256 | once per 16 slots | reference | 12,000 | 5.33 | 6.04 (4.83) | 60% | 5,000 | 20.0 |",
    ]
    assert (
        "decode 3.00x, end-to-end 2.50x; KV bytes read per step 10.00x fewer (live 12.25x); greedy tokens: "
        "60 of 64 rows identical, 99.0% of tokens equal."
    ) in text


def test_parity_table_and_the_cpu_warning():
    logits = _ok(
        "ours",
        what="parity_logits",
        attention="reference",
        batch=2,
        prompt_len=256,
        new_tokens=64,
        rel_err_vs_hf_bf16=0.011,
        rel_err_vs_hf_fp32=0.007,
        hf_bf16_rel_err_vs_fp32=0.009,
        top1_vs_hf_bf16=0.97,
        top1_vs_hf_fp32=0.98,
        hf_bf16_top1_vs_fp32=0.97,
        logits_ok=True,
        device_kind="cpu",
    )
    greedy = _ok(
        "ours",
        what="parity_greedy",
        attention="reference",
        decode_attention="reference",
        batch=2,
        prompt_len=256,
        new_tokens=64,
        rows=[{"first_difference": 64}, {"first_difference": 40, "near_tie": True}],
        rows_identical=1,
        tokens_equal=100,
        tokens=128,
        greedy_ok=True,
        device_kind="cpu",
    )
    text = results_table.render([META, logits, greedy])
    assert "**No GPU figures" in text
    assert "| reference | 2 x 320 | 1.10e-02 | 7.00e-03 | 9.00e-03 | 97.0% | 98.0% | 97.0% | ok |" in text
    assert "1 of 2 rows identical" in text and "64, 40 (near-tie); ok." in text


def test_parse_json_lines_keeps_only_objects():
    text = 'compiling...\n{"a": 1}\n[1, 2]\n{"broken": \n  {"b": 2}  \n'
    assert gpu_suite.parse_json_lines(text) == [{"a": 1}, {"b": 2}]


def _step(name, variants, expect_s=0, limit_s=60, **fields):
    return suite_plan.Step(name, "g", "ours", variants, expect_s, limit_s, **fields)


def test_step_falls_back_to_the_next_variant_and_logs_every_line(tmp_path):
    step = _step(
        "fallback",
        [
            [sys.executable, "-c", "import sys; print('boom', file=sys.stderr); sys.exit(3)"],
            [sys.executable, "-c", "print('log line'); print('{\"x\": 1}')"],
        ],
    )
    log = gpu_suite.Log(tmp_path / "suite.log")
    (record,) = gpu_suite.run_step(step, tmp_path / "state", float("inf"), log)
    assert record["status"] == "ok" and record["x"] == 1 and record["variant"] == 1
    assert record["failures"][0]["returncode"] == 3 and "boom" in record["failures"][0]["output_tail"]
    text = (tmp_path / "suite.log").read_text()
    assert "boom" in text and "log line" in text and "fallback: exit 3" in text


def test_step_over_its_time_keeps_what_it_printed(tmp_path):
    script = "import time; print('{\"partial\": 1}', flush=True); time.sleep(30)"
    step = _step("slow", [[sys.executable, "-c", script]], limit_s=3)
    records = gpu_suite.run_step(step, tmp_path, float("inf"), gpu_suite.Log(None))
    assert records[0]["status"] == "failed" and records[0]["failures"][0]["returncode"] == "timeout"
    assert "resumable" not in records[0]  # its own limit: a later call would fail the same way
    assert records[1]["status"] == "partial" and records[1]["partial"] == 1


def test_deadline_skips_a_step_that_cannot_finish_and_stops_one_that_runs_past_it(tmp_path):
    never = _step("long", [[sys.executable, "-c", "raise SystemExit('must not start')"]], expect_s=100)
    deadline = time.monotonic() + 60
    (record,) = gpu_suite.run_step(never, tmp_path, deadline, gpu_suite.Log(None))
    assert record["status"] == "skipped" and record["resumable"] and "needs ~100 s" in record["reason"]
    sleeper = _step("sleeper", [[sys.executable, "-c", "import time; time.sleep(60)"]], expect_s=1, limit_s=300)
    start = time.monotonic()
    records = gpu_suite.run_step(sleeper, tmp_path, start + gpu_suite.DEADLINE_MARGIN_S + 3, gpu_suite.Log(None))
    assert time.monotonic() - start < 20
    assert records[0]["failures"][0]["returncode"] == "deadline" and records[0]["resumable"]


def test_a_step_whose_requirement_failed_is_skipped(tmp_path):
    step = _step("ours parity", [[sys.executable, "-c", "raise SystemExit(1)"]], requires=("hf reference",))
    (record,) = gpu_suite.run_step(step, tmp_path, float("inf"), gpu_suite.Log(None), frozenset())
    assert record["status"] == "skipped" and "needs hf reference" in record["reason"]


def test_resume_runs_what_has_no_result_and_what_it_requires():
    steps = [_step(name, [["x"]], requires=("a",) if name == "b" else ()) for name in "abcdef"]
    earlier = [
        {"step": "a", "status": "ok"},
        {"step": "b", "status": "skipped", "resumable": True},
        {"step": "c", "status": "ok"},
        {"step": "d", "status": "failed", "failures": []},
        {"step": "e", "status": "failed", "resumable": True},
    ]
    todo, done = gpu_suite.steps_to_run(steps, earlier, retry_failed=False)
    assert [s.name for s in todo] == ["a", "b", "e", "f"] and done == {"c"}  # a again: b needs it on this machine
    todo, _ = gpu_suite.steps_to_run(steps, earlier, retry_failed=True)
    assert [s.name for s in todo] == ["a", "b", "d", "e", "f"]


def test_first_light_plan_runs_the_issue_steps_in_order_at_4b_shapes(tmp_path):
    peers = tmp_path / "peers"
    peers.mkdir()
    (peers / "peer_tunix_sampler.py").write_text("")
    steps = suite_plan.plan(suite_plan.PRESETS["first-light"], tiny=False, peers=peers, state_dir=tmp_path / "s")
    assert [s.name for s in steps] == [
        "device probe",
        "hf reference",
        "ours parity",
        "ours generate reference",
        "tunix sampler",
        "ours generate pallas",
        "pallas vs reference tokens",
        "ours prefill 8x2048 cudnn",
        "hf transformers prefill+train",
        "ours train 8x2048 remat full",
        "ours prefill 8x2048 xla",
        "ours generate BFCL 64x6144+256 shared prefix",
    ]
    by_name = {s.name: s for s in steps}
    for kernel in ("reference", "pallas"):
        argv = by_name[f"ours generate {kernel}"].variants[0]
        assert argv[argv.index("--shapes") + 1] == "1x512x128,64x512x256,256x512x128"
        assert argv[argv.index("--decode-attention") + 1] == kernel and "qwen3-4b-instruct-2507" in argv
    assert by_name["tunix sampler"].env["CONFIGS"] == "1x512x128,64x512x256,256x512x128"
    parity = by_name["ours parity"].variants[0]
    assert parity[parity.index("--attention") + 1] == "reference,cudnn" and "256" in parity
    assert by_name["ours parity"].requires == ("hf reference",)
    train = by_name["ours train 8x2048 remat full"].variants
    assert [v[v.index("--attention") + 1] for v in train] == ["cudnn", "xla"]
    assert by_name["ours generate BFCL 64x6144+256 shared prefix"].skip_reason  # no such option yet
    skipped = {s.name for s in steps if s.skip_reason}
    assert skipped <= {"tunix sampler", "ours generate BFCL 64x6144+256 shared prefix"}
    assert all(s.limit_s >= 2 * s.expect_s for s in steps)  # a limit leaves room for a plan that was optimistic


@pytest.mark.parametrize("tiny", [False, True])
def test_every_planned_command_parses(tmp_path, tiny):
    """The 4B commands never run on CPU: each one's arguments must at least be what its parser accepts."""
    import peer_hf

    from envtune_jax.cli.main import build_parser

    steps = suite_plan.plan(list(suite_plan.GROUPS), tiny, tmp_path, tmp_path, shared_prefix=(True, True))
    option_exists = suite_plan.shared_prefix_option() is not None
    for step in steps:
        for argv in step.variants:
            if argv[1:3] == ["-m", "envtune_jax.cli.main"]:
                if "--shared-prefix" in argv and not option_exists:
                    argv = argv[: argv.index("--shared-prefix")]
                build_parser().parse_args(argv[3:])
            elif argv[1].endswith("hf_parity.py"):
                hf_parity.build_parser().parse_args(argv[2:])
            elif argv[1].endswith("peer_hf.py"):
                peer_hf.build_parser().parse_args(argv[2:])
            else:
                assert argv[1].endswith("peer_tunix_sampler.py"), argv


def test_shared_prefix_steps_turn_on_with_the_generate_option(tmp_path):
    assert suite_plan.parse_shared_prefix_help("  --shared-prefix G  slots per group") == (True, True)
    assert suite_plan.parse_shared_prefix_help("  --shared-prefix       store a group's prompt once") == (True, False)
    assert suite_plan.parse_shared_prefix_help("  --shared-prefixes N") is None
    assert suite_plan.parse_shared_prefix_help("  --batch BATCH") is None
    with_value = suite_plan.plan(["shared-prefix"], False, tmp_path, tmp_path, shared_prefix=(True, True))
    assert [s.name for s in with_value] == ["ours generate BFCL 64x6144+256 shared prefix 16 and unshared"]
    (argv,) = with_value[0].variants  # one process measures both engines on the same prompts
    assert argv[-2:] == ["--shared-prefix", "16"]
    assert [argv[argv.index(flag) + 1] for flag in ("--batch", "--prompt-len", "--new-tokens")] == ["64", "6144", "256"]
    bare = suite_plan.plan(["shared-prefix"], False, tmp_path, tmp_path, shared_prefix=(True, False))
    assert bare[0].variants[0][-1] == "--shared-prefix"
    help_text = subprocess.run(
        [sys.executable, "-m", "envtune_jax.cli.main", "bench", "generate", "--help"],
        capture_output=True,
        text=True,
        cwd=BENCHMARKS.parent,
        check=True,
    ).stdout
    assert (suite_plan.shared_prefix_option() is not None) == ("--shared-prefix" in help_text)


def test_gpu_bundle_needs_the_folder_of_the_peer_script(tmp_path):
    """`make gpu-bundle` points nowhere outside the repository by itself: PEER_SCRIPTS must name the folder of
    the Tunix peer's script, else one line says so before anything is copied or downloaded."""
    env = {k: v for k, v in os.environ.items() if k not in ("PEER_SCRIPTS", "MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    for extra, message in (
        ([], "make gpu-bundle: set PEER_SCRIPTS to the folder that holds peer_tunix_sampler.py"),
        ([f"PEER_SCRIPTS={tmp_path}"], f"make gpu-bundle: no peer_tunix_sampler.py in PEER_SCRIPTS={tmp_path}"),
    ):
        done = subprocess.run(
            ["make", "-s", "gpu-bundle", *extra],
            cwd=BENCHMARKS.parent,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2 and done.stderr.startswith(message), done.stderr


def test_decode_tokens_check_counts_rows_and_first_differences(tmp_path):
    reference = np.arange(24, dtype=np.int32).reshape(3, 8)
    pallas = reference.copy()
    pallas[1, 5:] = -7
    for kernel, tokens in (("reference", reference), ("pallas", pallas)):
        folder = suite_plan.step_dir(tmp_path, f"ours generate {kernel}")
        folder.mkdir(parents=True)
        np.savez(folder / "tokens.npz", **{"3x16x8": tokens})
    (record,) = suite_plan.compare_decode_tokens(tmp_path)
    assert record["rows_identical"] == 2 and record["batch"] == 3 and record["new_tokens"] == 8
    assert record["tokens_equal_fraction"] == pytest.approx(21 / 24)
    assert record["mean_first_difference"] == pytest.approx((8 + 5 + 8) / 3)


def test_parity_verdicts_tell_bf16_noise_from_a_real_difference():
    rng = np.random.RandomState(0)
    fp32 = rng.normal(size=(1, 6, 50))
    bf16 = fp32 + 0.01 * rng.normal(size=fp32.shape)  # transformers' own bf16 noise
    assert hf_parity.logits_report(fp32 + 0.01 * rng.normal(size=fp32.shape), bf16, fp32)["logits_ok"]
    assert not hf_parity.logits_report(fp32 + 0.1 * rng.normal(size=fp32.shape), bf16, fp32)["logits_ok"]
    hf_tokens = np.argmax(fp32[:, 3:], -1)  # prompt of 4: logits at 3, 4, 5 choose tokens 0, 1, 2
    tie = fp32.copy()
    runner_up = int(np.argsort(fp32[0, 4])[-2])
    tie[0, 4, runner_up] = fp32[0, 4, hf_tokens[0, 1]] - 1e-4  # a near-tie at new token 1
    ours = hf_tokens.copy()
    ours[0, 1] = runner_up
    report = hf_parity.greedy_report(ours, hf_tokens, bf16, tie, prompt_len=4)
    assert report["rows"][0]["first_difference"] == 1 and report["rows"][0]["near_tie"] and report["greedy_ok"]
    wrong = hf_tokens.copy()
    wrong[0, 1] = int(np.argmin(fp32[0, 4]))  # the least likely token: no tie
    assert not hf_parity.greedy_report(wrong, hf_tokens, bf16, fp32, prompt_len=4)["greedy_ok"]


def test_suite_rejects_unknown_groups_steps_or_shapes(tmp_path):
    for argv in (
        ["--groups", "generate,decode"],
        ["--groups", "generate", "--generate-shapes", "64x512"],
        ["--groups", "generate", "--generate-shapes", ","],
        ["--preset", "first-light", "--only", "nope"],
        ["--preset", "first-light", "--resume", str(tmp_path / "missing.jsonl")],
    ):
        with pytest.raises(SystemExit):
            gpu_suite.main([*argv, "--out", str(tmp_path / "out"), "--state-dir", str(tmp_path / "state")])


def test_first_light_dry_run_of_both_calls_on_cpu(tmp_path):
    """The two device calls of gpu_first_light.sh at tiny shapes: the first stops starting steps when its
    short budget runs out, the second runs exactly what the first left, and its table covers both calls."""
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "WHEELS": str(tmp_path / "no-wheels"),
        "GPU_SUITE_ARGS": f"--tiny --state-dir {tmp_path / 'state'} --peers {tmp_path / 'no-peers'}",
    }
    script = str(BENCHMARKS / "gpu_first_light.sh")
    first = subprocess.run(
        ["bash", script, "first", "50"], env={**env, "OUT": str(tmp_path / "out1")}, capture_output=True, text=True
    )
    assert first.returncode == 0, first.stderr[-3000:]
    rest = subprocess.run(
        ["bash", script, "rest", "600"], env={**env, "OUT": str(tmp_path / "out2")}, capture_output=True, text=True
    )
    assert rest.returncode == 0, rest.stderr[-3000:]
    calls = []
    for out in ("out1", "out2"):
        assert sorted(p.name for p in (tmp_path / out).iterdir()) == ["RESULTS.md", "results.jsonl", "suite.log"]
        calls.append([json.loads(line) for line in (tmp_path / out / "results.jsonl").read_text().splitlines()])
    ok = [{r["step"] for r in records if r["status"] == "ok" and r["step"] != "meta"} for records in calls]
    plan = [
        s.name
        for s in suite_plan.plan(
            suite_plan.PRESETS["first-light"], True, tmp_path, tmp_path, shared_prefix=suite_plan.shared_prefix_option()
        )
    ]
    assert "ours generate BFCL 4x64+8 shared prefix 2 and unshared" in plan  # step 5 runs too
    peerless = {"tunix sampler"}  # no peer script
    assert ok[0] | ok[1] == set(plan) - peerless
    assert ok[0] & ok[1] <= {"hf reference"}  # only what a resumed step needs runs again (reusing its files)
    assert ok[1] - {"hf reference"}, "40 s cannot hold the whole plan: the second call must have had work"
    skipped = [r for r in calls[0] if r["status"] == "skipped" and r.get("resumable")]
    assert all("left in this call" in r["reason"] for r in skipped)
    assert set(calls[1][0]["planned"]) >= set(plan) - ok[0] - peerless
    ok_records = [r for records in calls for r in records if r["status"] == "ok"]
    parity = [r for r in ok_records if r.get("what") == "parity_logits"]
    assert [r["attention"] for r in parity] == ["reference", "xla"]
    assert all(r["logits_ok"] and r["params"] < 1_000_000 for r in parity)
    assert next(r for r in ok_records if r["step"] == "pallas vs reference tokens")["rows"] == 2
    text = (tmp_path / "out2" / "RESULTS.md").read_text()
    assert "No GPU figures" in text and calls[0][0]["call"] in text and calls[1][0]["call"] in text
    for section in ("## Correctness", "## Generation", "## Prefill", "## Training step"):
        assert section in text
    shared = [r for r in ok_records if r["group"] == "shared-prefix"]
    assert sorted(r["shared_prefix"] or 0 for r in shared) == [0, 2] and shared[1]["vs_unshared"]["rows"] == 4
    assert shared[0]["kv_bytes_live_per_step"] > shared[1]["kv_bytes_live_per_step"]
    assert "## Decode at BFCL shapes, without and with a shared prompt per GRPO group" in text
    assert "| 4, 64, 8 | once per 2 slots | reference |" in text and "Shared / unshared, same process" in text
