"""benchmarks/gpu_suite.py (ours and the peers in one call) and benchmarks/results_table.py (RESULTS.md):
the ratios and goals the table prints, variant fallback and time limits of a step, and a tiny-shape
run of the suite itself on CPU (the peers absent, so their steps are reported as skipped)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import gpu_suite  # noqa: E402
import results_table  # noqa: E402

META = {"step": "meta", "group": "meta", "source": "suite", "status": "ok", "groups": ["generate"], "tiny": False,
        "commit": "abc1234", "date": "2026-11-24T10:00:00+00:00", "python": "3.12.3", "jax": "0.11.2"}


def _ok(source: str, **fields) -> dict:
    return {"step": f"{source} step", "group": "g", "source": source, "status": "ok", **fields}


def test_table_prints_ratios_to_the_peers_and_the_goals():
    records = [
        META,
        _ok("ours", benchmark="generate", batch=64, prompt_len=512, new_tokens=256, decode_tok_s=12_000.0,
            end_to_end_tok_s=9_500.0, ms_per_decode_step=5.33, decode_fraction_of_limit=0.91,
            compile_s={"prefill": 4.0, "decode": 20.0}, device_kind="NVIDIA H100 80GB HBM3"),
        _ok("ours", benchmark="generate", batch=64, prompt_len=512, new_tokens=256, decode_tok_s=13_073.0,
            end_to_end_tok_s=10_000.0, ms_per_decode_step=4.9, decode_fraction_of_limit=0.99, decode_attention="pallas", decode_kernel_blocks=[128, 3],
            compile_s={"prefill": 4.0, "decode": 25.0}, device_kind="NVIDIA H100 80GB HBM3"),
        _ok("tunix", kind="split", B=64, P=512, N=256, decode_only_tok_per_s=8_715.0, decode_ms_per_step=7.34),
        _ok("tunix", kind="e2e", B=64, P=512, N=256, tok_per_s_median=6_261.0),
        _ok("hf", what="hf_generate", batch=64, prompt=512, new=256, out_tok_s=581.0),
        _ok("ours", benchmark="prefill", batch=8, prompt_len=2048, attention="cudnn", tok_s=75_000.0,
            model_tflops_per_s=603.0, fraction_of_limit=0.76),
        _ok("hf", what="hf_prefill", batch=8, seq=2048, tok_s=46_972.0, tflops=378.0),
        _ok("ours", benchmark="extend", batch=16, context=2048, tail=128, prompt_len=4096, attention="cudnn",
            compacted={"round_s": 0.25, "token_rows": 6144}, all_slots={"round_s": 1.5, "token_rows": 65536},
            speedup=6.0, fraction_of_matmul_rate=0.5, all_slots_fraction_of_matmul_rate=0.0833),
        _ok("ours", benchmark="train", batch=8, seq_len=2048, remat="full", attention="cudnn", tokens_per_s=16_000.0,
            model_tflops_per_s=386.0, mfu=0.45, peak_memory_bytes=60e9),
        _ok("hf", what="hf_train_fwd_bwd_remat", batch=8, seq=2048, tok_s=11_074.0, model_tflops=267.0, peak_mem_gb=50.0),
        _ok("ours", benchmark="memory", program="decode", param_dtype="bfloat16", context=8192, largest_batch=212,
            tokens=212 * 8192, peak_bytes=70.1e9, argument_bytes=64.0e9, limit_bytes=70.2e9, remat=None),
        {"step": "ours rollout", "group": "rollout", "source": "ours", "status": "failed",
         "failures": [{"returncode": 1, "stderr_tail": "Traceback...\nRESOURCE_EXHAUSTED: out of memory"}]},
    ]
    text = results_table.render(records)
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
    assert "NVIDIA H100 80GB HBM3" in text and "abc1234" in text and "jax 0.11.2" in text
    assert "| decode loop (slots) | bfloat16 | 8,192 | 212 | 1,736,704 | 70.10 | 64.00 | 70.20 |" in text
    assert "- ours rollout: failed — exit 1: RESOURCE_EXHAUSTED: out of memory" in text


def test_table_says_not_met_below_a_goal():
    records = [META, _ok("ours", benchmark="prefill", batch=8, prompt_len=2048, attention="reference", tok_s=40_000.0,
                         model_tflops_per_s=320.0, fraction_of_limit=0.41)]
    assert "not met (≥ 70,000)" in results_table.render(records)


def test_parse_json_lines_keeps_only_objects():
    text = 'compiling...\n{"a": 1}\n[1, 2]\n{"broken": \n  {"b": 2}  \n'
    assert gpu_suite.parse_json_lines(text) == [{"a": 1}, {"b": 2}]


def test_step_falls_back_to_the_next_variant_and_records_the_failure(tmp_path):
    step = gpu_suite.Step("fallback", "g", "ours", [[sys.executable, "-c", "import sys; print('boom', file=sys.stderr); sys.exit(3)"],
                                                     [sys.executable, "-c", "print('log line'); print('{\"x\": 1}')"]], 60)
    (record,) = gpu_suite.run_step(step, tmp_path, deadline=float("inf"))
    assert record["status"] == "ok" and record["x"] == 1 and record["variant"] == 1
    assert record["failures"][0]["returncode"] == 3 and "boom" in record["failures"][0]["stderr_tail"]
    assert "--- stderr\nboom" in (tmp_path / "steps" / "fallback" / "variant0.log").read_text()


def test_step_over_its_time_keeps_what_it_printed(tmp_path):
    script = "import time; print('{\"partial\": 1}', flush=True); time.sleep(30)"
    step = gpu_suite.Step("slow", "g", "hf", [[sys.executable, "-c", script]], timeout_s=3)
    records = gpu_suite.run_step(step, tmp_path, deadline=float("inf"))
    assert records[0]["status"] == "failed" and records[0]["failures"][0]["returncode"] == "timeout"
    assert records[1]["status"] == "partial" and records[1]["partial"] == 1


def test_full_plan_pairs_ours_with_each_peer_at_the_issue_shapes(tmp_path):
    peers = tmp_path / "peers"
    peers.mkdir()
    for script in ("jax_probe.py", "peer_tunix_sampler.py", "peer_hf_qwen3.py", "peer_hf_train.py"):
        (peers / script).write_text("")
    steps = {s.name: s for s in gpu_suite.plan(gpu_suite.GROUPS, tiny=False, peers=peers, rollout_overrides=["seed=3"])}
    for b, p, n in ((1, 512, 128), (64, 512, 256), (256, 512, 128)):
        argv = steps[f"ours generate {b}x{p}+{n}"].variants[0]
        assert argv[argv.index("--batch") + 1:argv.index("--batch") + 6] == [str(b), "--prompt-len", str(p),
                                                                            "--new-tokens", str(n)]
        assert "qwen3-4b-instruct-2507" in argv
    assert steps["tunix sampler"].env["CONFIGS"] == "1x512x128,64x512x256,256x512x128"
    for b, p, n in ((1, 512, 128), (64, 512, 256), (256, 512, 128)):
        argv = steps[f"ours generate {b}x{p}+{n} pallas decode"].variants[0]
        assert argv[argv.index("--decode-attention") + 1] == "pallas" and argv[argv.index("--batch") + 1] == str(b)
    assert "--attention" in steps["ours prefill 8x2048 cudnn"].variants[0]
    extend = steps["ours extend round 16 slots"].variants
    assert [v[v.index("--attention") + 1] for v in extend] == ["cudnn", "reference"]
    assert extend[0][extend[0].index("--prompt-len") + 1] == "4096"
    train = steps["ours train 8x2048 remat full"]
    assert [v[v.index("--attention") + 1] for v in train.variants] == ["cudnn", "xla"]
    rollout = steps["ours rollout"].variants
    assert len(rollout) == 3 and all("seed=3" in v and "model.param_dtype=bfloat16" in v for v in rollout)
    skipped = {name: s.skip_reason for name, s in steps.items() if s.skip_reason}
    assert set(skipped) <= {"tunix sampler"}, skipped  # every peer script is there; Tunix may not be installed
    assert all("not importable" in reason for reason in skipped.values())
    assert {s.source for s in steps.values()} == {"probe", "ours", "tunix", "hf"}


def test_suite_tiny_run_on_cpu_writes_results(tmp_path):
    out = tmp_path / "out"
    assert gpu_suite.main(["--tiny", "--groups", "prefill", "--out", str(out),
                           "--peers", str(tmp_path / "no-peers"), "--commit", "deadbee"]) == 0
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    ours = [r for r in records if r["source"] == "ours" and r["status"] == "ok"]
    assert [r["benchmark"] for r in ours] == ["prefill", "extend"]
    assert all(r["params"] < 1_000_000 for r in ours)  # the Tunix peer's tiny shapes
    assert ours[1]["compacted"]["token_rows"] < ours[1]["all_slots"]["token_rows"]
    skipped = {r["step"]: r["reason"] for r in records if r["status"] == "skipped"}
    assert set(skipped) == {"hf transformers prefill+generate"}
    text = (out / "RESULTS.md").read_text()
    assert "## Prefill" in text and "deadbee" in text and "compacted extends vs all-slot calls" in text
    assert "hf transformers prefill+generate: skipped" in text


def test_suite_rejects_an_unknown_group_or_malformed_shapes(tmp_path):
    with pytest.raises(SystemExit):
        gpu_suite.main(["--groups", "generate,decode", "--out", str(tmp_path)])
    for bad in ("64x512", "64x512x256,oops", ","):
        with pytest.raises(SystemExit):
            gpu_suite.main(["--groups", "generate", "--generate-shapes", bad, "--out", str(tmp_path)])


def test_generate_shapes_can_be_split_over_calls(tmp_path):
    steps = gpu_suite.plan(["generate"], tiny=False, peers=tmp_path, rollout_overrides=[],
                           generate_shapes=[(256, 512, 128)])
    assert [s.name for s in steps] == ["ours generate 256x512+128", "tunix sampler"]
    assert steps[1].env["CONFIGS"] == "256x512x128"


def test_tiny_decode_kernel_steps_use_caches_the_kernel_can_split(tmp_path):
    from models.attention import decode_kernel_blocks

    steps = gpu_suite.plan(["decode-kernel"], tiny=True, peers=tmp_path, rollout_overrides=[])
    assert steps
    for step in steps:
        argv = step.variants[0]
        value = lambda flag: int(argv[argv.index(flag) + 1])  # noqa: E731
        capacity = value("--prompt-len") + value("--new-tokens")
        assert decode_kernel_blocks(capacity, value("--batch"), 2) is not None, step.name
