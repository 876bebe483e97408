"""The HF loader refuses what it cannot run or read — settings this Qwen3 does not compute, weights that are
not floating point, index entries outside the folder, damaged files — with one typed error naming the file
and the field or tensor, which `envtune` shows as one line with exit code 2."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from envtune_jax.cli.main import main
from envtune_jax.models import hf_io
from tests.conftest import write_tiny_qwen3

TENSOR = "model.layers.0.mlp.up_proj.weight"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_qwen3(tmp_path_factory.mktemp("tiny") / "ckpt", "tied_kv2", vocab_size=128)


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    return write_tiny_qwen3(
        tmp_path_factory.mktemp("sharded") / "ckpt", "tied_kv2", vocab_size=128, max_shard_size="100KB"
    )


def _copy(source, tmp_path, name="bad"):
    target = tmp_path / name
    shutil.copytree(source, target)
    return target


def _edit_config(folder, **changes):
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"use_sliding_window": True, "sliding_window": 4096}, r"use_sliding_window=True .*full attention only"),
        ({"hidden_act": "gelu"}, r"hidden_act='gelu'.*silu only"),
        ({"attention_bias": True}, r"attention_bias=True.*no biases"),
        ({"rope_scaling": {"factor": 4.0}}, r"rope_scaling .*names no rope_type"),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, r"rope_scaling of rope_type 'yarn' is not supported"),
        ({"layer_types": ["full_attention", "sliding_attention"]}, r"layer_types lists \['sliding_attention'\]"),
        ({"hidden_size": "64"}, r"field 'hidden_size' is '64'; expected a positive integer"),
        ({"num_key_value_heads": 3}, r"num_attention_heads 4 is not a multiple of num_key_value_heads 3"),
        ({"rms_norm_eps": None}, r"missing field 'rms_norm_eps'"),
    ],
)
def test_settings_this_qwen3_does_not_compute_are_refused(tiny, tmp_path, changes, message):
    bad = _copy(tiny, tmp_path)
    _edit_config(bad, **changes)
    with pytest.raises(hf_io.NotAQwen3Checkpoint, match=r"config\.json: " + message):
        hf_io.load_pretrained(bad, progress=False)


def test_default_rope_and_a_theta_only_rope_parameters_load(tiny, tmp_path):
    ok = _copy(tiny, tmp_path)
    _edit_config(ok, rope_scaling={"type": "default"}, rope_parameters={"rope_theta": 1e6})
    assert hf_io.load_pretrained(ok, progress=False).config.rope_theta == 1e6


@pytest.mark.parametrize("text", ['{"model_type": "qwen3", "hidden_size": 64,', "\x00\x01garbage", "[1, 2]"])
def test_a_broken_config_json_is_named(tiny, tmp_path, text):
    bad = _copy(tiny, tmp_path)
    (bad / "config.json").write_text(text)
    with pytest.raises(hf_io.NotAQwen3Checkpoint, match=r"config\.json: (not valid JSON|expected a JSON object)"):
        hf_io.load_pretrained(bad, progress=False)


@pytest.mark.parametrize("dtype", [np.int32, np.int8, np.bool_])
def test_integer_or_bool_weights_are_refused_naming_the_tensor(tiny, tmp_path, dtype):
    bad = _copy(tiny, tmp_path)
    tensors = load_file(str(bad / "model.safetensors"))
    tensors[TENSOR] = (tensors[TENSOR] > 0).astype(dtype)
    save_file(tensors, str(bad / "model.safetensors"))
    with pytest.raises(
        hf_io.CheckpointError, match=rf"model\.safetensors: tensor '{TENSOR}' is stored as (I32|I8|BOOL)"
    ):
        hf_io.load_pretrained(bad, progress=False)


@pytest.mark.parametrize("cut", ["half", "header", "garbage"])
def test_truncated_or_garbage_safetensors_are_named(tiny, tmp_path, cut):
    bad = _copy(tiny, tmp_path)
    path = bad / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes({"half": data[: len(data) // 2], "header": data[:20], "garbage": b"\x93" * 5000}[cut])
    with pytest.raises(hf_io.CheckpointError, match=r"model\.safetensors: not a readable safetensors file"):
        hf_io.load_pretrained(bad, progress=False)


def test_a_truncated_shard_of_an_indexed_checkpoint_is_named(sharded, tmp_path):
    bad = _copy(sharded, tmp_path)
    shard = sorted(bad.glob("model-*.safetensors"))[1]
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(hf_io.CheckpointError, match=rf"{shard.name}: not a readable safetensors file"):
        hf_io.load_pretrained(bad, progress=False)


@pytest.mark.parametrize("entry", ["../outside.safetensors", "/etc/passwd", "./{first}/../../x.safetensors", 7])
def test_weight_map_entries_outside_the_folder_are_refused(sharded, tmp_path, entry):
    bad = _copy(sharded, tmp_path)
    index = json.loads((bad / "model.safetensors.index.json").read_text())
    first = sorted(index["weight_map"].values())[0]
    if isinstance(entry, str):
        entry = entry.format(first=first)
        shutil.copy(bad / first, tmp_path / "outside.safetensors")  # a real file is there: still refused
    index["weight_map"][TENSOR] = entry
    (bad / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(hf_io.CheckpointError, match=rf"weight_map\['{TENSOR}'\] = .* is not a file inside"):
        hf_io.load_pretrained(bad, progress=False)


def _damage(folder, fault):
    """Applies one file-level fault to a copy of a checkpoint folder."""
    index_path = folder / "model.safetensors.index.json"
    if fault == "cut_file":
        path = sorted(folder.glob("*.safetensors"))[-1]
        path.write_bytes(path.read_bytes()[:-64])
    elif fault == "garbage":
        sorted(folder.glob("*.safetensors"))[0].write_bytes(b"\x93" * 5000)
    elif fault == "missing_shard":
        sorted(folder.glob("model-*.safetensors"))[0].unlink()
    elif fault == "outside_entry":
        index = json.loads(index_path.read_text())
        index["weight_map"][TENSOR] = "../outside.safetensors"
        index_path.write_text(json.dumps(index))
    elif fault == "broken_index":
        index_path.write_text('{"weight_map": {')
    elif fault == "no_weights":
        for path in [*folder.glob("*.safetensors"), *folder.glob("*.index.json")]:
            path.unlink()


@pytest.mark.parametrize(
    "fault, layout",
    [
        ("cut_file", "tiny"),
        ("garbage", "tiny"),
        ("cut_file", "sharded"),
        ("missing_shard", "sharded"),
        ("outside_entry", "sharded"),
        ("broken_index", "sharded"),
        ("no_weights", "tiny"),
    ],
)
def test_the_command_line_check_and_the_loader_refuse_a_damaged_folder_with_the_same_error(
    tiny, sharded, tmp_path, fault, layout
):
    """One JAX-free module (models/hf_files.py) reads the index and the file headers for both: the check that
    runs before any heavy import and the loader raise the same CheckpointError, word for word."""
    from envtune_jax.cli import validate

    bad = _copy({"tiny": tiny, "sharded": sharded}[layout], tmp_path)
    _damage(bad, fault)
    with pytest.raises(hf_io.CheckpointError) as checked:
        validate.hf_checkpoint(bad)
    with pytest.raises(hf_io.CheckpointError) as loaded:
        hf_io.load_pretrained(bad, progress=False)
    assert str(checked.value) == str(loaded.value)
    assert str(bad) in str(checked.value)


def test_the_cli_shows_a_loader_error_as_one_line_with_exit_2(tiny, tmp_path, capsys):
    bad = _copy(tiny, tmp_path)
    path = bad / "model.safetensors"
    whole = path.read_bytes()
    path.write_bytes(whole[:-64])  # (the command's argument check reads the header and refuses it before loading)
    assert main(["convert", "--hf", str(bad), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "model.safetensors: not a readable safetensors file (truncated" in err, err
    assert not (tmp_path / "out").exists()
    path.write_bytes(whole)
    tensors = load_file(str(path))
    tensors[TENSOR] = (tensors[TENSOR] > 0).astype(np.int32)  # a whole file: only the loader refuses it
    save_file(tensors, str(path))
    assert main(["convert", "--hf", str(bad), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()  # the loading bar, closed, then the error as the last line
    lines = [line for line in err.splitlines() if not line.startswith("loading bad:")]
    assert len(lines) == 1 and err.splitlines()[-1] == lines[0], err
    assert f"model.safetensors: tensor '{TENSOR}' is stored as I32" in lines[0], err
    assert not (tmp_path / "out").exists()
    _edit_config(bad, use_sliding_window=True)
    assert main(["convert", "--hf", str(bad), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "use_sliding_window=True" in err, err
