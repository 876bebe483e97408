"""Shared-prefix generation: a group's prompt prefilled once into a prefix region, its slots holding only
their own tokens, gives token for token the sequences of the per-slot engine (greedy, fp32) through ragged
own lengths, early ends, extends and refills; sampled log-probs equal the trainer's recomputation; regions
free and are reused as groups end (continuous batching); the engine refuses what sharing cannot do."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

from envtune_jax.models.config import Qwen3Config
from envtune_jax.models.generation.buckets import BucketConfig
from envtune_jax.models.generation.engine import GenerationEngine
from envtune_jax.models.generation.prefix_config import SharedPrefixConfig
from envtune_jax.models.generation.reference import reference_logprobs
from envtune_jax.models.generation.requests import GenerationInputError
from envtune_jax.models.generation.sampling_params import SamplingParams
from envtune_jax.models.qwen3 import init_model

VOCAB = 256
BATCH = 6
CFG = Qwen3Config(
    vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16
)
# one capacity (128) and one chunk width (32): few programs to compile
BUCKETS = BucketConfig(min_cache_len=128, min_chunk_len=32, prefill_chunk=32, cache_half_steps=False)
SAMPLED = SamplingParams(temperature=0.9, top_k=40, max_new_tokens=12, stop_token_ids=())


@pytest.fixture(scope="module")
def model():
    """Weights scaled up so that logits are spread out: greedy continuations vary and argmax has margins."""
    graphdef, state = nnx.split(init_model(CFG, seed=3))
    state = jax.tree.map(lambda x: x * 12 if x.ndim == 2 else x, state)
    return nnx.merge(graphdef, state)


@pytest.fixture(scope="module")
def engines(model):
    plain = GenerationEngine(model, batch_size=BATCH, max_cache_len=128, cache_dtype="float32", buckets=BUCKETS)
    shared = GenerationEngine(
        model,
        batch_size=BATCH,
        max_cache_len=128,
        cache_dtype="float32",
        buckets=BUCKETS,
        shared_prefix=SharedPrefixConfig(lanes=3, regions=2),
    )
    return plain, shared


def tokens(length, seed):
    return np.random.RandomState(seed).randint(0, VOCAB, length).tolist()


def episode(engine):
    """Two groups (prompts of 21 and 45 tokens, 3 samples each), ragged budgets (slots that end early), an
    extend of a few slots, a second turn, then the first group ends and a third group refills its slots."""
    greedy = SamplingParams(greedy=True, max_new_tokens=(9, 4, 12, 1, 7, 12), stop_token_ids=())
    first, second, third = tokens(21, 1), tokens(45, 2), tokens(33, 3)
    state = engine.start([first] * 3 + [second] * 3, rng=0)
    state, turn1 = engine.decode(state, greedy)
    state = engine.extend(state, {0: tokens(5, 4), 4: tokens(40, 5), 5: tokens(1, 6)})
    state, turn2 = engine.decode(
        state, SamplingParams(greedy=True, max_new_tokens=6, stop_token_ids=()), active=[0, 4, 5]
    )
    done = engine.history(state)
    state = engine.release(state, [0, 1, 2])
    state = engine.refill(state, {0: third, 1: third, 2: third}, rng=1)
    state, turn3 = engine.decode(state, greedy, active=[0, 1, 2])
    return [turn1.token_lists(), turn2.token_lists(), turn3.token_lists()], done, engine.history(state)


def test_greedy_shared_prefix_equals_per_slot(engines):
    plain, shared = engines
    want_turns, want_done, want = episode(plain)
    got_turns, got_done, got = episode(shared)
    assert got_turns == want_turns
    assert [len(t) for t in want_turns[0]] == [9, 4, 12, 1, 7, 12]
    for expected, history in ((want_done, got_done), (want, got)):
        np.testing.assert_array_equal(history.lengths, expected.lengths)
        for b in range(BATCH):
            assert history.sequence(b) == expected.sequence(b)
            n = expected.lengths[b]
            np.testing.assert_array_equal(history.sampled[b, :n], expected.sampled[b, :n])
    # each group's prompt was prefilled once: 21 + 45, then 33 for the refill
    assert shared.extend_tokens["prefix_appended"] == 21 + 45 + 33
    assert shared.extend_tokens["appended"] == 5 + 40 + 1  # only the appended environment tokens per slot


def test_pallas_decode_kernel_path_gives_the_same_generations(engines, model, monkeypatch):
    """decode_attention="pallas": both parts of each one-token step by JAX's Pallas decode kernel (interpret
    mode on CPU), the regions' lanes stacked as query heads; the same sequences as the einsum path."""
    import dataclasses

    from envtune_jax.models import prefix_kernels

    traced = []
    kernel = prefix_kernels.pallas_prefix_decode
    monkeypatch.setattr(prefix_kernels, "pallas_prefix_decode", lambda *a: traced.append(1) or kernel(*a))
    graphdef = nnx.split(init_model(dataclasses.replace(CFG, decode_attention="pallas"), seed=0))[0]
    pallas_model = nnx.merge(graphdef, nnx.split(model)[1])
    pallas = GenerationEngine(
        pallas_model,
        batch_size=BATCH,
        max_cache_len=128,
        cache_dtype="float32",
        buckets=BUCKETS,
        shared_prefix=SharedPrefixConfig(lanes=3, regions=2),
    )
    want_turns, _, want = episode(engines[1])
    got_turns, _, got = episode(pallas)
    assert traced, "the Pallas shared-prefix decode path was never traced"
    assert got_turns == want_turns
    for b in range(BATCH):
        assert got.sequence(b) == want.sequence(b)


def test_sampled_logprobs_equal_the_trainers_recomputation(engines, model):
    plain, shared = engines
    prompts = [tokens(17, 7)] * 3 + [tokens(30, 8)] * 3
    appends = {1: tokens(6, 10), 2: tokens(25, 11)}

    def run(engine):
        state = engine.start(prompts, rng=4)
        state, _ = engine.decode(state, SAMPLED)
        state = engine.extend(state, appends)
        state, _ = engine.decode(state, SAMPLED, max_steps=5)
        return engine.history(state)

    got = run(shared)
    recomputed = reference_logprobs(model, got.tokens, got.lengths, temperature=SAMPLED.temperature)
    mask = got.sampled & (np.arange(got.tokens.shape[1])[None] < got.lengths[:, None])
    assert mask.sum() == 6 * 12 + 2 * 5
    assert np.abs(got.logprobs[mask] - recomputed[mask]).max() <= 1e-5
    want = run(plain)  # PRNG keys count the shared prompt's positions: the per-slot engine's samples
    for b in range(BATCH):
        assert got.sequence(b) == want.sequence(b)


def test_regions_are_reused_and_late_samples_join_their_group(engines):
    _, shared = engines
    a, b, d = tokens(12, 20), tokens(20, 21), tokens(15, 23)
    state = shared.start([a, a, a, b, b], rng=0)  # both regions in use; slot 5 empty
    lanes = np.asarray(state.prefix.lane_b)
    assert {int(lane) // 3 for lane in lanes[:3]} != {int(lane) // 3 for lane in lanes[3:5]} and lanes[5] == 6
    assert shared.admissible(state, {5: b}) == {5}  # b's region has a free lane: no prefill
    before = shared.extend_tokens["prefix_appended"]
    state = shared.fork(state, {5: (3, b)}, rng=1)
    assert shared.extend_tokens["prefix_appended"] == before
    assert int(state.prefix.lane_b[5]) // 3 == int(state.prefix.lane_b[3]) // 3
    assert shared.history(state).sequence(5) == b
    assert shared.admissible(state, {4: d}) == set()  # b's region still holds slots 3 and 5; a's is full
    with pytest.raises(GenerationInputError, match="no free prefix region"):
        shared.refill(state, {4: d})
    assert shared.admissible(state, {0: d, 1: d, 2: d}) == {0, 1, 2}  # refilling all of a's slots frees it
    state = shared.release(state, [0, 1])
    assert shared.admissible(state, {2: d}) == {2}
    state = shared.refill(state, {2: d}, rng=2)
    assert shared.history(state).sequence(2) == d
    with pytest.raises(GenerationInputError, match="shared prompt"):
        shared.fork(state, {0: (3, a)})
    with pytest.raises(GenerationInputError, match="shared prompt"):
        shared.replace_tail(state, {3: (5, [1])})
    with pytest.raises(GenerationInputError, match="region"):
        shared.copy_slots(state, {0: 3})


def test_sampler_config_turns_shared_prefixes_on_and_rejects_ignored_fields(model):
    from envtune_jax.config import ConfigError, load
    from envtune_jax.models.generation.config import SamplerConfig

    cfg = load(SamplerConfig, None, ["shared_prefix=true", "prefix_lanes=4", "batch_size=8", "max_cache_len=64"])
    engine = cfg.build_engine(model)
    assert engine.prefix_slots.config == SharedPrefixConfig(lanes=4) and engine.prefix_slots.num_regions == 4
    with pytest.raises(ConfigError, match=r"prefix_lanes=4 has no effect: prompts are held per slot"):
        load(SamplerConfig, None, ["prefix_lanes=4"])
    with pytest.raises(ConfigError, match="prefix attention"):
        load(SamplerConfig, None, ["shared_prefix=true", "prefix_attention=fast"])
