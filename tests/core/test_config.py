"""Typed YAML configs: overrides, unknown keys with suggestions, wrong types, includes."""

from __future__ import annotations

import dataclasses

import pytest

from envtune_jax.config import ConfigError, load, save
from envtune_jax.models.config import PRESETS, Qwen3Config, from_hf_dict, preset, to_hf_dict


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
    cfg = load(
        Outer, tmp_path / "run.yaml", ["inner.mode=seq-mean-token-mean", "enabled=false", "stages=[3,4]", "limit=7"]
    )
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
    assert (four.num_layers, four.hidden_size, four.num_heads, four.num_kv_heads, four.rope_theta) == (
        36,
        2560,
        32,
        8,
        5e6,
    )
    assert abs(four.num_params - 4.02e9) / 4.02e9 < 0.01
    assert not preset("qwen3-8b").tie_word_embeddings
    with pytest.raises(KeyError, match="did you mean 'qwen3-4b'"):
        preset("qwen3-4c")


def test_remat_policy_per_layer():
    cfg = Qwen3Config(num_layers=2, remat="full,dots")
    assert cfg.remat_policies() == ("full", "dots")
    with pytest.raises(ValueError, match="unknown remat policy"):
        Qwen3Config(num_layers=2, remat="everything")


def test_stage_paths_of_a_base_recipe_stay_relative_to_it(tmp_path):
    """A user's recipe in another folder with `base: <path to configs/recipes/tiny_cpu.yaml>` finds the
    stage files the base lists (they are relative to the base file, not to the user's file)."""
    import os
    from pathlib import Path

    from envtune_jax.rl.run_config import load_run_config

    shipped = Path(__file__).resolve().parents[2] / "configs" / "recipes" / "tiny_cpu.yaml"
    mine = tmp_path / "mine" / "my.yaml"
    mine.parent.mkdir()
    mine.write_text(f"base: {os.path.relpath(shipped, mine.parent)}\nrun_dir: {tmp_path / 'run'}\n")
    cfg, stages = load_run_config(mine)
    assert [stage.name for stage in stages] == ["stage1_syntax", "stage2_hints", "stage3_hard", "stage4_independent"]
    assert all((mine.parent / path).resolve().is_file() for path in cfg.stages)  # saved relative to my.yaml


def test_yaml_syntax_errors_name_file_line_and_column(tmp_path):
    (tmp_path / "bad.yaml").write_text("name: run\ninner: {steps: 3\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml:3:1: not valid YAML \(expected ',' or '\}'") as info:
        load(Outer, tmp_path / "bad.yaml")
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match=r"override 'stages=\[1, 2': not valid YAML"):
        load(Outer, None, ["stages=[1, 2"])


def test_zero_and_negative_sizes_are_rejected_naming_the_field():
    from envtune_jax.mesh import MeshConfig
    from envtune_jax.models.generation.config import SamplerConfig
    from envtune_jax.rl.curriculum import StageConfig
    from envtune_jax.rl.rollout_config import RolloutConfig

    for cls, override, message in [
        (StageConfig, "max_steps=-1", "max_steps must be ≥ 1, got -1"),
        (StageConfig, "samples_per_prompt=1", "samples_per_prompt must be ≥ 2"),
        (SamplerConfig, "max_cache_len=0", "max_cache_len must be ≥ 1"),
        (SamplerConfig, "temperature=0", "temperature must be > 0"),
        (RolloutConfig, "max_response_tokens=-1", "max_response_tokens must be ≥ 1"),
        (MeshConfig, "tensor=0", "positive or -1"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load(cls, None, [override])


def test_loss_config_names_are_the_registries_names():
    from envtune_jax.rl import losses
    from envtune_jax.rl.rl_config import AGGREGATION_NAMES, KL_ESTIMATOR_NAMES, RATIO_NAMES

    assert set(KL_ESTIMATOR_NAMES) == set(losses.KL_ESTIMATORS)
    assert set(AGGREGATION_NAMES) == set(losses.AGGREGATIONS)
    assert set(RATIO_NAMES) == set(losses.RATIOS)


def test_a_recipe_loads_without_jax():
    """Recipes are checked before anything heavy is imported (the config dataclasses live in light modules)."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    probe = (
        "import sys; from envtune_jax.rl.run_config import load_run_config; "
        "load_run_config('configs/recipes/qwen3_4b_instruct_2507.yaml'); "
        "print([m for m in ('jax', 'flax', 'optax', 'transformers', 'torch', 'tensorflow') if m in sys.modules])"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        cwd=root,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(root)},
    )
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stdout + result.stderr
