"""`envtune eval --hf` / `--ckpt` drive a real model through the official protocol and write the table."""
from __future__ import annotations

import json

import pytest

from envtune_jax.cli.main import main as envtune
from tests.hf_fixtures import write_tiny_qwen3

QUICK_MODEL_EVAL = ["--split", "test", "--limit", "1", "--categories", "base", "--data-source", "package",
                    "--max-new-tokens", "4", "--batch-size", "4", "--max-cache-len", "8192"]


@pytest.fixture(scope="module")
def full_vocab_checkpoint(tmp_path_factory):
    return write_tiny_qwen3(tmp_path_factory.mktemp("full"), "untied_mha", vocab_size=151936)


def test_eval_of_a_model_writes_the_table(full_vocab_checkpoint, tmp_path, capsys):
    code = envtune(["eval", "--hf", str(full_vocab_checkpoint), *QUICK_MODEL_EVAL, "--out", str(tmp_path / "hf")])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| OVERALL | 0 | 1 | 0.00% |" in printed  # a random tiny model solves nothing
    results = json.loads((tmp_path / "hf" / "eval_results.json").read_text())
    assert [row["category"] for row in results["table"]] == ["multi_turn_base", "OVERALL"]
    (line,) = (tmp_path / "hf" / "model_results.jsonl").read_text().splitlines()
    record = json.loads(line)
    # every turn was played (one step each: the model never calls a tool), none cut short
    assert record["id"] == "multi_turn_base_0" and len(record["result"]) > 1
    assert all(len(turn) == 1 for turn in record["result"])

    # The same weights converted to an envtune checkpoint: --ckpt decodes greedily to the same outputs.
    assert envtune(["convert", "--hf", str(full_vocab_checkpoint), "--out", str(tmp_path / "ckpt")]) == 0
    assert envtune(["eval", "--ckpt", str(tmp_path / "ckpt"), *QUICK_MODEL_EVAL, "--out", str(tmp_path / "ck")]) == 0
    (ckpt_line,) = (tmp_path / "ck" / "model_results.jsonl").read_text().splitlines()
    assert json.loads(ckpt_line)["result"] == record["result"]
