"""Shared prefixes on an 8-fake-CPU-device mesh (data 2 x fsdp 2 x tensor 2): the prefix regions are laid out
like the slots, every slot reads a region on its own batch shard (a group spread over shards gets one region
per shard), and greedy sequences and sampled log-probs equal the single-device per-slot engine's."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

CHECK = textwrap.dedent("""
    import numpy as np, jax
    jax.config.update("jax_default_matmul_precision", "highest")
    from flax import nnx
    from jax.sharding import NamedSharding, PartitionSpec as P
    from envtune_jax.mesh import MeshConfig, make_mesh
    from envtune_jax.sharding import named_sharding
    from envtune_jax.models.config import Qwen3Config
    from envtune_jax.models.generation.buckets import BucketConfig
    from envtune_jax.models.generation.engine import GenerationEngine
    from envtune_jax.models.generation.reference import reference_logprobs
    from envtune_jax.models.generation.sampling_params import SamplingParams
    from envtune_jax.models.generation.prefix_config import SharedPrefixConfig
    from envtune_jax.models.qwen3 import init_model
    assert len(jax.devices()) == 8, jax.devices()
    cfg = Qwen3Config(vocab_size=256, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                      num_kv_heads=2, head_dim=16)
    graphdef, weights = nnx.split(init_model(cfg, seed=3))
    weights = jax.tree.map(lambda x: x * 12 if x.ndim == 2 else x, weights)
    buckets = BucketConfig(min_cache_len=128, min_chunk_len=32, prefill_chunk=32, cache_half_steps=False)
    rng = np.random.RandomState(0)
    a, b, c = (rng.randint(0, 256, n).tolist() for n in (19, 40, 27))
    prompts = [a, a, a, b, b, b, b, c]  # a: slots 0-2 (shards 0, 1), b: slots 3-6 (shards 1-3), c: slot 7
    greedy = SamplingParams(greedy=True, max_new_tokens=(6, 9, 3, 8, 1, 9, 5, 7), stop_token_ids=())
    sampled = SamplingParams(temperature=0.9, top_k=30, max_new_tokens=8, stop_token_ids=())

    def episode(engine, params):
        state = engine.start(prompts, rng=1)
        state, t1 = engine.decode(state, greedy)
        state = engine.extend(state, {1: rng2[0], 5: rng2[1]})
        state, t2 = engine.decode(state, greedy, active=[1, 5])
        state = engine.release(state, [0, 1, 2])
        state = engine.refill(state, {0: c, 1: c}, rng=2)
        state, t3 = engine.decode(state, sampled, active=[0, 1])
        return state, [t1.token_lists(), t2.token_lists()], engine.history(state)

    rng2 = [np.random.RandomState(5).randint(0, 256, 11).tolist(), np.random.RandomState(6).randint(0, 256, 3).tolist()]
    single = nnx.merge(graphdef, weights)
    plain = GenerationEngine(single, batch_size=8, max_cache_len=128, cache_dtype="float32", buckets=buckets)
    _, want_turns, want = episode(plain, None)

    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    placed = jax.tree.map(lambda v: v.replace(jax.device_put(v[...], named_sharding(
        mesh, v.get_metadata()["logical_axes"], v.shape))), weights, is_leaf=lambda x: isinstance(x, nnx.Variable))
    model = nnx.merge(graphdef, placed)
    shared = GenerationEngine(model, batch_size=8, max_cache_len=128, cache_dtype="float32", mesh=mesh,
                              buckets=buckets, shared_prefix=SharedPrefixConfig(lanes=2, regions=8))
    state, got_turns, got = episode(shared, None)
    assert got_turns == want_turns, (got_turns, want_turns)
    np.testing.assert_array_equal(got.lengths, want.lengths)
    for slot in range(8):
        assert got.sequence(slot) == want.sequence(slot), slot
    mask = got.sampled & (np.arange(got.tokens.shape[1])[None] < got.lengths[:, None])
    refilled = np.isin(np.arange(8), [0, 1])[:, None]  # sampled at temperature 0.9; the others greedy (1.0)
    for temperature, rows in ((sampled.temperature, refilled), (1.0, ~refilled)):
        recomputed = reference_logprobs(single, got.tokens, got.lengths, temperature=temperature)
        assert np.abs(got.logprobs[mask & rows] - recomputed[mask & rows]).max() <= 1e-5
    keys = state.prefix.regions.keys[0]  # [R, K, P, H]: regions over data x fsdp, kv heads over tensor
    assert keys.sharding.is_equivalent_to(NamedSharding(mesh, P(("data", "fsdp"), "tensor", None, None)), 4)
    lanes = np.asarray(state.prefix.lane_b)
    regions = lanes // 2
    assert regions[2] == 8  # released, not refilled: no region
    for slot in (0, 1, 3, 4, 5, 6, 7):
        assert regions[slot] < 8 and regions[slot] * 4 // 8 == slot * 4 // 8, (slot, regions)
    assert len(set(regions[3:7].tolist())) == 3  # b's four slots span three shards: three regions
    print("ok")
""")


@pytest.mark.multidevice
def test_shared_prefixes_on_an_eight_device_mesh():
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT)
    )
    result = subprocess.run([sys.executable, "-c", CHECK], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and "ok" in result.stdout, result.stdout + result.stderr
