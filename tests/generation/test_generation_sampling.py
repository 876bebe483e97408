"""Sampling matches its definitions (empirical frequencies on a tiny vocabulary), full-vocab log-probs,
per-sequence keys, parameter validation and shape buckets. No model involved."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from envtune_jax.models.generation.buckets import BucketConfig, BucketError, geometric_ladder, round_up
from envtune_jax.models.generation.sampling import (
    MAX_STOP_TOKENS,
    SamplingParams,
    filtered_probs_reference,
    position_keys,
    sample_tokens,
)

LOGITS_V = np.array([2.0, 1.5, 1.2, 0.9, 0.3, 0.0, -0.4, -1.0], np.float32)
DRAWS = 40_000


def empirical(temperature=1.0, top_k=0, top_p=1.0, seed=0):
    """Frequencies [V] of DRAWS samples, and the reported log-probs of the drawn tokens."""
    logits_bv = jnp.broadcast_to(jnp.asarray(LOGITS_V), (DRAWS, LOGITS_V.size))
    key_data = jax.random.key_data(jax.random.split(jax.random.key(seed), DRAWS))
    keys_b = position_keys(key_data, jnp.zeros(DRAWS, jnp.int32))
    tokens_b, logprobs_b = jax.jit(sample_tokens, static_argnames=("greedy", "top_k", "use_top_p"))(
        logits_bv, keys_b, temperature, top_p, greedy=False, top_k=top_k, use_top_p=top_p < 1.0
    )
    tokens_b = np.asarray(tokens_b)
    return np.bincount(tokens_b, minlength=LOGITS_V.size) / DRAWS, tokens_b, np.asarray(logprobs_b)


@pytest.mark.parametrize(
    "temperature,top_k,top_p",
    [
        (0.6, 0, 1.0),
        (1.3, 3, 1.0),
        (1.0, 0, 0.7),
        (0.8, 5, 0.6),
    ],
)
def test_empirical_frequencies_match_the_definition(temperature, top_k, top_p):
    freqs, tokens, logprobs = empirical(temperature, top_k, top_p)
    expected = filtered_probs_reference(LOGITS_V, temperature, top_k, top_p)
    # 5 standard deviations of a binomial frequency, so the check fails only on a real mismatch
    tolerance = 5 * np.sqrt(expected * (1 - expected) / DRAWS) + 1e-9
    assert np.all(np.abs(freqs - expected) <= tolerance), (freqs, expected)
    assert np.all(freqs[expected == 0] == 0), "a filtered-out token was sampled"
    # reported log-probs: full-vocabulary log_softmax(logits / T), never renormalised after filtering
    full = jax.nn.log_softmax(LOGITS_V.astype(np.float64) / temperature)
    np.testing.assert_allclose(logprobs, np.asarray(full)[tokens], rtol=0, atol=1e-6)


def test_reference_definition_on_a_hand_worked_case():
    probs = filtered_probs_reference(np.log([0.5, 0.3, 0.15, 0.05]), top_p=0.75)
    np.testing.assert_allclose(probs, [0.5 / 0.8, 0.3 / 0.8, 0, 0])  # 0.5 < 0.75, the crossing 0.3 kept
    probs = filtered_probs_reference(np.log([0.5, 0.3, 0.15, 0.05]), top_k=3, top_p=0.5)
    np.testing.assert_allclose(probs, [1, 0, 0, 0])  # top-p on top-k renormalised: 0.5/0.95 ≥ 0.5


def test_greedy_is_argmax_and_reports_the_tempered_logprob():
    logits_bv = jnp.asarray(np.random.RandomState(0).randn(4, 50).astype(np.float32))
    keys_b = position_keys(jax.random.key_data(jax.random.split(jax.random.key(0), 4)), jnp.arange(4))
    tokens, logprobs = sample_tokens(logits_bv, keys_b, 0.5, 1.0, greedy=True, top_k=0, use_top_p=False)
    np.testing.assert_array_equal(tokens, np.argmax(logits_bv, axis=-1))
    expected = jax.nn.log_softmax(logits_bv / 0.5)[np.arange(4), np.asarray(tokens)]
    np.testing.assert_allclose(logprobs, expected, atol=1e-6)


def test_keys_are_per_sequence_and_per_position():
    logits_bv = jnp.zeros((3, 1000))
    same_key = jnp.tile(jax.random.key_data(jax.random.key(7))[None], (3, 1))

    def draw(positions):
        keys_b = position_keys(same_key, jnp.asarray(positions, jnp.int32))
        return np.asarray(sample_tokens(logits_bv, keys_b, 1.0, 1.0, greedy=False, top_k=0, use_top_p=False)[0])

    first = draw([5, 5, 6])
    assert first[0] == first[1] != first[2]  # same key & position → same token, whatever the row
    np.testing.assert_array_equal(draw([5, 5, 6]), first)


def test_sampling_params_validation():
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=0.0)
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0.0)
    with pytest.raises(ValueError, match="top_k"):
        SamplingParams(top_k=-1)
    with pytest.raises(ValueError, match="stop tokens"):
        SamplingParams(stop_token_ids=tuple(range(MAX_STOP_TOKENS + 1)))
    with pytest.raises(ValueError, match="budgets for 3 slots"):
        SamplingParams(max_new_tokens=(4, 5)).budgets(3)
    params = SamplingParams(max_new_tokens=[4, 5], stop_token_ids=[9])
    np.testing.assert_array_equal(params.budgets(2), [4, 5])
    assert params.stop_ids_array().tolist() == [9] + [-1] * (MAX_STOP_TOKENS - 1)
    assert SamplingParams(greedy=True, top_k=5, top_p=0.5).static_key(100) == (True, 0, False)
    assert SamplingParams(top_k=500, top_p=0.5).static_key(100) == (False, 0, True)


def test_bucket_ladders():
    assert geometric_ladder(64, 256) == (64, 96, 128, 192, 256)
    assert geometric_ladder(64, 1000) == (64, 96, 128, 192, 256, 384, 512, 768, 1000)
    assert geometric_ladder(16, 100, half_steps=False) == (16, 32, 64, 100)
    buckets = BucketConfig(min_cache_len=64, min_chunk_len=16, prefill_chunk=128)
    assert buckets.chunk_lengths() == (16, 32, 64, 128)
    assert round_up(65, buckets.cache_lengths(512)) == 96
    assert round_up(96, buckets.cache_lengths(512)) == 96
    with pytest.raises(BucketError, match="exceeds"):
        round_up(513, buckets.cache_lengths(512))
    with pytest.raises(ValueError, match="min_chunk_len"):
        BucketConfig(min_chunk_len=64, prefill_chunk=32)


def test_sampler_config_loads_from_overrides():
    from envtune_jax.config import ConfigError, load
    from envtune_jax.models.generation.config import SamplerConfig

    config = load(SamplerConfig, None, ["temperature=0.7", "top_k=20", "stop_token_ids=[5, 6]", "max_cache_len=4096"])
    params = config.sampling_params()
    assert (params.temperature, params.top_k, params.stop_token_ids) == (0.7, 20, (5, 6))
    assert config.buckets().cache_lengths(config.max_cache_len)[-1] == 4096
    with pytest.raises(ConfigError, match="top_p"):
        load(SamplerConfig, None, ["top_pp=0.5"])
