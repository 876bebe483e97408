"""`envtune bench generate --shapes`: several shapes with one model, one JSON line each, and their tokens saved;
`envtune bench probe`: the device's two ceilings."""

from __future__ import annotations

import json

import numpy as np
import pytest

from envtune_jax.bench.generate import parse_shapes
from envtune_jax.cli.main import main
from envtune_jax.config import ConfigError

TINY = ["--preset", "tiny", "--random-weights", "--dtype", "float32", "--model-config=vocab_size=1000"]


def test_shapes_run_with_one_model_and_save_their_tokens(capsys, tmp_path):
    tokens = tmp_path / "tokens.npz"
    assert (
        main(["bench", "generate", *TINY, "--shapes", "1x8x4,3x8x6", "--repeats", "1", "--tokens-out", str(tokens)])
        == 0
    )
    records = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [(r["batch"], r["prompt_len"], r["new_tokens"]) for r in records] == [(1, 8, 4), (3, 8, 6)]
    with np.load(tokens) as saved:
        assert sorted(saved.files) == ["1x8x4", "3x8x6"] and saved["3x8x6"].shape == (3, 6)
        assert saved["3x8x6"].min() >= 0 and saved["3x8x6"].max() < 1000


def test_bad_shapes_are_one_line_errors_before_any_model_loads(capsys):
    for bad in ("1x8", "1x8x4,", "0x8x4", "ax8x4"):
        with pytest.raises(ConfigError, match="--shapes"):
            parse_shapes(bad)
    assert main(["bench", "generate", *TINY, "--shapes", "2x16"]) == 2
    assert "--shapes '2x16': expected BxPxN" in capsys.readouterr().err


def test_probe_prints_both_ceilings(capsys):
    assert main(["bench", "probe", "--copy-mib", "4", "--matmul-size", "128", "--repeats", "2"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["copy_bandwidth_bytes_per_s"] > 0 and record["matmul_flops_per_s"] > 0
    assert record["platform"] == "cpu" and record["table_matmul_flops_per_s"] is None
    assert "4 MiB copy, 128^3 float32 matmul" in record["what"]


def test_a_failing_shape_leaves_the_others_measured(monkeypatch, capsys):
    from envtune_jax.bench import generate

    def measure(model, mesh, devices, limits, args, batch, prompt_len, new_tokens):
        if batch == 2:
            raise MemoryError("RESOURCE_EXHAUSTED: out of memory")
        return {"benchmark": "generate", "batch": batch}, np.zeros((batch, new_tokens), np.int32)

    monkeypatch.setattr(generate, "measure", measure)
    with pytest.raises(RuntimeError, match=r"1 of 3 shapes failed: 2x8x4: MemoryError: RESOURCE_EXHAUSTED"):
        main(["bench", "generate", *TINY, "--shapes", "1x8x4,2x8x4,3x8x4"])
    assert [json.loads(line)["batch"] for line in capsys.readouterr().out.strip().splitlines()] == [1, 3]


def test_shared_prefix_measures_both_engines_on_the_same_prompts_in_one_process(capsys, tmp_path):
    """--shared-prefix G: B/G prompts, G slots each, measured with each prompt held once and without; the KV
    bytes a step reads are counted from the layouts the engines ran with; fp32 greedy tokens agree."""
    tokens = tmp_path / "tokens.npz"
    assert (
        main(
            [
                "bench",
                "generate",
                *TINY,
                "--cache-dtype",
                "float32",
                "--batch",
                "4",
                "--prompt-len",
                "40",
                "--new-tokens",
                "6",
                "--shared-prefix",
                "2",
                "--repeats",
                "1",
                "--tokens-out",
                str(tokens),
            ]
        )
        == 0
    )
    unshared, shared = (json.loads(line) for line in capsys.readouterr().out.strip().splitlines())
    assert (unshared["shared_prefix"], shared["shared_prefix"]) == (None, 2)
    assert unshared["benchmark"] == shared["benchmark"] == "generate" and shared["distinct_prompts"] == 2
    per_token = shared["kv_bytes_per_token"]
    assert unshared["kv_bytes_live_per_step"] == 4 * (40 + 3) * per_token  # every slot holds its prompt
    assert shared["kv_bytes_live_per_step"] == (2 * 40 + 4 * 3) * per_token  # each prompt once, then own tokens
    layout = shared["cache_layout"]
    assert layout["regions"] == 2 and layout["region_capacity"] >= 40
    assert (
        shared["kv_bytes_read_per_step"]
        == shared["kv_bytes_allocated"]
        == (2 * layout["region_capacity"] + 4 * layout["slot_capacity"]) * per_token
    )  # the einsum reads it all
    assert "prefill_regions" in shared["compilations"] and "copy_rows" in unshared["compilations"]
    gain = shared["vs_unshared"]
    assert gain["rows_identical"] == gain["rows"] == 4 and gain["tokens_equal_fraction"] == 1.0
    assert gain["kv_bytes_live_ratio"] == pytest.approx((4 * 43) / (2 * 40 + 4 * 3))
    assert 0 < shared["decode_fraction_of_limit"] and 0 < shared["end_to_end_fraction_of_limit"]
    with np.load(tokens) as saved:
        assert sorted(saved.files) == ["4x40x6", "shared2_4x40x6"]
        np.testing.assert_array_equal(saved["4x40x6"], saved["shared2_4x40x6"])


def test_shared_prefix_needs_whole_groups(capsys):
    assert main(["bench", "generate", *TINY, "--shapes", "4x8x2,6x8x2", "--shared-prefix", "4"]) == 2
    assert "--shared-prefix 4: the batch must be a multiple of the group size, got 6x8x2" in capsys.readouterr().err
    assert main(["bench", "generate", *TINY, "--shared-prefix", "0"]) == 2
    assert "--shared-prefix must be ≥ 1, got 0" in capsys.readouterr().err
