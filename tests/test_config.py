"""Typed YAML configs: overrides, unknown keys with suggestions, wrong types, includes."""
from __future__ import annotations

import dataclasses

import pytest

from envtune_jax.config import ConfigError, load, save
from models.config import PRESETS, Qwen3Config, from_hf_dict, preset, to_hf_dict


@dataclasses.dataclass
class Inner:
    learning_rate: float = 1e-6
    steps: int = 10
    mode: str = "token-mean"


@dataclasses.dataclass
class Outer:
    name: str = "run"
    inner: Inner = dataclasses.field(default_factory=Inner)
    enabled: bool = True
    stages: list[int] = dataclasses.field(default_factory=lambda: [1, 2])
    limit: int | None = None


def test_yaml_and_overrides(tmp_path):
    (tmp_path / "base.yaml").write_text("name: base\ninner:\n  steps: 3\n")
    (tmp_path / "run.yaml").write_text("base: base.yaml\ninner:\n  learning_rate: 2e-6\n")
    cfg = load(Outer, tmp_path / "run.yaml", ["inner.mode=seq-mean-token-mean", "enabled=false", "stages=[3,4]", "limit=7"])
    assert cfg == Outer("base", Inner(2e-6, 3, "seq-mean-token-mean"), False, [3, 4], 7)
    save(cfg, tmp_path / "resolved.yaml")
    assert load(Outer, tmp_path / "resolved.yaml") == cfg


def test_unknown_key_suggests_the_closest():
    with pytest.raises(ConfigError, match=r"unknown config key 'inner.learning_rte'.*'learning_rate'"):
        load(Outer, None, ["inner.learning_rte=1"])


def test_unknown_key_in_yaml(tmp_path):
    (tmp_path / "bad.yaml").write_text("inner:\n  stepz: 3\n")
    with pytest.raises(ConfigError, match=r"inner.stepz.*'steps'"):
        load(Outer, tmp_path / "bad.yaml")


def test_wrong_type_is_rejected():
    with pytest.raises(ConfigError, match="inner.steps: expected an integer"):
        load(Outer, None, ["inner.steps=many"])
    with pytest.raises(ConfigError, match="expected true/false"):
        load(Outer, None, ["enabled=maybe"])


def test_missing_file_and_malformed_override(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load(Outer, tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="key=value"):
        load(Outer, None, ["inner.steps"])


def test_hf_config_round_trip_for_every_preset():
    for name, cfg in PRESETS.items():
        assert from_hf_dict(to_hf_dict(cfg)) == cfg.replace(param_dtype="float32", dtype="float32"), name


def test_presets_have_the_published_shapes():
    four = preset("qwen3-4b-instruct-2507")
    assert (four.num_layers, four.hidden_size, four.num_heads, four.num_kv_heads, four.rope_theta) == (36, 2560, 32, 8, 5e6)
    assert abs(four.num_params - 4.02e9) / 4.02e9 < 0.01
    assert not preset("qwen3-8b").tie_word_embeddings
    with pytest.raises(KeyError, match="did you mean 'qwen3-4b'"):
        preset("qwen3-4c")


def test_remat_policy_per_layer():
    cfg = Qwen3Config(num_layers=2, remat="full,dots")
    assert cfg.remat_policies() == ("full", "dots")
    with pytest.raises(ValueError, match="unknown remat policy"):
        Qwen3Config(num_layers=2, remat="everything")
