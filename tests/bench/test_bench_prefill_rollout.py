"""`envtune bench prefill`, `extend` and `rollout` on CPU (tiny shapes): the fields they promise,
their arithmetic (FLOP counts, time shares), their errors, and the `--profile` trace."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from envtune_jax.bench.generate import model_config_changes
from envtune_jax.bench.prefill import check_arguments, prefill_flops
from envtune_jax.bench.rollout import choose_stage, iteration_shares
from envtune_jax.cli.main import main
from envtune_jax.config import ConfigError
from envtune_jax.models.config import preset

REPO = Path(__file__).resolve().parents[2]


def _run_cli(argv: list[str]) -> dict:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(argv) == 0
    lines = out.getvalue().strip().splitlines()
    assert len(lines) == 1, out.getvalue()
    return json.loads(lines[0])


def test_prefill_flops_of_qwen3_4b_by_hand():
    cfg = preset("qwen3-4b")
    model, executed = prefill_flops(cfg, batch=8, prompt_len=2048)
    assert model == 2 * 4_022_468_096 * 8 * 2048
    layers = 4_022_468_096 - 151936 * 2560  # tied embedding: a lookup, and prefill computes no logits
    attention = 2 * 36 * 8 * 32 * 128 * 2048**2
    assert executed == 2 * layers * 8 * 2048 + attention
    untied = preset("qwen3-8b")
    _, executed_8b = prefill_flops(untied, batch=1, prompt_len=1)
    assert executed_8b == 2 * (untied.num_params - 2 * 151936 * 4096) + 2 * 36 * 32 * 128


def test_bench_extend_tiny_times_both_modes_and_counts_their_work():
    from envtune_jax.bench.extend import check_arguments as extend_check_arguments
    from envtune_jax.bench.extend import round_flops

    argv = [
        "bench",
        "extend",
        "--preset",
        "tiny",
        "--random-weights",
        "--batch",
        "4",
        "--context",
        "32",
        "--tail",
        "8",
        "--prompt-len",
        "64",
        "--chunk",
        "16",
        "--repeats",
        "1",
        "--dtype",
        "float32",
    ]
    record = _run_cli(argv)
    assert record["benchmark"] == "extend" and record["appended_tokens"] == 3 * 8 + 64
    # compacted: one call of the 4 slots' first pieces (16 wide), then 3 one-row calls for the prompt's rest;
    # all slots: 4 calls of 4 rows x 16
    assert record["compacted"]["token_rows"] == 4 * 16 + 3 * 16 and record["all_slots"]["token_rows"] == 4 * 4 * 16
    assert (
        record["compacted"]["compilations"]["extend_rows"] >= 1
        and "extend_rows" not in record["all_slots"]["compilations"]
    )
    assert record["speedup"] == pytest.approx(record["all_slots"]["round_s"] / record["compacted"]["round_s"])
    args = SimpleNamespace(batch=4, context=32, tail=8, prompt_len=64)
    cfg = preset("tiny")
    layer_params = cfg.num_params - cfg.vocab_size * cfg.hidden_size * (1 if cfg.tie_word_embeddings else 2)
    pairs = 3 * 8 * (32 + 4.5) + 64 * 65 / 2
    assert round_flops(cfg, args) == 2 * layer_params * 88 + 4 * cfg.num_layers * cfg.num_heads * cfg.head_dim * pairs
    rate = record["limits"]["matmul_flops_per_s"]
    assert record["fraction_of_matmul_rate"] == pytest.approx(
        round_flops(cfg, args) / rate / record["compacted"]["round_s"]
    )
    bad = argv[: argv.index("--batch") + 1] + ["1"] + argv[argv.index("--batch") + 2 :]
    assert main(bad) != 0  # the CLI reports the ConfigError and exits non-zero
    with pytest.raises(ConfigError, match="power of two"):
        extend_check_arguments(SimpleNamespace(batch=4, context=8, tail=8, prompt_len=8, repeats=1, chunk=24))


def test_prefill_rejects_a_chunk_the_engine_cannot_use():
    args = SimpleNamespace(batch=1, prompt_len=8, repeats=1, chunk=24)
    with pytest.raises(ConfigError, match="power of two"):
        check_arguments(args)
    with pytest.raises(ConfigError, match="≥ 1"):
        check_arguments(SimpleNamespace(batch=0, prompt_len=8, repeats=1, chunk=16))


def test_bench_prefill_tiny(tmp_path):
    batch, prompt_len, chunk = 2, 64, 32
    record = _run_cli(
        [
            "bench",
            "prefill",
            "--preset",
            "tiny",
            "--random-weights",
            "--batch",
            str(batch),
            "--prompt-len",
            str(prompt_len),
            "--chunk",
            str(chunk),
            "--repeats",
            "2",
            "--dtype",
            "float32",
            "--profile",
            str(tmp_path / "trace"),
        ]
    )
    assert record["benchmark"] == "prefill" and (record["batch"], record["prompt_len"]) == (batch, prompt_len)
    assert record["tok_s"] == pytest.approx(batch * prompt_len / record["prefill_s"], rel=1e-9)
    model_flops, executed = prefill_flops(preset("tiny"), batch, prompt_len)
    rate = record["limits"]["matmul_flops_per_s"]
    assert record["model_tflops_per_s"] == pytest.approx(model_flops / record["prefill_s"] / 1e12, rel=1e-9)
    assert record["fraction_of_limit"] == pytest.approx(model_flops / rate / record["prefill_s"], rel=1e-9)
    assert record["fraction_of_matmul_rate"] == pytest.approx(executed / rate / record["prefill_s"], rel=1e-9)
    assert record["limit_tok_s"] == pytest.approx(batch * prompt_len * rate / model_flops, rel=1e-9)
    assert 0 < record["compile_s"] < record["first_run_s"]
    assert record["prefill_s_min"] <= record["prefill_s"]
    # two chunks of the same width: one extend program, reused by every run
    assert record["compilations"]["extend"] == 1
    assert list((tmp_path / "trace").rglob("*.xplane.pb")), "no profiler trace written"


def test_model_config_changes_parse_values_and_name_the_fields():
    assert model_config_changes(["vocab_size=1000", "rope_theta=5e6", "tie_word_embeddings=false"]) == {
        "vocab_size": 1000,
        "rope_theta": 5e6,
        "tie_word_embeddings": False,
    }
    with pytest.raises(ConfigError, match="hidden_size"):
        model_config_changes(["hidden=128"])
    with pytest.raises(ConfigError, match="FIELD=VALUE"):
        model_config_changes(["vocab_size"])
    with pytest.raises(ConfigError, match="vocab_size must be of type int"):
        model_config_changes(["vocab_size=1e3x"])


def test_bench_lists_every_kind(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    text = capsys.readouterr().out
    for kind in ("generate", "prefill", "extend", "train", "rollout", "memory"):
        assert kind in text


def test_iteration_shares_add_up():
    shares = iteration_shares({"generation_s": 6.0, "environment_s": 1.0, "train_s": 2.0}, wall_s=10.0)
    assert shares == pytest.approx({"generation": 0.6, "environment": 0.1, "train": 0.2, "other": 0.1})
    assert iteration_shares({"generation_s": 6.0, "environment_s": 1.0, "train_s": 3.5}, 10.0)["other"] == 0.0


def test_choose_stage_names_the_choices():
    stages = [SimpleNamespace(name="stage1_syntax"), SimpleNamespace(name="stage2_hints")]
    assert choose_stage(stages, None).name == "stage1_syntax"
    assert choose_stage(stages, "stage2_hints").name == "stage2_hints"
    with pytest.raises(ConfigError, match="stage1_syntax"):
        choose_stage(stages, "stage9")


def test_bench_rollout_tiny_recipe_on_real_bfcl_environments(capsys, optimized_programs):
    record = _run_cli(
        [
            "bench",
            "rollout",
            "--recipe",
            str(REPO / "configs/recipes/tiny_cpu.yaml"),
            "--stage",
            "stage2_hints",
            "--prompts",
            "1",
            "--samples",
            "1",
            "--iterations",
            "1",
            "--no-warmup",
            "data.source=package",
            "sampler.batch_size=1",
        ]
    )
    assert record["benchmark"] == "rollout" and record["stage"] == "stage2_hints"
    assert record["random_weights"] and record["model"] == "tiny"
    assert record["episodes_per_iteration"] == 1
    assert record["episodes_per_min"] == pytest.approx(60 * 1 / record["iteration_s"], rel=1e-9)
    shares = record["shares"]
    assert set(shares) == {"generation", "environment", "train", "other"}
    assert sum(shares.values()) == pytest.approx(1.0, abs=1e-6)
    assert shares["generation"] > 0 and shares["environment"] > 0 and shares["train"] > 0
    # every BFCL episode has at least one user turn; the tiny model samples ≤ 12 tokens per step
    assert record["turns_mean"] >= 1 and record["steps_mean"] >= record["turns_mean"]
    assert 0 < record["sampled_tokens_per_iteration"] <= 12 * record["steps_mean"]
    assert record["train_tokens_per_iteration"] == record["episode_tokens_mean"]
    assert record["mfu"] is None  # a CPU is not in the table of measured devices
    assert record["compilations"]["decode"] == 1 and record["sampler_batch_size"] == 1
    assert record["first_iteration_s"] is None and record["first_iteration_shares"] is None
    bar = capsys.readouterr().err  # the progress bar over iterations, on stderr
    assert "bench rollout: 100%" in bar and "1/1 [" in bar
