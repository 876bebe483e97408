"""HF import/export: bit-exact round trip, transformers reloads our export, sharded files, clear errors."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from envtune_jax import hf_io
from tests.hf_fixtures import hf_logits, write_tiny_qwen3

VOCAB = 512


@pytest.fixture(scope="module")
def tied(tmp_path_factory):
    return write_tiny_qwen3(tmp_path_factory.mktemp("tied"), "tied_kv2", vocab_size=VOCAB)


@pytest.fixture(scope="module")
def untied(tmp_path_factory):
    return write_tiny_qwen3(tmp_path_factory.mktemp("untied"), "untied_kv1", vocab_size=VOCAB)


def _all_tensors(directory):
    out = {}
    for file in sorted(directory.glob("*.safetensors")):
        out.update(load_file(str(file)))
    return out


@pytest.mark.parametrize("which", ["tied", "untied"])
def test_round_trip_is_bit_exact(which, request, tmp_path):
    source = request.getfixturevalue(which)
    model = hf_io.load_pretrained(source, progress=False)
    out = hf_io.save_pretrained(model, tmp_path / "export", tokenizer_dir=source, progress=False)
    original, exported = _all_tensors(source), _all_tensors(out)
    if which == "tied":
        original.pop("lm_head.weight", None)
    assert sorted(original) == sorted(exported)
    for name in original:
        assert original[name].dtype == exported[name].dtype, name
        np.testing.assert_array_equal(original[name], exported[name], err_msg=name)
    assert (out / "config.json").is_file() and (out / "generation_config.json").is_file()


def test_export_reloads_in_transformers_with_identical_logits(untied, tmp_path):
    model = hf_io.load_pretrained(untied, progress=False)
    out = hf_io.save_pretrained(model, tmp_path / "export", progress=False)
    tokens = np.random.RandomState(0).randint(0, VOCAB, (2, 64))
    np.testing.assert_array_equal(hf_logits(out, tokens), hf_logits(untied, tokens))


def test_sharded_export_writes_index_and_loads_back(tied, tmp_path):
    model = hf_io.load_pretrained(tied, progress=False)
    out = hf_io.save_pretrained(model, tmp_path / "sharded", max_shard_bytes=60_000, progress=False)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 2 and all((out / f).is_file() for f in files)
    assert not (out / "model.safetensors").exists()
    reloaded = hf_io.load_pretrained(out, progress=False)
    tokens = np.arange(40)[None] % VOCAB
    np.testing.assert_array_equal(np.asarray(reloaded(tokens)), np.asarray(model(tokens)))
    tokens2 = np.random.RandomState(1).randint(0, VOCAB, (1, 50))
    np.testing.assert_allclose(hf_logits(out, tokens2), hf_logits(tied, tokens2), rtol=0, atol=0)


def test_bf16_export_casts(tied, tmp_path):
    model = hf_io.load_pretrained(tied, progress=False)
    out = hf_io.save_pretrained(model, tmp_path / "bf16", dtype="bfloat16", progress=False)
    assert {str(a.dtype) for a in _all_tensors(out).values()} == {"bfloat16"}
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"


def test_other_architecture_is_rejected_naming_the_file(tied, tmp_path):
    bad = tmp_path / "llama"
    shutil.copytree(tied, bad)
    config = json.loads((bad / "config.json").read_text())
    config.update(model_type="llama", architectures=["LlamaForCausalLM"])
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(hf_io.NotAQwen3Checkpoint, match=r"config\.json.*llama"):
        hf_io.load_pretrained(bad, progress=False)


def test_missing_tensor_is_named(tied, tmp_path):
    bad = tmp_path / "missing"
    shutil.copytree(tied, bad)
    tensors = load_file(str(bad / "model.safetensors"))
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, str(bad / "model.safetensors"))
    with pytest.raises(hf_io.CheckpointError, match=r"model\.layers\.1\.mlp\.up_proj\.weight"):
        hf_io.load_pretrained(bad, progress=False)


def test_shape_mismatch_names_file_and_tensor(tied, tmp_path):
    bad = tmp_path / "shape"
    shutil.copytree(tied, bad)
    tensors = load_file(str(bad / "model.safetensors"))
    tensors["model.layers.0.self_attn.k_proj.weight"] = tensors["model.layers.0.self_attn.k_proj.weight"][:-1]
    save_file(tensors, str(bad / "model.safetensors"))
    with pytest.raises(hf_io.CheckpointError, match=r"model\.safetensors.*k_proj\.weight.*shape"):
        hf_io.load_pretrained(bad, progress=False)


def test_not_a_directory_and_no_weights(tmp_path):
    with pytest.raises(hf_io.CheckpointError, match="not a directory"):
        hf_io.load_pretrained(tmp_path / "nope", progress=False)
    with pytest.raises(hf_io.NotAQwen3Checkpoint, match="config.json"):
        hf_io.load_pretrained(tmp_path, progress=False)


def test_failed_export_leaves_nothing_behind(tied, tmp_path, monkeypatch):
    model = hf_io.load_pretrained(tied, progress=False)
    import models.hf_io as impl

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(impl, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        hf_io.save_pretrained(model, tmp_path / "out", progress=False)
    assert list(tmp_path.iterdir()) == []
