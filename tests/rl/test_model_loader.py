"""The one model loader (rl/model_loader.py): every source (HF folder, envtune checkpoint, preset with random
weights) gets the dtypes of its use from one rule, the tokenizer comes from the checkpoint's own files or else
the bundled one, random weights on a mesh equal the eager ones, and every command loads through it."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import pytest
from flax import nnx

from envtune_jax.chat.tokenizer import compact_qwen_tokenizer, save_tokenizer
from envtune_jax.cli.main import main
from envtune_jax.models import checkpointing, hf_io
from envtune_jax.models.dtype_rule import model_dtypes
from envtune_jax.rl import model_loader
from envtune_jax.rl.model_loader import load_model

ROOT = Path(__file__).resolve().parents[2]
SMALL = {"vocab_size": 512}  # the tiny preset with a vocabulary a 256-rank cut tokenizer fits


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("loader")
    model = load_model(use="convert", preset="tiny", preset_changes=SMALL).model
    tokenizer_dir = save_tokenizer(compact_qwen_tokenizer(256), root / "tokenizer")
    return {
        "hf": hf_io.save_pretrained(model, root / "hf", tokenizer_dir=tokenizer_dir, progress=False),
        "hf_bare": hf_io.save_pretrained(model, root / "hf_bare", progress=False),  # no tokenizer files
        "ckpt": checkpointing.save_model(model, root / "ckpt", tokenizer_dir=tokenizer_dir),
    }


@pytest.mark.parametrize(
    "use, param, compute, expected",
    [
        ("train", None, None, ("float32", "bfloat16")),
        ("inference", None, None, ("bfloat16", "bfloat16")),
        ("convert", None, None, ("float32", "float32")),
        ("inference", "float32", None, ("float32", "float32")),  # --dtype: weights and compute
        ("inference", None, "float32", ("float32", "float32")),
        ("train", None, "float32", ("float32", "float32")),  # training keeps float32 weights
        ("train", "bfloat16", None, ("bfloat16", "bfloat16")),
        ("train", "float32", "bfloat16", ("float32", "bfloat16")),
    ],
)
def test_one_dtype_rule_by_use_with_explicit_dtypes_winning(use, param, compute, expected):
    dtypes = model_dtypes(use, param, compute)
    assert (dtypes.param, dtypes.compute) == expected


@pytest.mark.parametrize("source", ["hf", "ckpt", "preset"])
def test_every_source_gets_the_dtypes_of_its_use_whatever_it_stores(checkpoints, source):
    where = {
        "preset": {"preset": "tiny", "preset_changes": SMALL},
        "hf": {"hf": checkpoints["hf"]},
        "ckpt": {"ckpt": checkpoints["ckpt"]},
    }[source]
    for use in ("train", "inference", "convert"):
        model = load_model(use=use, progress=False, **where).model
        rule = model_dtypes(use)
        assert (model.config.param_dtype, model.config.dtype) == (rule.param, rule.compute)
        assert {leaf.dtype.name for leaf in jax.tree.leaves(nnx.state(model, nnx.Param))} == {rule.param}


def test_generate_and_eval_load_an_hf_folder_in_the_same_dtypes(checkpoints):
    """`envtune generate --hf` and `envtune eval --hf` without --dtype: the inference rule, bfloat16, for both."""
    from envtune_jax.cli.common import load_model_from_args
    from envtune_jax.rl.model_policy import build_model_policy

    generate = load_model_from_args(argparse.Namespace(hf=checkpoints["hf"], ckpt=None, dtype=None)).model
    evaluate = build_model_policy(hf_dir=str(checkpoints["hf"]), batch_size=1, max_cache_len=64).engine.config
    assert (generate.config.param_dtype, generate.config.dtype) == (evaluate.param_dtype, evaluate.dtype)
    assert evaluate.param_dtype == "bfloat16"


def test_the_tokenizer_is_the_checkpoints_own_else_the_bundled_one_said_once(checkpoints, capsys, monkeypatch):
    from envtune_jax.chat import tokenizer as tokenizer_module

    monkeypatch.setattr(tokenizer_module, "_NOTED_CHECKPOINTS", set())
    for source in ("hf", "ckpt"):
        loaded = load_model(use="inference", progress=False, **{source: checkpoints[source]})
        assert loaded.tokenizer.get_vocab_size() == compact_qwen_tokenizer(256).get_vocab_size()
        assert loaded.tokenizer_origin == str(loaded.tokenizer_dir)
    assert capsys.readouterr().err == ""
    for _ in range(2):
        bare = load_model(use="inference", hf=checkpoints["hf_bare"], progress=False)
        with pytest.raises(tokenizer_module.TokenizerLoadError, match="151669 ids but the model only 512"):
            bare.tokenizer  # the bundled Qwen3 tokenizer does not fit this 512-row model: said, not misused
    assert capsys.readouterr().err.count("has no tokenizer files") == 1
    assert bare.tokenizer_origin == "the bundled Qwen3 tokenizer"
    cut = load_model(use="train", preset="tiny", preset_changes=SMALL, bpe_ranks=256)
    assert cut.tokenizer.token_to_id("<|im_end|>") == 258 and cut.tokenizer_dir is None
    assert cut.tokenizer_origin == "the bundled Qwen3 tokenizer, cut to its first 256 BPE ranks"
    assert capsys.readouterr().err == ""  # random weights have no files to miss


def test_exactly_one_source_is_named():
    from envtune_jax.config import ConfigError

    with pytest.raises(ConfigError, match="exactly one of hf, ckpt, preset"):
        load_model(use="inference", hf="a", preset="tiny")
    with pytest.raises(ConfigError, match="bpe_ranks"):
        load_model(use="inference", hf="a", bpe_ranks=256)


MESH_CHECK = textwrap.dedent("""
    import numpy as np, jax
    from flax import nnx
    from envtune_jax.mesh import MeshConfig, make_mesh
    from envtune_jax.models.config import preset
    from envtune_jax.models.qwen3 import init_model
    from envtune_jax.rl.model_loader import random_weights
    assert len(jax.devices()) == 4
    cfg = preset("tiny", vocab_size=512, param_dtype="bfloat16")
    eager = nnx.to_flat_state(nnx.state(init_model(cfg, 3), nnx.Param))
    mesh = make_mesh(MeshConfig(data=1, fsdp=2, tensor=2))
    placed = nnx.to_flat_state(nnx.state(random_weights(cfg, mesh, 3), nnx.Param))
    assert [path for path, _ in eager] == [path for path, _ in placed]
    for (path, a), (_, b) in zip(eager, placed):
        assert np.array_equal(np.asarray(a[...]), np.asarray(b[...])), path
        assert len(b[...].sharding.device_set) == 4
    assert any(not b[...].sharding.is_fully_replicated for _, b in placed)
    print("same")
""")


def test_random_weights_on_a_mesh_are_created_sharded_and_equal_the_eager_ones():
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT)
    )
    done = subprocess.run([sys.executable, "-c", MESH_CHECK], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "same" in done.stdout, done.stderr[-3000:]


class _Loaded(Exception):
    """Raised by the recording loader instead of loading."""


def test_every_command_loads_through_the_one_loader_with_its_use(checkpoints, tmp_path, monkeypatch):
    calls = []

    def record(**kwargs):
        calls.append((kwargs["use"], kwargs.get("param_dtype")))
        raise _Loaded

    monkeypatch.setattr(model_loader, "load_model", record)
    recipe = str(ROOT / "configs" / "recipes" / "tiny_cpu.yaml")
    commands = [
        (["generate", "--hf", str(checkpoints["hf"]), "--prompt", "hi"], "inference"),
        (
            [
                "eval",
                "--hf",
                str(checkpoints["hf"]),
                "--categories",
                "base",
                "--limit",
                "1",
                "--data-source",
                "package",
                "--out",
                str(tmp_path / "eval"),
            ],
            "inference",
        ),
        (["convert", "--hf", str(checkpoints["hf"]), "--out", str(tmp_path / "converted")], "convert"),
        (["export", "--ckpt", str(checkpoints["ckpt"]), "--out", str(tmp_path / "exported")], "convert"),
        (["bench", "generate", "--preset", "tiny", "--random-weights"], "inference"),
        (["bench", "train", "--preset", "tiny", "--random-weights"], "train"),
        (["train", "--config", recipe, f"run_dir={tmp_path / 'run'}"], "train"),
    ]
    for argv, use in commands:
        with pytest.raises(_Loaded):
            main(argv)
        assert calls[-1][0] == use, argv
    assert len(calls) == len(commands)
