"""Compacted extends and shared prefills: the extend plan on its own (coverage, order, buckets, cost), and
the engine with compaction against the same engine running every call on all slots (same tokens,
log-probs and logits; fewer token-rows computed), prompt deduplication in refill, copy_slots, and fork
(a prompt another slot holds, copied instead of prefilled)."""

from __future__ import annotations

import numpy as np
import pytest

from envtune_jax.models import hf_io
from envtune_jax.models.generation.buckets import BucketConfig
from envtune_jax.models.generation.engine import GenerationEngine
from envtune_jax.models.generation.extend_plan import ExtendCosts, call_cost, plan_extend, row_buckets
from envtune_jax.models.generation.requests import GenerationInputError
from envtune_jax.models.generation.sampling_params import SamplingParams
from tests.conftest import write_tiny_qwen3

VOCAB = 512
BATCH = 4
CHUNKS = (16, 32, 64)
SAMPLED = SamplingParams(temperature=0.8, top_k=50, top_p=0.9, max_new_tokens=12, stop_token_ids=())
QWEN3_4B_COSTS = ExtendCosts(slot_tokens=0.0052)  # ExtendCosts.for_model(preset("qwen3-4b", dtype="bfloat16"), 2)


def old_loop_cost(counts, chunk, capacity, costs):
    """What every extend cost before compaction: ceil(max/chunk) calls, each on all slots."""
    counts = np.asarray(counts)
    total, offset = 0.0, 0
    while offset < counts.max():
        width = min(int(np.clip(counts - offset, 0, chunk).max()), chunk)
        width = next(w for w in CHUNKS + (chunk,) if w >= width)
        total += call_cost(len(counts), width, len(counts), capacity, costs)
        offset += chunk
    return total


@pytest.mark.parametrize("seed", range(6))
def test_the_plan_appends_every_token_once_in_order_within_buckets(seed):
    rng = np.random.RandomState(seed)
    batch = int(rng.choice([1, 3, 4, 16]))
    counts = rng.randint(0, 200, batch) * (rng.rand(batch) < 0.7)
    counts[rng.randint(batch)] += 1  # at least one slot appends
    ladder = row_buckets(batch)
    costs = [ExtendCosts(), QWEN3_4B_COSTS, ExtendCosts(slot_tokens=0.7)][seed % 3]
    plan = plan_extend(counts, chunk=64, chunk_buckets=CHUNKS, rows_ladder=ladder, capacity=256, costs=costs)
    seen = np.zeros(batch, int)
    for call in plan:
        assert call.rows in ladder and len(call.slots) <= call.rows and call.width in CHUNKS
        assert list(call.slots) == sorted(set(call.slots))
        for slot, offset, count in zip(call.slots, call.offsets, call.counts):
            assert offset == seen[slot] and 1 <= count <= call.width  # a slot's pieces in order, none skipped
            seen[slot] += count
    np.testing.assert_array_equal(seen, counts)
    planned = sum(call_cost(c.rows, c.width, batch, 256, costs) for c in plan)
    assert planned <= old_loop_cost(counts, 64, 256, costs) + 1e-9


def test_a_new_episode_in_one_slot_costs_one_row_and_does_not_pad_the_others():
    """The evaluation case: 15 slots append short tails, one a whole 4k-token prompt (Qwen3-4B costs)."""
    ladder = row_buckets(16)
    assert ladder == (1, 4, 16)
    counts = [120] * 15 + [4000]
    plan = plan_extend(
        counts,
        chunk=512,
        chunk_buckets=(16, 32, 64, 128, 256, 512),
        rows_ladder=ladder,
        capacity=8192,
        costs=QWEN3_4B_COSTS,
    )
    assert [(c.rows, c.width, len(c.slots)) for c in plan] == [(16, 128, 15), (1, 512, 1)] + [(1, 512, 1)] * 7
    computed = sum(c.rows * c.width for c in plan)
    assert computed == 16 * 128 + 8 * 512  # was 8 calls x 16 rows x 512 = 65,536 token-rows


def test_without_compaction_the_plan_is_the_old_chunk_loop():
    plan = plan_extend(
        [3, 130, 0], chunk=64, chunk_buckets=CHUNKS, rows_ladder=row_buckets(3, compact=False), capacity=256
    )
    assert [(c.rows, c.width, c.slots, c.offsets, c.counts) for c in plan] == [
        (3, 64, (0, 1), (0, 0), (3, 64)),
        (3, 64, (1,), (64,), (64,)),
        (3, 16, (1,), (128,), (2,)),
    ]
    with pytest.raises(ValueError, match="must end with the batch size"):
        plan_extend([1, 2], chunk=64, chunk_buckets=CHUNKS, rows_ladder=(1,), capacity=256)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = write_tiny_qwen3(tmp_path_factory.mktemp("compaction_ckpt"), "tied_kv2", vocab_size=VOCAB)
    return hf_io.load_pretrained(path, progress=False)


def make_engine(model, compact: bool) -> GenerationEngine:
    buckets = BucketConfig(
        min_cache_len=128, min_chunk_len=16, prefill_chunk=64, cache_half_steps=False, compact_rows=compact
    )
    return GenerationEngine(model, batch_size=BATCH, max_cache_len=512, cache_dtype="float32", buckets=buckets)


@pytest.fixture(scope="module")
def engines(model):
    return {compact: make_engine(model, compact) for compact in (False, True)}


def tokens(n, seed):
    return np.random.RandomState(seed).randint(0, VOCAB, n).tolist()


def episode(engine):
    """A sampled multi-turn episode: mixed prompt lengths (one repeated), extends of subsets, a long one."""
    prompts = [tokens(5, 1), tokens(150, 2), tokens(9, 3), tokens(5, 1)]
    state = engine.start(prompts, rng=7)
    state, first = engine.decode(state, SAMPLED)
    state = engine.extend(state, {1: tokens(7, 4), 2: tokens(200, 5)})  # 200: four passes, one slot after the first
    state, second = engine.decode(state, SAMPLED, active=[1, 2])
    state = engine.extend(state, {3: tokens(3, 6)})  # one slot of four
    state, third = engine.decode(state, SAMPLED, active=[3])
    return (
        [r.token_lists() for r in (first, second, third)],
        engine.history(state),
        np.asarray(engine.next_token_logits(state)),
    )


def test_compacted_extends_give_the_all_slot_engines_tokens_logprobs_and_logits(engines):
    before = {compact: dict(engine.extend_tokens) for compact, engine in engines.items()}
    want_tokens, want, want_logits = episode(engines[False])
    got_tokens, got, got_logits = episode(engines[True])
    assert got_tokens == want_tokens
    np.testing.assert_array_equal(got.lengths, want.lengths)
    for b in range(BATCH):
        n = want.lengths[b]
        assert got.sequence(b) == want.sequence(b)
        np.testing.assert_array_equal(got.sampled[b, :n], want.sampled[b, :n])
        np.testing.assert_allclose(got.logprobs[b, :n], want.logprobs[b, :n], atol=1e-5)
    np.testing.assert_allclose(got_logits, want_logits, atol=1e-5)
    assert engines[True].trace_counts["extend_rows"] > 0 and engines[True].trace_counts["copy_rows"] == 1
    computed = {c: e.extend_tokens["computed"] - before[c].get("computed", 0) for c, e in engines.items()}
    appended = {c: e.extend_tokens["appended"] - before[c].get("appended", 0) for c, e in engines.items()}
    assert appended[True] == appended[False] - 5  # the repeated 5-token prompt was prefilled once
    assert computed[True] <= computed[False] / 2, computed


def test_refill_with_one_prompt_per_group_samples_each_slot_as_separate_prefills_would(engines):
    """G samples of one prompt (a GRPO group): one prefill, copied; each slot keeps its own PRNG key."""
    prompt = tokens(40, 11)
    results = {}
    for compact, engine in engines.items():
        state = engine.start([prompt] * BATCH, rng=3)
        state, result = engine.decode(state, SAMPLED)
        results[compact] = (result.token_lists(), engine.history(state))
    assert results[True][0] == results[False][0]
    assert len({tuple(t) for t in results[True][0]}) == BATCH  # the copies sampled differently
    np.testing.assert_allclose(results[True][1].logprobs, results[False][1].logprobs, atol=1e-5)


def test_copy_slots_copies_the_sequence_and_rejects_chains(engines):
    engine = engines[True]
    state = engine.start([tokens(12, 21), tokens(30, 22)], rng=0)
    state = engine.copy_slots(state, {2: 1, 3: 0})
    history = engine.history(state)
    assert history.sequence(2) == tokens(30, 22) and history.sequence(3) == tokens(12, 21)
    logits = np.asarray(engine.next_token_logits(state))
    np.testing.assert_allclose(logits[2], logits[1], atol=1e-6)
    with pytest.raises(GenerationInputError, match="both copied and overwritten"):
        engine.copy_slots(state, {2: 1, 1: 0})
    with pytest.raises(GenerationInputError, match="slot 4"):
        engine.copy_slots(state, {4: 0})


def test_fork_samples_as_a_refill_of_the_same_prompt_would(engines):
    """Slot 2 starts on the prompt slot 0 holds (slot 0 has generated past it): the same tokens and
    log-probs as refilling slot 2 with that prompt, with one token computed instead of the prompt."""
    engine = engines[True]
    prompt = tokens(37, 31)
    state = engine.start([prompt, tokens(9, 32)], rng=1)
    state, _ = engine.decode(state, SAMPLED)  # slot 0 moves on: its cache holds the prompt and more
    results = []
    for start in ("fork", "refill"):
        before = engine.extend_tokens["appended"]
        if start == "fork":
            branched = engine.fork(state, {2: (0, prompt)}, rng=9)
        else:
            branched = engine.refill(state, {2: prompt}, rng=9)
        appended = engine.extend_tokens["appended"] - before
        branched, result = engine.decode(branched, SAMPLED, active=[2])
        history = engine.history(branched)
        results.append((result.token_lists()[2], history.logprobs[2, : history.lengths[2]], appended))
        state = engine.start([prompt, tokens(9, 32)], rng=1)  # the state was donated: rebuild it
        state, _ = engine.decode(state, SAMPLED)
    (fork_tokens, fork_logprobs, fork_appended), (tokens_, logprobs, appended) = results
    assert fork_tokens == tokens_ and len(tokens_) == SAMPLED.max_new_tokens
    np.testing.assert_allclose(fork_logprobs, logprobs, atol=1e-5)
    assert (fork_appended, appended) == (1, 37)
    with pytest.raises(GenerationInputError, match="does not start with"):
        engine.fork(state, {2: (1, prompt[:10])})
    with pytest.raises(GenerationInputError, match="not a prompt of"):
        engine.fork(state, {2: (1, tokens(500, 1))})
