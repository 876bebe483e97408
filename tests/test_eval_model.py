"""`envtune eval --hf` drives a real model through the official protocol and writes the table."""
from __future__ import annotations

import json

import pytest

from envtune_jax.cli.main import main as envtune
from tests.hf_fixtures import write_tiny_qwen3


@pytest.fixture(scope="module")
def full_vocab_checkpoint(tmp_path_factory):
    return write_tiny_qwen3(tmp_path_factory.mktemp("full"), "untied_mha", vocab_size=151936)


def test_eval_of_a_model_writes_the_table(full_vocab_checkpoint, tmp_path, capsys):
    # One engine slot for the one entry (each generate re-prefills its ~6.2k-token conversation; 4 slots made
    # every call ~4x slower on CPU: 111 s against 27 s measured); float32 since bf16 is slow on CPU.
    code = envtune(["eval", "--hf", str(full_vocab_checkpoint), "--split", "test", "--limit", "1", "--categories", "base",
                    "--data-source", "package", "--max-new-tokens", "4", "--batch-size", "1",
                    "--max-cache-len", "8192", "--dtype", "float32", "--out", str(tmp_path)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| OVERALL | 0 | 1 | 0.00% |" in printed  # a random tiny model solves nothing
    results = json.loads((tmp_path / "eval_results.json").read_text())
    assert [row["category"] for row in results["table"]] == ["multi_turn_base", "OVERALL"]
    (line,) = (tmp_path / "model_results.jsonl").read_text().splitlines()
    record = json.loads(line)
    # every turn was played (one step each: the model never calls a tool), none cut short
    assert record["id"] == "multi_turn_base_0" and len(record["result"]) > 1
    assert all(len(turn) == 1 for turn in record["result"])


def test_eval_passes_the_attention_choices_to_the_model(full_vocab_checkpoint):
    """`envtune eval --attention cudnn --decode-attention pallas` reaches the evaluated model's config."""
    from envtune_jax.cli.main import build_parser
    from rl.model_policy import build_model_policy

    args = build_parser().parse_args(["eval", "--hf", str(full_vocab_checkpoint), "--attention", "xla",
                                      "--decode-attention", "pallas"])
    policy = build_model_policy(hf_dir=str(full_vocab_checkpoint), batch_size=1, max_cache_len=256, dtype="float32",
                                attention_impl=args.attention, decode_attention=args.decode_attention)
    assert (policy.engine.config.attention_impl, policy.engine.config.decode_attention) == ("xla", "pallas")
