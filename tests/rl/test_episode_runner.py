"""The episode runner with evaluation's re-render protocol (rl/model_policy.py) on a tiny random model: a
shared-prefix engine, whose first prompts live in prefix regions (fewer regions than slots, so episodes wait
for a region), plays the records and steps of the per-slot engine; prefilling every prompt in full (with
shared prefixes: each step restarts its episode in a fresh region) plays them too. Training's token-level protocol is
tested through `run_rollouts` (tests/rl/test_rl_rollout.py)."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

from envtune_jax.chat.tokenizer import compact_qwen_tokenizer
from envtune_jax.environments.config import EnvironmentConfig
from envtune_jax.environments.evaluation import run_episodes
from envtune_jax.environments.policies import PolicyState
from envtune_jax.environments.synthetic import SyntheticConfig, SyntheticEpisode, make_synthetic_tasks
from envtune_jax.models.config import Qwen3Config
from envtune_jax.models.generation.buckets import BucketConfig
from envtune_jax.models.generation.engine import GenerationEngine
from envtune_jax.models.generation.prefix_config import SharedPrefixConfig
from envtune_jax.models.qwen3 import init_model
from envtune_jax.rl.episode_runner import common_prefix
from envtune_jax.rl.model_policy import ModelPolicy

SLOTS = 3
TINY = Qwen3Config(
    vocab_size=8320,
    hidden_size=64,
    intermediate_size=128,
    num_layers=2,
    num_heads=4,
    num_kv_heads=1,
    head_dim=16,
    tie_word_embeddings=False,
    max_position_embeddings=4096,
    dtype="float32",
    param_dtype="float32",
)
TASKS = SyntheticConfig(num_turns=2, doc_style="system")


@pytest.fixture(scope="module")
def setup():
    model = init_model(TINY, seed=5)
    tokenizer = compact_qwen_tokenizer(8192)
    buckets = BucketConfig(min_cache_len=256, min_chunk_len=64, prefill_chunk=64)

    def engine(shared_prefix=None):
        return GenerationEngine(
            model,
            batch_size=SLOTS,
            max_cache_len=512,
            cache_dtype="float32",
            buckets=buckets,
            shared_prefix=shared_prefix,
        )

    return tokenizer, engine


def evaluate(setup, engine, decode_chunk=2, reuse_cache=True, extra_stops=(), on_round=None):
    tokenizer, _ = setup
    tasks = make_synthetic_tasks(5, TASKS, seed=3)
    policy = ModelPolicy(engine, tokenizer, max_new_tokens=6, decode_chunk=decode_chunk, reuse_cache=reuse_cache)
    policy.sampling = dataclasses.replace(policy.sampling, stop_token_ids=policy.sampling.stop_token_ids + extra_stops)
    steps = []
    policy_step = policy._policy_step
    policy._policy_step = lambda ids: steps.append(ids) or policy_step(ids)
    episodes = [SyntheticEpisode(task, TASKS, EnvironmentConfig.evaluation()) for task in tasks]
    records = run_episodes(episodes, policy, on_round=on_round)
    return [(record.to_json(), record.steps) for record in records], sorted(steps), policy


def test_a_shared_prefix_engine_plays_the_records_of_the_per_slot_engine(setup):
    _, engine = setup
    _, budget_steps, _ = evaluate(setup, engine())  # every step runs to its 6-token budget
    stops = (budget_steps[0][3], budget_steps[4][1])  # so that steps end at different lengths
    want, want_steps, per_slot = evaluate(setup, engine(), extra_stops=stops)
    assert len({len(ids) for ids in want_steps}) > 1 and per_slot.stats.restarts == 0

    # two regions for three slots: a refill of three first prompts would be refused, so one episode waits
    shared_engine = engine(SharedPrefixConfig(lanes=1, regions=2))
    live_counts = []
    got, got_steps, shared = evaluate(
        setup, shared_engine, extra_stops=stops, on_round=lambda live, taken: live_counts.append(len(live))
    )
    assert got == want and got_steps == want_steps
    assert live_counts and shared.stats.restarts == 0  # (the episodes begun, placed or waiting)
    first_prompts = []
    for task in make_synthetic_tasks(5, TASKS, seed=3):
        episode = SyntheticEpisode(task, TASKS, EnvironmentConfig.evaluation())
        state = PolicyState(task.id, 0, 0, episode.reset(), episode.tools(), episode.call_syntax)
        first_prompts.append(len(shared.prompt_ids(state)))
    assert shared_engine.extend_tokens["prefix_appended"] == sum(first_prompts)  # each one prefilled once
    assert shared.stats.sampled_tokens == per_slot.stats.sampled_tokens == sum(len(ids) for ids in want_steps)


def test_prefilling_every_prompt_in_full_plays_the_same_records(setup):
    """reuse_cache=False: every step's prompt is prefilled whole (per-slot: the whole tail replaced; with
    shared prefixes the first prompt is a region, so every step restarts its episode: released, refilled)."""
    _, engine = setup
    want, want_steps, kept = evaluate(setup, engine(), decode_chunk=0)
    for shared_prefix in (None, SharedPrefixConfig(lanes=1, regions=2)):
        got, got_steps, fresh = evaluate(setup, engine(shared_prefix), decode_chunk=0, reuse_cache=False)
        assert got == want and got_steps == want_steps
        restarts = len(want_steps) - len(want) if shared_prefix else 0  # a region: every step but the first
        assert fresh.stats.restarts == restarts
        assert kept.stats.prefilled_tokens < fresh.stats.prefilled_tokens <= fresh.stats.prompt_tokens
        assert fresh.stats.prompt_tokens == kept.stats.prompt_tokens
        # (some tasks have the same first prompt: a restart may fork a live slot's instead of prefilling it)


def test_common_prefix():
    assert common_prefix([1, 2, 3], [1, 2, 3, 4]) == 3
    assert common_prefix([1, 2, 3], [1, 5, 3]) == 1
    assert common_prefix([], [1]) == 0


def test_environments_import_no_training_code():
    """Evaluation does not reach into `rl` (the model player is passed in), by import or by name."""
    root = Path(__file__).resolve().parents[2] / "environments"
    for path in sorted(root.glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                names = [node.value.split(":")[0]] if node.value.startswith("rl.") else []
            else:
                continue
            assert not any(name == "rl" or name.startswith("rl.") for name in names), (path.name, names)
