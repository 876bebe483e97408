"""The rollout driver's continuous batching: more episodes than slots, of different lengths, on a tiny
random model in the synthetic environment. An ended episode's slot is refilled at once (fewer decode
calls than fixed waves would take), the samples of a group that start together share one prefill, every
trajectory's sampler log-probs are the trainer's recomputation (forked prompts included: samples that
start while another sample of their prompt is live copy its cache), the same rng gives the same rollout,
decoded whole steps at a time or in chunks."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from envtune_jax.chat.chat_config import ChatConfig
from envtune_jax.chat.conversation import TokenConversation
from envtune_jax.chat.tokenizer import compact_qwen_tokenizer, stop_token_ids
from envtune_jax.environments.synthetic import SyntheticConfig, SyntheticEpisode, make_synthetic_tasks
from envtune_jax.models.generation.buckets import BucketConfig
from envtune_jax.models.generation.engine import GenerationEngine
from envtune_jax.models.generation.reference import reference_logprobs
from envtune_jax.models.generation.sampling_params import SamplingParams
from envtune_jax.models.qwen3 import init_model
from envtune_jax.rl.rollout import RolloutConfig, RolloutStats, run_rollouts
from envtune_jax.rl.synthetic_run import SYNTHETIC_BPE_TOKENS, TINY_SYNTHETIC_MODEL

SLOTS = 4
SAMPLES = 3
NEW_TOKENS = 6


@pytest.fixture(scope="module")
def setup():
    model = init_model(dataclasses.replace(TINY_SYNTHETIC_MODEL, dtype="float32", param_dtype="float32"), seed=3)
    tokenizer = compact_qwen_tokenizer(SYNTHETIC_BPE_TOKENS)
    buckets = BucketConfig(min_cache_len=256, min_chunk_len=64, prefill_chunk=64)
    engine = GenerationEngine(model, batch_size=SLOTS, max_cache_len=256, cache_dtype="float32", buckets=buckets)
    return model, tokenizer, engine


def play(setup, rng: int, decode_chunk: int = 0, sampling: SamplingParams | None = None, engine=None, on_phase=None):
    """3 samples of a one-turn task, then 3 of a three-turn task: 6 episodes on 4 slots."""
    model, tokenizer, default_engine = setup
    engine = engine or default_engine
    short, long = SyntheticConfig(num_turns=1, doc_style="system"), SyntheticConfig(num_turns=3, doc_style="system")
    episodes = [SyntheticEpisode(make_synthetic_tasks(1, short, seed=1)[0], short) for _ in range(SAMPLES)]
    episodes += [SyntheticEpisode(make_synthetic_tasks(1, long, seed=2)[0], long) for _ in range(SAMPLES)]
    groups = [0] * SAMPLES + [1] * SAMPLES
    sampling = sampling or SamplingParams(
        temperature=1.0, max_new_tokens=NEW_TOKENS, stop_token_ids=stop_token_ids(tokenizer)
    )
    config = RolloutConfig(
        max_prompt_tokens=128,
        max_response_tokens=128,
        max_context_tokens=256,
        max_new_tokens_per_step=NEW_TOKENS,
        decode_chunk=decode_chunk,
    )
    stats = RolloutStats()
    trajectories = run_rollouts(
        engine, tokenizer, ChatConfig(), episodes, groups, sampling, config, rng=rng, stats=stats, on_phase=on_phase
    )
    return trajectories, stats


def steps_of(trajectory) -> int:
    """Model steps of a trajectory: runs of sampled tokens in its loss mask."""
    mask = np.concatenate([[0], trajectory.loss_mask])
    return int(np.sum((mask[1:] == 1) & (mask[:-1] == 0)))


def test_ended_episodes_give_their_slots_to_pending_ones(setup):
    model, _, engine = setup
    copies_before = engine.trace_counts["copy_rows"]
    trajectories, stats = play(setup, rng=0)
    assert [t.group for t in trajectories] == [0] * SAMPLES + [1] * SAMPLES
    steps = [steps_of(t) for t in trajectories]
    assert max(steps[:SAMPLES]) < min(steps[SAMPLES:]), steps  # the one-turn episodes end first
    # fixed waves of 4 would wait for the longest episode of each wave; a freed slot starts the next episode
    waves = max(steps[:SLOTS]) + max(steps[SLOTS:])
    assert stats.decode_calls < waves, (stats.decode_calls, steps)
    assert stats.decode_calls == max(steps[SAMPLES:]) + max(steps[:SAMPLES]), steps  # short ones, then the long
    assert 0.5 < stats.slot_occupancy <= 1.0
    assert engine.trace_counts["copy_rows"] > copies_before  # the group's samples that started together
    assert stats.shared_prompts == 2  # the long task's later samples copied the live first sample's prompt
    for t in trajectories:
        assert not t.truncated and 0 < t.loss_mask.sum() < len(t.token_ids)
        want = reference_logprobs(model, t.token_ids[None])[0]
        sampled = t.loss_mask > 0
        np.testing.assert_allclose(t.sampler_logprobs[sampled], want[sampled], atol=1e-5)
        assert np.all(t.sampler_logprobs[~sampled] == 0)
    sampled_texts = {tuple(t.token_ids[t.loss_mask > 0]) for t in trajectories}
    assert len(sampled_texts) == len(trajectories)  # every sample has its own PRNG stream


def test_the_same_rng_gives_the_same_rollout(setup):
    phases = []
    first, stats = play(setup, rng=5, on_phase=lambda phase, done=None, total=None: phases.append((phase, done, total)))
    # the progress it reports: rollout before every decode call, environment before every round of steps
    assert phases[0] == ("rollout", 0, 2 * SAMPLES)
    assert sum(phase == "rollout" for phase, _, _ in phases) == stats.decode_calls + 1
    assert sum(phase == "environment" for phase, _, _ in phases) == stats.decode_calls
    done = [d for _, d, _ in phases]
    assert done == sorted(done) and 0 < done[-1] < 2 * SAMPLES and {t for _, _, t in phases} == {2 * SAMPLES}
    again, _ = play(setup, rng=5)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a.token_ids, b.token_ids)
        np.testing.assert_array_equal(a.sampler_logprobs, b.sampler_logprobs)


def test_decoding_in_chunks_gives_the_same_rollout(setup):
    """decode_chunk=2: every 6-token step takes 3 decode calls, episodes whose step ended step their
    environment between them; tokens are drawn per position, so the rollout is the one of whole steps."""
    whole, whole_stats = play(setup, rng=2)
    chunked, chunked_stats = play(setup, rng=2, decode_chunk=2)
    for a, b in zip(whole, chunked):
        np.testing.assert_array_equal(a.token_ids, b.token_ids)
        np.testing.assert_array_equal(a.loss_mask, b.loss_mask)
        np.testing.assert_allclose(a.sampler_logprobs, b.sampler_logprobs, atol=1e-6)
    assert chunked_stats.decode_calls == 3 * whole_stats.decode_calls
    assert chunked_stats.sampled_tokens == whole_stats.sampled_tokens
    with pytest.raises(ValueError, match="decode_chunk"):
        RolloutConfig(decode_chunk=-1)


def step_lengths(trajectory) -> list[int]:
    mask = np.concatenate([[0], trajectory.loss_mask, [0]])
    starts, ends = np.flatnonzero(np.diff(mask) == 1), np.flatnonzero(np.diff(mask) == -1)
    return (ends - starts).tolist()


def test_steps_that_end_early_rejoin_between_chunks_with_the_same_rollout(setup):
    """Greedy decoding with a stop token that the model emits in some steps only: those steps end before
    the 6-token budget, mid-chunk; decoded in chunks of 4 they step their environment while the others
    go on. Greedy tokens do not depend on slots or keys, so the rollout equals the whole-step one."""
    free_run, _ = play(setup, rng=0, sampling=SamplingParams(greedy=True, max_new_tokens=NEW_TOKENS, stop_token_ids=()))
    sampled = [t.token_ids[t.loss_mask > 0] for t in free_run]
    counts = np.bincount(np.concatenate(sampled))
    in_steps = {int(token) for token in np.flatnonzero(counts)}
    stop = next(
        token for token in sorted(in_steps, key=lambda t: -counts[t]) if not all(token in ids for ids in sampled)
    )  # frequent, but not in every trajectory
    greedy = SamplingParams(greedy=True, max_new_tokens=NEW_TOKENS, stop_token_ids=(stop,))
    whole, _ = play(setup, rng=0, sampling=greedy)
    chunked, _ = play(setup, rng=0, decode_chunk=4, sampling=greedy)
    lengths = [n for t in whole for n in step_lengths(t)]
    assert min(lengths) < NEW_TOKENS and max(lengths) == NEW_TOKENS, lengths  # some steps ended early
    for a, b in zip(whole, chunked):
        np.testing.assert_array_equal(a.token_ids, b.token_ids)
        np.testing.assert_array_equal(a.loss_mask, b.loss_mask)
        np.testing.assert_allclose(a.sampler_logprobs, b.sampler_logprobs, atol=1e-6)


def test_an_engine_that_cannot_compact_rows_plays_fixed_waves_of_whole_steps(setup):
    """Without compacted extends a refill or extend of one slot costs all B rows: refills wait for every slot."""
    model, _, engine = setup
    buckets = dataclasses.replace(engine.buckets, compact_rows=False)
    waves_engine = GenerationEngine(model, batch_size=SLOTS, max_cache_len=256, cache_dtype="float32", buckets=buckets)
    assert engine.compacts_rows and not waves_engine.compacts_rows
    trajectories, stats = play(setup, rng=0, decode_chunk=2, engine=waves_engine)
    steps = [steps_of(t) for t in trajectories]
    assert stats.decode_calls == max(steps[:SLOTS]) + max(steps[SLOTS:]), steps  # decode_chunk ignored too
    continuous, _ = play(setup, rng=0)
    for a, b in zip(trajectories[:SLOTS], continuous[:SLOTS]):  # the first refill samples as the first wave
        np.testing.assert_array_equal(a.token_ids, b.token_ids)


@pytest.mark.parametrize("limit", ["max_response_tokens", "max_context_tokens"])
def test_the_configured_token_limits_are_the_real_caps(setup, limit):
    """A step's budget is clipped to what remains: an episode is truncated only once its response (or
    context) budget is used up, never with tokens to spare, and no sampled token lies beyond the cap.
    (Truncating once less than a whole step budget was left made the real caps 20,480 / 28,672 for the
    paper's 24,576 / 32,768 with 4,096-token steps.)"""
    model, tokenizer, engine = setup
    tasks = SyntheticConfig(num_turns=5, doc_style="system")  # a random model replies (one step) every turn
    episodes = [SyntheticEpisode(task, tasks) for task in make_synthetic_tasks(SLOTS, tasks, seed=4) for _ in range(2)]
    sampling = SamplingParams(temperature=1.0, max_new_tokens=NEW_TOKENS, stop_token_ids=stop_token_ids(tokenizer))
    prompt_lengths = {}
    for episode in episodes:  # the prompt of each task, rendered as the driver renders it
        conversation = TokenConversation(tokenizer, ChatConfig())
        conversation.start(episode.reset(), episode.tools())
        prompt_lengths[episode.episode_id] = len(conversation)
    # two 6-token steps and their ~18-token replies leave 2-4 tokens of 52: the third step must be cut short
    cap = 52 if limit == "max_response_tokens" else max(prompt_lengths.values()) + 52
    config = dataclasses.replace(
        RolloutConfig(
            max_prompt_tokens=256, max_response_tokens=256, max_context_tokens=256, max_new_tokens_per_step=NEW_TOKENS
        ),
        **{limit: cap},
    )
    trajectories = run_rollouts(
        engine, tokenizer, ChatConfig(), episodes, list(range(len(episodes))), sampling, config, rng=1
    )
    clipped_steps = 0
    for t in trajectories:
        prompt = prompt_lengths[t.episode_id]
        end = prompt + cap if limit == "max_response_tokens" else cap  # the first position beyond the cap
        sampled_at = np.flatnonzero(t.loss_mask)
        assert sampled_at.max() < end, (t.episode_id, sampled_at.max(), end)
        if t.truncated:  # only with nothing left: the trajectory reaches the cap
            assert len(t.token_ids) >= end, (t.episode_id, len(t.token_ids), end)
            clipped_steps += int(sampled_at.max() == end - 1 and step_lengths(t)[-1] < NEW_TOKENS)
    assert sum(t.truncated for t in trajectories) >= 4
    assert clipped_steps >= 1  # some step was cut short to end exactly at the cap


def test_a_shared_prefix_engine_plays_the_same_rollout(setup):
    """Each group's prompt held once in a prefix region (regions of 3 lanes): the later samples of the long
    task join its live region, the first group's region is released as its episodes end; tokens, masks
    and sampler log-probs are those of the per-slot engine."""
    from envtune_jax.models.generation.prefix_config import SharedPrefixConfig

    model, _, engine = setup
    shared = GenerationEngine(
        model,
        batch_size=SLOTS,
        max_cache_len=256,
        cache_dtype="float32",
        buckets=engine.buckets,
        shared_prefix=SharedPrefixConfig(lanes=3, regions=2),
    )
    want, _ = play(setup, rng=0)
    got, stats = play(setup, rng=0, engine=shared)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a.token_ids, b.token_ids)
        np.testing.assert_array_equal(a.loss_mask, b.loss_mask)
        np.testing.assert_allclose(a.sampler_logprobs, b.sampler_logprobs, atol=1e-5)
    prompt_tokens = [len(t.token_ids) - len(t.loss_mask[np.argmax(t.loss_mask > 0) :]) for t in (got[0], got[3])]
    assert shared.extend_tokens["prefix_appended"] == sum(prompt_tokens)  # one prefill per task
    assert stats.shared_prompts == 2


def test_the_prompt_tokens_prefilled_count_each_groups_prompt_once(setup):
    """The rollout metric `prompt_tokens_prefilled` (rl/grpo.py): with prefix regions each task's prompt is
    prefilled once; the per-slot engine also prefills it once (copies for the samples that start together),
    and re-runs the last prompt token of each sample that forks a live one."""
    from envtune_jax.models.generation.prefix_config import SharedPrefixConfig
    from envtune_jax.rl.grpo import prefilled_tokens, prompt_tokens_prefilled

    model, _, engine = setup
    shared = GenerationEngine(
        model,
        batch_size=SLOTS,
        max_cache_len=256,
        cache_dtype="float32",
        buckets=engine.buckets,
        shared_prefix=SharedPrefixConfig(lanes=3, regions=2),
    )
    counted = {}
    for name, chosen in (("per_slot", engine), ("shared", shared)):
        before = prefilled_tokens(chosen)
        trajectories, stats = play(setup, rng=0, engine=chosen)
        counted[name] = (prompt_tokens_prefilled(chosen, before, stats), stats.shared_prompts)
    prompt_tokens = [len(t.token_ids) - len(t.loss_mask[np.argmax(t.loss_mask > 0) :]) for t in trajectories[::3]]
    assert counted["shared"][0] == sum(prompt_tokens)
    forks = counted["per_slot"][1]
    assert forks == 2 and counted["per_slot"][0] == sum(prompt_tokens) + forks
