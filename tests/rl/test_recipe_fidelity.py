"""The shipped recipes run the paper's method: the recipe card against the paper table (rl/paper_recipe.py),
the stage 3/4 instructions in a stage-3 episode's first prompt, and the rule that a config field its mode
ignores is an error naming it, for every row of every config class's FIELD_USE table. Config-level only:
no model is loaded."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest
import yaml

from envtune_jax.chat.conversation import TokenConversation
from envtune_jax.chat.prompts import QWEN_FC_STAGE34_INSTRUCTIONS
from envtune_jax.chat.tokenizer import default_tokenizer
from envtune_jax.cli.main import main
from envtune_jax.config import ConfigError, load, save
from envtune_jax.environments.bfcl_env import BfclEpisode
from envtune_jax.models.generation.config import SamplerConfig
from envtune_jax.rl.curriculum import AdvanceRule, StageConfig
from envtune_jax.rl.paper_recipe import PAPER_SETTINGS, PAPER_STAGES
from envtune_jax.rl.recipe_card import READERS, card_rows
from envtune_jax.rl.rl_config import LossConfig
from envtune_jax.rl.run_config import RECIPE_FIELD_USE, DataConfig, ModelSourceConfig, RunConfig, load_run_config
from envtune_jax.rl.stage_data import load_subset
from envtune_jax.rl.synthetic_config import SyntheticRecipe, WarmupConfig, load_synthetic_recipe
from envtune_jax.rl.train_step_config import TrainStepConfig

REPO = Path(__file__).resolve().parents[2]
RECIPES = sorted((REPO / "configs" / "recipes").glob("*.yaml"))
PAPER_RECIPE = REPO / "configs" / "recipes" / "qwen3_4b_instruct_2507.yaml"
SMOKE_RECIPES = {"tiny_cpu"}  # CPU-sized: only the method's settings must be the paper's


# ---------------------------------------------------------------- the recipe card against the paper table
@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_shipped_recipes_follow_the_paper_table(recipe):
    cfg, stages = load_run_config(recipe)
    assert [stage.name for stage in stages] == list(PAPER_STAGES)
    kinds = ("method",) if recipe.stem in SMOKE_RECIPES else ("method", "scale")
    rows = card_rows(cfg, stages)
    drift = [
        f"{r.stage}: {r.setting.label} = {r.shown}, paper {r.setting.figure(r.stage)}"
        for r in rows
        if r.status == "differs" and r.setting.kind in kinds
    ]
    assert not drift, drift
    assert len(rows) == len(stages) * len(PAPER_SETTINGS)


def test_the_card_reads_every_paper_setting_and_reports_drift():
    assert set(READERS) == {s.key for s in PAPER_SETTINGS}
    cfg, stages = load_run_config(PAPER_RECIPE, ["loss.eps_high=0.2", "stage_overrides=[samples_per_prompt=8]"])
    differing = {(r.stage, r.setting.key, r.setting.kind) for r in card_rows(cfg, stages) if r.status == "differs"}
    assert ("stage1_syntax", "eps_high", "method") in differing
    assert {(s, "samples_per_prompt", "scale") for s in PAPER_STAGES} <= differing


def test_recipe_show_prints_every_setting_of_every_stage(capsys):
    assert main(["recipe", "show", str(PAPER_RECIPE), "--check"]) == 0
    out = capsys.readouterr().out
    for stage in PAPER_STAGES:
        assert f"== {stage}" in out
    for setting in PAPER_SETTINGS:
        assert f"{setting.group}: {setting.label}" in out
    assert "95 (epochs binds: 20 epochs x 76 entries / 16 = 95; max_steps unset)" in out
    assert "yes (leading system message)" in out and "recompute [verl 0.4.1]" in out
    assert "method settings that differ from the paper: none" in out
    assert main(["recipe", "show", str(PAPER_RECIPE), "loss.kl_coef=0.01", "--check"]) == 1
    assert "method settings that differ from the paper: KL coefficient" in capsys.readouterr().out
    assert main(["recipe", "show", str(PAPER_RECIPE), "loss.kl_coef=0", "loss.kl_clamp=5"]) == 2
    assert "loss.kl_clamp=5.0 has no effect" in capsys.readouterr().err


def test_recipe_show_reads_a_recipe_built_on_a_base_without_starting_jax(tmp_path):
    """A recipe elsewhere that names the paper recipe as its `base:` (its stage paths still resolve); the card
    needs neither a model nor JAX; --check exits 1 on drift."""
    import os
    import subprocess
    import sys

    derived = tmp_path / "mine" / "derived.yaml"
    derived.parent.mkdir()
    derived.write_text(f"base: {os.path.relpath(PAPER_RECIPE, derived.parent)}\noptimizer: {{learning_rate: 2.0e-6}}\n")
    heavy = ("jax", "flax", "optax", "transformers", "torch", "tensorflow")
    probe = (
        "import sys; from envtune_jax.cli.main import main; code = main(sys.argv[1:]); "
        f"print('heavy:', [m for m in {heavy!r} if m in sys.modules]); sys.exit(code)"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for extra, code in (([], 0), (["--check"], 1)):
        result = subprocess.run(
            [sys.executable, "-c", probe, "recipe", "show", str(derived), *extra],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=env,
            timeout=60,
        )
        assert result.returncode == code, result.stderr
        assert "scale settings that differ from the paper: learning rate" in result.stdout
        assert result.stdout.rstrip().endswith("heavy: []"), result.stdout[-300:]


# ---------------------------------------------------------------- per-model recipes extend one base
BASE_RECIPE = REPO / "configs" / "recipes" / "environment_tuning_base.yaml"
MODEL_SETTINGS = {"model": {"ckpt"}, "run_dir": None, "train_step": {"micro_batch_size"}}


@pytest.mark.parametrize("name", ["qwen3_4b_instruct_2507", "qwen3_8b"])
def test_per_model_recipes_extend_the_base_with_only_their_models_settings(name):
    recipe = REPO / "configs" / "recipes" / f"{name}.yaml"
    raw = yaml.safe_load(recipe.read_text())
    assert raw.pop("base") == BASE_RECIPE.name
    assert {key: set(value) if isinstance(value, dict) else None for key, value in raw.items()} == MODEL_SETTINGS
    cfg, stages = load_run_config(recipe)
    base, base_stages = load_run_config(BASE_RECIPE)
    assert stages == base_stages
    expected = dataclasses.replace(
        base,
        run_dir=raw["run_dir"],
        model=dataclasses.replace(base.model, ckpt=raw["model"]["ckpt"]),
        train_step=dataclasses.replace(base.train_step, micro_batch_size=raw["train_step"]["micro_batch_size"]),
    )
    assert cfg == expected


def test_the_base_recipe_names_no_model_so_train_refuses_it(capsys):
    assert main(["train", "--config", str(BASE_RECIPE)]) == 2
    err = capsys.readouterr().err
    assert "names no model: set model.hf, model.ckpt or model.preset" in err and len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------- the stage 3/4 prompt reaches the model
def test_a_stage3_episode_prompt_carries_the_stage34_instructions_and_stage2s_does_not():
    _, stages = load_run_config(PAPER_RECIPE)
    by_name = {stage.name: stage for stage in stages}
    entry = load_subset("train", "package")[0]
    tokenizer = default_tokenizer()
    prompts = {}
    for name in ("stage2_hints", "stage3_hard", "stage4_independent"):
        stage = by_name[name]
        episode = BfclEpisode(entry, stage.environment)
        conversation = TokenConversation(tokenizer, stage.chat)  # as rl/rollout.py starts every episode
        conversation.start(episode.reset(), episode.tools())
        prompts[name] = conversation.text()
    assert prompts["stage3_hard"].startswith("<|im_start|>system\n" + QWEN_FC_STAGE34_INSTRUCTIONS + "\n\n# Tools\n")
    assert prompts["stage4_independent"] == prompts["stage3_hard"]
    assert "Guidelines" not in prompts["stage2_hints"]
    assert prompts["stage2_hints"].startswith("<|im_start|>system\n# Tools\n")
    assert prompts["stage3_hard"].endswith(prompts["stage2_hints"][len("<|im_start|>system\n") :])


# ---------------------------------------------------------------- a field its mode ignores is an error
def _config_classes(root: type, seen: set[type]) -> set[type]:
    seen.add(root)
    for field in dataclasses.fields(root):
        hint = typing.get_type_hints(root)[field.name]
        if dataclasses.is_dataclass(hint) and hint not in seen:
            _config_classes(hint, seen)
    return seen


CONFIG_CLASSES = (
    _config_classes(RunConfig, set()) | _config_classes(StageConfig, set()) | _config_classes(SyntheticRecipe, set())
)

# For every FIELD_USE row: overrides that set the field while its mode ignores it (the last override is the
# field itself). Loaded as a class on its own, or as a recipe (RunConfig rows and RECIPE_FIELD_USE).
BAD_COMBINATIONS: dict[tuple[type, str], list[str]] = {
    (LossConfig, "kl_estimator"): ["kl_coef=0", "kl_estimator=k1"],
    (LossConfig, "kl_clamp"): ["kl_coef=0", "kl_clamp=5"],
    (LossConfig, "seq_sum_norm_length"): ["loss_agg_mode=token-mean", "seq_sum_norm_length=24576"],
    (LossConfig, "advantage_eps"): ["scale_advantages_by_std=false", "advantage_eps=1e-6"],
    (LossConfig, "advantage_std_ddof"): ["scale_advantages_by_std=false", "advantage_std_ddof=0"],
    (TrainStepConfig, "weighting_micro_batch_rows"): ["loss_weighting=batch", "weighting_micro_batch_rows=8"],
    (SamplerConfig, "top_k"): ["greedy=true", "top_k=20"],
    (SamplerConfig, "top_p"): ["greedy=true", "top_p=0.9"],
    (SamplerConfig, "prefix_lanes"): ["shared_prefix=false", "prefix_lanes=4"],
    (SamplerConfig, "prefix_regions"): ["shared_prefix=false", "prefix_regions=4"],
    (SamplerConfig, "prefix_attention"): ["shared_prefix=false", "prefix_attention=reference"],
    (TrainStepConfig, "prefix_groups_per_row"): ["shared_prefix=off", "prefix_groups_per_row=2"],
    (ModelSourceConfig, "seed"): ["ckpt=ckpt/model", "seed=3"],
    (ModelSourceConfig, "bpe_ranks"): ["ckpt=ckpt/model", "bpe_ranks=8192"],
    (DataConfig, "data_dir"): ["source=package", "data_dir=data"],
    (DataConfig, "shortest_prompts_first"): ["limit_per_category=null", "shortest_prompts_first=true"],
    (StageConfig, "validation_entries"): ["validation_every=0", "validation_entries=8"],
    **{
        (WarmupConfig, name): ["steps=0", f"{name}={value}"]
        for name, value in (
            ("batch", 8),
            ("learning_rate", 0.1),
            ("device_accuracy", 0.5),
            ("value_accuracy", 0.5),
            ("syntax_accuracy", 0.5),
            ("attempts", 3),
        )
    },
    # the synthetic run (its own recipe, configs/synthetic/learning_run.yaml) reads none of these
    **{
        (SyntheticRecipe, field): [setting]
        for field, setting in (
            ("run.run_dir", "run.run_dir=runs/elsewhere"),
            ("run.data", "run.data.source=package"),
            ("run.checkpoint", "run.checkpoint.keep=5"),
            ("run.stages", "run.stages=[a.yaml]"),
            ("run.stage_overrides", "run.stage_overrides=[max_steps=3]"),
            ("run.logging.progress_bar", "run.logging.progress_bar=false"),
            ("stage.data", "stage.data=base_train"),
            ("stage.epochs", "stage.epochs=3"),
            ("stage.export_hf", "stage.export_hf=false"),
        )
    },
    **{
        (AdvanceRule, name): ["kind=fixed", f"{name}={value}"]
        for name, value in (
            ("patience", 3),
            ("min_delta", 0.02),
            ("grad_norm_window", 5),
            ("grad_norm_cv_max", 0.3),
            ("min_steps", 10),
        )
    },
    (RunConfig, "train_step.temperature"): ["train_step.temperature=1.0"],
    (RunConfig, "sampler.max_new_tokens"): ["sampler.max_new_tokens=4096"],
    (RunConfig, "rollout.decode_chunk"): ["sampler.compact_rows=false", "rollout.decode_chunk=64"],
    (None, "data.validation_limit_per_category"): [
        "stage_overrides=[validation_every=0,advance.kind=fixed]",
        "data.validation_limit_per_category=4",
    ],
    **{
        (None, f"rollout.{limit}"): [f"stage_overrides=[rollout.{limit}=2048]", f"rollout.{limit}=4096"]
        for limit in ("max_prompt_tokens", "max_response_tokens", "max_context_tokens", "max_new_tokens_per_step")
    },
}


def test_every_config_class_declares_which_fields_its_modes_ignore():
    undeclared = sorted(cls.__name__ for cls in CONFIG_CLASSES if "FIELD_USE" not in vars(cls))
    assert not undeclared, f"config classes without a FIELD_USE table: {undeclared}"
    rows = {(cls, row.field) for cls in CONFIG_CLASSES for row in cls.FIELD_USE}
    rows |= {(None, row.field) for row in RECIPE_FIELD_USE}
    assert rows == set(BAD_COMBINATIONS)  # every row has a bad combination below, and nothing else does


@pytest.mark.parametrize("cls,field", list(BAD_COMBINATIONS), ids=lambda x: getattr(x, "__name__", x))
def test_a_field_its_mode_ignores_is_an_error_naming_it(cls, field, tmp_path):
    overrides = BAD_COMBINATIONS[(cls, field)]
    recipe = tmp_path / "recipe.yaml"  # every run setting at its default, the shipped stages
    stage_files = sorted(str(p) for p in (REPO / "configs" / "stages").glob("*.yaml"))
    recipe.write_text(f"sampler: {{max_cache_len: 32768}}\nstages: [{', '.join(stage_files)}]\n")

    def build(items):
        if cls is SyntheticRecipe:
            return load_synthetic_recipe(items)
        return load_run_config(recipe, items) if cls in (None, RunConfig) else load(cls, None, items)

    with pytest.raises(ConfigError, match=rf"\b{field.replace('.', '[.]')}=.* has no effect: "):
        build(overrides)
    build(overrides[:-1])  # the same settings without the ignored field are fine


def test_a_saved_run_config_holds_only_the_fields_in_effect_and_loads_back(tmp_path):
    cfg, _ = load_run_config(PAPER_RECIPE, ["loss.kl_coef=0", "sampler.compact_rows=false"])
    save(cfg, tmp_path / "config.yaml")
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert "kl_estimator" not in saved["loss"] and "kl_clamp" not in saved["loss"]
    assert "decode_chunk" not in saved["rollout"] and "max_new_tokens" not in saved["sampler"]
    assert "temperature" not in saved["train_step"] and saved["loss"]["kl_coef"] == 0
    assert load(RunConfig, tmp_path / "config.yaml") == cfg
