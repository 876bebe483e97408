"""HF import/export: bit-exact round trip, transformers reloads our export, sharded files, clear errors,
tokenizer files copied, and a mesh load that reads only each device's shard of the stored tensors."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from envtune_jax.models import hf_io
from envtune_jax.models.weights import hf_read_plan, hf_to_ours, ours_to_hf
from tests.conftest import hf_logits, write_tiny_qwen3

ROOT = Path(__file__).resolve().parents[2]

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
    import envtune_jax.models.hf_io as impl

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(impl, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        hf_io.save_pretrained(model, tmp_path / "out", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_export_copies_tokenizer_files(tied, tmp_path):
    source = tmp_path / "with_tokenizer"
    shutil.copytree(tied, source)
    tokenizer = {
        "tokenizer_config.json": json.dumps({"eos_token": "<|im_end|>", "model_max_length": 4096}),
        "tokenizer.json": json.dumps({"version": "1.0", "model": {"type": "BPE", "vocab": {"a": 0}}}),
    }
    for name, text in tokenizer.items():
        (source / name).write_text(text)
    (source / "generation_config.json").write_text(json.dumps({"temperature": 0.6}))
    (source / "notes.txt").write_text("not a tokenizer file")
    model = hf_io.load_pretrained(source, progress=False)
    out = hf_io.save_pretrained(model, tmp_path / "export", tokenizer_dir=source, progress=False)
    for name, text in tokenizer.items():
        assert (out / name).read_text() == text, name
    assert json.loads((out / "generation_config.json").read_text()) == {"temperature": 0.6}
    assert not (out / "notes.txt").exists()


@pytest.mark.parametrize(
    "hf_layout, layout, shape",
    [
        ("(N H) D", "D N H", (4, 6, 2)),
        ("D (N H)", "N H D", (6, 2, 4)),
        ("F D", "D F", (4, 6)),
        ("V D", "V D", (6, 4)),
        ("D", "D", (6,)),
    ],
)
def test_read_plan_reads_just_the_box(hf_layout, layout, shape):
    ours = np.random.RandomState(0).standard_normal(shape)
    hf = ours_to_hf(ours, hf_layout, layout)
    letters = layout.split()
    halves = [(slice(None), slice(0, n // 2), slice(n // 2, n)) for n in shape]
    for box in itertools.product(*halves):
        hf_index, block_shape, rest = hf_read_plan(hf_layout, layout, shape, box)
        read_bhf = hf[hf_index]
        np.testing.assert_array_equal(hf_to_ours(read_bhf, hf_layout, layout, block_shape)[rest], ours[box])
        cuts_head_dim = "H" in letters and box[letters.index("H")] != slice(None)
        if not cuts_head_dim:  # head_dim is never sharded; any other box is read exactly
            assert read_bhf.size == ours[box].size, box


MESH_LOAD = textwrap.dedent("""
    import sys, numpy as np, jax
    jax.config.update("jax_default_matmul_precision", "highest")
    from flax import nnx
    import envtune_jax.models.hf_io as impl
    from envtune_jax.models import hf_io
    from envtune_jax.mesh import MeshConfig, make_mesh
    reads = []  # (name, shape read, stored shape)
    plain_read = impl._read_slice

    def recording_read(handle, name, hf_index):
        array = plain_read(handle, name, hf_index)
        reads.append((name, array.shape, tuple(handle.get_slice(name).get_shape())))
        return array

    impl._read_slice = recording_read
    ckpt = sys.argv[1]
    tokens = np.random.RandomState(0).randint(0, 512, (4, 64))
    one = hf_io.load_pretrained(ckpt, progress=False)
    assert all(got == full for _, got, full in reads)
    reads.clear()
    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    model = hf_io.load_pretrained(ckpt, mesh=mesh, progress=False)
    params = lambda m: nnx.to_flat_state(nnx.state(m, nnx.Param))
    for (path, a), (_, b) in zip(params(one), params(model)):
        np.testing.assert_array_equal(np.asarray(a[...]), np.asarray(b[...]), err_msg=str(path))
    sharded = {var.get_metadata()["hf_key"] for _, var in params(model) if not var[...].sharding.is_fully_replicated}
    whole = sorted({name for name, got, full in reads if got == full and name in sharded})
    assert not whole, f"sharded weights read in full: {whole}"
    shapes = lambda name: [got for n, got, _ in reads if n == name]
    # gate [F=160, D=64] over tensor=2 x fsdp=2; the data=2 replicas of a shard share one read
    assert shapes("model.layers.0.mlp.gate_proj.weight") == [(80, 32)] * 4
    # q_proj [(N=8 H=24), D=64]: heads over tensor, rows of 4 whole heads
    assert shapes("model.layers.0.self_attn.q_proj.weight") == [(96, 32)] * 4
    assert shapes("model.norm.weight") == [(64,)]
    with jax.set_mesh(mesh):
        logits = np.asarray(nnx.jit(lambda m, t: m(t))(model, tokens))
    reference = np.asarray(one(tokens))
    err = np.linalg.norm(logits - reference) / np.linalg.norm(reference)
    print("relative error", err, "reads", len(reads))
    assert err <= 1e-6, err
""")


@pytest.mark.multidevice
def test_index_sharded_checkpoint_loads_onto_mesh_reading_only_each_shard(tmp_path):
    ckpt = write_tiny_qwen3(tmp_path / "ckpt", "tied_kv4_theta5e6", vocab_size=VOCAB, max_shard_size="100KB")
    assert len(json.loads((ckpt / "model.safetensors.index.json").read_text())["weight_map"]) > 0
    assert len(list(ckpt.glob("model-*.safetensors"))) > 2
    env = dict(
        os.environ,
        XLA_FLAGS="--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0",
        JAX_PLATFORMS="cpu",
        PYTHONPATH=str(ROOT),
    )
    result = subprocess.run(
        [sys.executable, "-c", MESH_LOAD, str(ckpt)], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
