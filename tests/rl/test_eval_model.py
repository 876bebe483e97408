"""`envtune eval --hf` drives a real model through the official protocol and writes the table."""

from __future__ import annotations

import json

import pytest

from envtune_jax.cli.main import main as envtune
from tests.conftest import write_tiny_qwen3


@pytest.fixture(scope="module")
def full_vocab_checkpoint(tmp_path_factory):
    return write_tiny_qwen3(tmp_path_factory.mktemp("full"), "untied_mha", vocab_size=151936)


def test_eval_of_a_model_writes_the_table(full_vocab_checkpoint, tmp_path, capsys):
    # One engine slot for the one entry (each generate re-prefills its ~6.2k-token conversation; 4 slots made
    # every call ~4x slower on CPU: 111 s against 27 s measured); float32 since bf16 is slow on CPU.
    code = envtune(
        [
            "eval",
            "--hf",
            str(full_vocab_checkpoint),
            "--split",
            "test",
            "--limit",
            "1",
            "--categories",
            "base",
            "--data-source",
            "package",
            "--max-new-tokens",
            "4",
            "--batch-size",
            "1",
            "--max-cache-len",
            "8192",
            "--dtype",
            "float32",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "| OVERALL | 0 | 1 | 0.00% |" in printed  # a random tiny model solves nothing
    results = json.loads((tmp_path / "eval_results.json").read_text())
    assert [row["category"] for row in results["table"]] == ["multi_turn_base", "OVERALL"]
    generation = results["generation"]  # one slot, 4-token steps: every decode step samples for the one slot
    assert generation["decode_calls"] >= 1 and generation["slot_occupancy"] == 1.0
    assert 0 < generation["prefilled_tokens"] < generation["prompt_tokens"]
    (line,) = (tmp_path / "model_results.jsonl").read_text().splitlines()
    record = json.loads(line)
    # every turn was played (one step each: the model never calls a tool), none cut short
    assert record["id"] == "multi_turn_base_0" and len(record["result"]) > 1
    assert all(len(turn) == 1 for turn in record["result"])


def test_eval_passes_the_attention_choices_to_the_model(full_vocab_checkpoint):
    """`envtune eval --attention cudnn --decode-attention pallas` reaches the evaluated model's config."""
    from envtune_jax.cli.main import build_parser
    from envtune_jax.rl.model_policy import build_model_policy

    args = build_parser().parse_args(
        ["eval", "--hf", str(full_vocab_checkpoint), "--attention", "xla", "--decode-attention", "pallas"]
    )
    policy = build_model_policy(
        hf_dir=str(full_vocab_checkpoint),
        batch_size=1,
        max_cache_len=256,
        dtype="float32",
        attention_impl=args.attention,
        decode_attention=args.decode_attention,
    )
    assert (policy.engine.config.attention_impl, policy.engine.config.decode_attention) == ("xla", "pallas")


def test_kept_conversations_give_the_steps_of_fresh_prefills(full_vocab_checkpoint):
    """The model policy keeps each live episode's conversation cached and prefills only the tail of each
    re-rendered prompt; two episodes through one slot (the second takes it when the first ends) give the
    same steps and records as a policy that prefills every prompt in full, for a fraction of the tokens.
    The episodes: a base and a miss-param test entry of three turns each with the shortest prompts
    (~3.4k tokens of TradingBot documentation), since the full-prefill policy re-prefills every step's prompt."""
    from envtune_jax.environments.config import EnvironmentConfig
    from envtune_jax.environments.evaluation import BfclEpisode, run_episodes
    from envtune_jax.environments.split_sources import split_entries_from
    from envtune_jax.rl.model_policy import build_model_policy

    chosen = ("multi_turn_base_115", "multi_turn_miss_param_105")
    entries = [
        entry
        for entry in split_entries_from("package", "test", ("multi_turn_base", "multi_turn_miss_param"))
        if entry.id in chosen
    ]
    assert [(entry.id, len(entry.question)) for entry in entries] == [(chosen[0], 3), (chosen[1], 3)]

    def play(reuse_cache):
        policy = build_model_policy(
            hf_dir=str(full_vocab_checkpoint), batch_size=1, max_cache_len=8192, max_new_tokens=4, dtype="float32"
        )
        policy.reuse_cache = reuse_cache  # False: every step's prompt prefilled in full
        episodes = [BfclEpisode(entry, EnvironmentConfig.evaluation()) for entry in entries]
        records = run_episodes(episodes, policy)  # the policy's one slot
        return [record.to_json() | {"steps": record.steps} for record in records], policy

    kept, kept_policy = play(True)
    fresh, fresh_policy = play(False)
    assert kept == fresh
    assert fresh_policy.stats.prefilled_tokens == fresh_policy.stats.prompt_tokens
    assert kept_policy.stats.prompt_tokens == fresh_policy.stats.prompt_tokens
    assert kept_policy.stats.prefilled_tokens < 0.5 * kept_policy.stats.prompt_tokens


@pytest.fixture(scope="module")
def varied_checkpoint(tmp_path_factory):
    """A tiny full-vocabulary model whose greedy steps differ between the synthetic tasks' turns."""
    return write_tiny_qwen3(tmp_path_factory.mktemp("varied"), "untied_kv1", vocab_size=151936)


def test_streamed_steps_give_the_records_of_whole_steps(varied_checkpoint):
    """With decode_chunk=2 each engine call decodes ≤ 2 tokens of every live step; an episode whose step
    ended steps its environment and prefills its next prompt (or leaves its slot to the next episode) while
    the others answer STEP_PENDING. Records are those of whole-step rounds, for fewer slot-steps decoded
    (a lockstep round runs every slot until its longest step has ended)."""
    import dataclasses

    from envtune_jax.environments.config import EnvironmentConfig
    from envtune_jax.environments.evaluation import run_episodes
    from envtune_jax.environments.synthetic import SyntheticConfig, SyntheticEpisode, make_synthetic_tasks
    from envtune_jax.rl.model_policy import build_model_policy

    config = SyntheticConfig(num_turns=2)
    tasks = make_synthetic_tasks(6, config, seed=0)

    def play(decode_chunk, extra_stops=()):
        policy = build_model_policy(
            hf_dir=str(varied_checkpoint),
            batch_size=3,
            max_cache_len=2048,
            max_new_tokens=12,
            dtype="float32",
            decode_chunk=decode_chunk,
        )
        policy.sampling = dataclasses.replace(
            policy.sampling, stop_token_ids=policy.sampling.stop_token_ids + tuple(extra_stops)
        )
        steps = []
        policy_step = policy._policy_step
        policy._policy_step = lambda ids: steps.append(ids) or policy_step(ids)  # each finished step's ids
        records = run_episodes(
            [SyntheticEpisode(task, config, EnvironmentConfig.evaluation()) for task in tasks], policy
        )
        return [(record.to_json(), record.steps) for record in records], policy, steps

    _, _, budget_steps = play(0)  # every step runs to the 12-token budget (no stop token drawn)
    # two tokens of those steps become stop tokens, so that steps of one round end at different lengths
    stops = (budget_steps[0][9], budget_steps[3][4])
    whole, whole_policy, whole_steps = play(0, stops)
    streamed, streamed_policy, streamed_steps = play(2, stops)
    assert len({len(ids) for ids in whole_steps}) > 1  # steps of several lengths
    assert whole_policy.stats.slot_steps > whole_policy.stats.sampled_tokens  # lockstep rounds idled some slots
    assert streamed == whole and sorted(streamed_steps) == sorted(whole_steps)
    assert streamed_policy.stats.decode_calls > whole_policy.stats.decode_calls  # steps were left pending and went on
    assert streamed_policy.stats.sampled_tokens == whole_policy.stats.sampled_tokens
    assert streamed_policy.stats.slot_steps < whole_policy.stats.slot_steps
