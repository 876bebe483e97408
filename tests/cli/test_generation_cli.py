"""`envtune generate` streams the reply a cache-free greedy reference produces; `envtune bench generate`
runs on CPU with the tiny preset and reports speeds, compile time and fractions of the device limit."""

from __future__ import annotations

import json

import pytest

from envtune_jax.cli.main import main

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "ls",
            "description": "List files in a folder.",
            "parameters": {"type": "object", "properties": {"path": {"type": "string"}}},
        },
    }
]


@pytest.fixture(scope="module")
def real_vocab_checkpoint(tmp_path_factory):
    """A tiny random model with Qwen3's full vocabulary (so the real tokenizer's ids fit), written as an
    HF checkpoint straight from NumPy (fast: no torch, no JAX random-number compilation)."""
    import numpy as np
    from flax import nnx
    from safetensors.numpy import save_file

    from envtune_jax.models.config import Qwen3Config, to_hf_dict
    from envtune_jax.models.qwen3 import Qwen3
    from envtune_jax.models.weights import expected_hf_shape

    cfg = Qwen3Config(
        vocab_size=151936,
        hidden_size=32,
        intermediate_size=64,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=16,
        tie_word_embeddings=True,
    )
    rng = np.random.RandomState(3)
    tensors = {}
    for _, variable in nnx.to_flat_state(nnx.state(nnx.eval_shape(lambda: Qwen3(cfg, rngs=nnx.Rngs(0))))):
        meta = variable.get_metadata()
        shape = expected_hf_shape(meta["hf_layout"], meta["layout"], tuple(variable.shape))
        scale, offset = (0.1, 1.0) if meta["logical_axes"] == ("norm",) else (0.3, 0.0)
        tensors[meta["hf_key"]] = (offset + scale * rng.randn(*shape)).astype(np.float32)
    out = tmp_path_factory.mktemp("real_vocab")
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(to_hf_dict(cfg)))
    return out


def test_generate_streams_the_greedy_reply(real_vocab_checkpoint, tmp_path, capsys):
    from envtune_jax.chat import default_tokenizer, encode_text, render_messages
    from envtune_jax.models import hf_io
    from envtune_jax.models.generation.reference import reference_greedy

    tools_file = tmp_path / "tools.json"
    tools_file.write_text(json.dumps(TOOLS))
    code = main(
        [
            "generate",
            "--hf",
            str(real_vocab_checkpoint),
            "--prompt",
            "What is in /tmp?",
            "--tools",
            str(tools_file),
            "--greedy",
            "--max-new-tokens",
            "14",
            "--stream-chunk",
            "4",
            "--dtype",
            "float32",
            "--cache-dtype",
            "float32",
        ]
    )
    out = capsys.readouterr()
    assert code == 0

    tokenizer = default_tokenizer()
    prompt = render_messages([{"role": "user", "content": "What is in /tmp?"}], TOOLS, "qwen_fc")
    assert '"name": "ls"' in prompt
    model = hf_io.load_pretrained(real_vocab_checkpoint, progress=False)
    expected = reference_greedy(model, encode_text(tokenizer, prompt), 14, stop_token_ids=(151645, 151643))
    assert out.out == tokenizer.decode(expected, skip_special_tokens=True) + "\n"
    assert f"{len(expected)} new tokens" in out.err


def test_generate_rejects_a_bad_tools_file(real_vocab_checkpoint, tmp_path, capsys):
    bad = tmp_path / "tools.json"
    bad.write_text('{"name": "not a list"}')
    assert main(["generate", "--hf", str(real_vocab_checkpoint), "--prompt", "hi", "--tools", str(bad)]) == 2
    assert "JSON list of tools" in capsys.readouterr().err


def test_bench_generate_tiny_preset_prints_one_json_line(capsys):
    code = main(
        [
            "bench",
            "generate",
            "--preset",
            "tiny",
            "--random-weights",
            "--batch",
            "2",
            "--prompt-len",
            "8",
            "--new-tokens",
            "4",
            "--repeats",
            "1",
            "--dtype",
            "float32",
        ]
    )
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["benchmark"] == "generate" and record["batch"] == 2 and record["new_tokens"] == 4
    assert record["decode_tok_s"] > 0 and record["end_to_end_tok_s"] < record["decode_tok_s"]
    assert record["compile_s"]["decode"] > 0 and record["compile_s"]["prefill"] > 0
    assert 0 < record["decode_fraction_of_limit"] and 0 < record["end_to_end_fraction_of_limit"]
    assert record["limits"]["source"].startswith("probed")  # a CPU is not in the table of measured devices
    assert record["compilations"]["decode"] == 1
