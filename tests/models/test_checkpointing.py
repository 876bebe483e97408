"""Model checkpoints: convert → restore (same and other mesh, other dtype) → export, via the CLI too;
a failed convert keeps the previous checkpoint and leaves no partial one."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp
import pytest

from envtune_jax.cli.main import main as envtune
from envtune_jax.models import checkpointing, hf_io
from tests.conftest import hf_logits, write_tiny_qwen3

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return write_tiny_qwen3(tmp_path_factory.mktemp("src"), "untied_kv1", vocab_size=512)


def test_cli_convert_then_export_round_trips_through_transformers(source, tmp_path):
    assert envtune(["convert", "--hf", str(source), "--out", str(tmp_path / "ckpt")]) == 0
    assert (tmp_path / "ckpt" / "model_config.json").is_file()
    assert envtune(["export", "--ckpt", str(tmp_path / "ckpt"), "--out", str(tmp_path / "hf")]) == 0
    tokens = np.random.RandomState(0).randint(0, 512, (1, 48))
    np.testing.assert_array_equal(hf_logits(tmp_path / "hf", tokens), hf_logits(source, tokens))


def test_restore_in_another_dtype(source, tmp_path):
    model = hf_io.load_pretrained(source, progress=False)
    checkpointing.save_model(model, tmp_path / "ckpt")
    restored = checkpointing.load_model(tmp_path / "ckpt", dtype="bfloat16")
    assert restored.layers[0].mlp.up[...].dtype == np.dtype("bfloat16")
    np.testing.assert_array_equal(np.asarray(restored.embed[...]), np.asarray(model.embed[...]).astype("bfloat16"))


def test_cli_reports_bad_paths_without_traceback(tmp_path, capsys):
    assert envtune(["export", "--ckpt", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "missing: not found" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_convert_and_export_replace_only_their_own_output(source, tmp_path, capsys):
    """An earlier output of the same command is replaced; a folder the command did not write is refused and
    left as it was, unless --overwrite; the input is never the output. A source without tokenizer files is
    said so once."""
    out = tmp_path / "ckpt"
    assert envtune(["convert", "--hf", str(source), "--out", str(out)]) == 0
    assert capsys.readouterr().err.count("has no tokenizer files") == 1
    assert envtune(["convert", "--hf", str(source), "--out", str(out)]) == 0  # its own earlier output
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    assert envtune(["convert", "--hf", str(source), "--out", str(mine)]) == 2
    assert envtune(["export", "--ckpt", str(out), "--out", str(mine)]) == 2
    assert envtune(["export", "--ckpt", str(out), "--out", str(out)]) == 2
    assert envtune(["convert", "--hf", str(source), "--out", str(source)]) == 2
    assert (mine / "notes.txt").read_text() == "keep" and (out / "model_config.json").is_file()
    assert (source / "model.safetensors").is_file()
    capsys.readouterr()
    assert envtune(["export", "--ckpt", str(out), "--out", str(mine), "--overwrite"]) == 0
    assert capsys.readouterr().err.count("holds no tokenizer files") == 1
    assert not (mine / "notes.txt").exists() and (mine / "config.json").is_file()
    assert envtune(["export", "--ckpt", str(out), "--out", str(mine)]) == 0  # now its own output


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_failed_convert_keeps_the_previous_checkpoint_and_leaves_no_partial_one(source, tmp_path, monkeypatch):
    out = tmp_path / "ckpt"
    assert envtune(["convert", "--hf", str(source), "--out", str(out)]) == 0
    before = _snapshot(out)
    bad = tmp_path / "bad"
    shutil.copytree(source, bad)
    (bad / "model.safetensors").unlink()
    assert envtune(["convert", "--hf", str(bad), "--out", str(out)]) == 2

    def half_written_then_broken(self, directory, *args, **kwargs):
        Path(directory).mkdir(parents=True)
        (Path(directory) / "half-written").write_text("x")
        raise OSError("disk full")

    with monkeypatch.context() as patch:
        patch.setattr(ocp.StandardCheckpointer, "save", half_written_then_broken)
        for target in (out, tmp_path / "fresh"):
            with pytest.raises(OSError, match="disk full"):
                envtune(["convert", "--hf", str(source), "--out", str(target)])
    assert _snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad", "ckpt"]
    assert envtune(["convert", "--hf", str(source), "--out", str(out), "--dtype", "bfloat16"]) == 0
    assert json.loads((out / "model_config.json").read_text())["model"]["param_dtype"] == "bfloat16"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad", "ckpt"]


RESTORE_ON_MESH = textwrap.dedent("""
    import sys, numpy as np, jax
    from envtune_jax.models import checkpointing
    from envtune_jax.mesh import MeshConfig, make_mesh
    ckpt, expected = sys.argv[1], np.load(sys.argv[2])
    mesh = make_mesh(MeshConfig(data=1, fsdp=4, tensor=2))
    model = checkpointing.load_model(ckpt, mesh=mesh)
    gate = model.layers[0].mlp.gate[...]
    assert gate.addressable_shards[0].data.shape == (gate.shape[0] // 4, gate.shape[1] // 2), gate.sharding
    np.testing.assert_array_equal(np.asarray(gate), expected)
    print("ok")
""")


@pytest.mark.multidevice
def test_checkpoint_written_on_one_device_restores_sharded_on_eight(source, tmp_path):
    model = hf_io.load_pretrained(source, progress=False)
    checkpointing.save_model(model, tmp_path / "ckpt")
    np.save(tmp_path / "gate.npy", np.asarray(model.layers[0].mlp.gate[...]))
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT)
    )
    result = subprocess.run(
        [sys.executable, "-c", RESTORE_ON_MESH, str(tmp_path / "ckpt"), str(tmp_path / "gate.npy")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
