"""The engine on an 8-fake-CPU-device mesh gives the same tokens and log-probs as on one device; the
cache is sharded (batch over data/fsdp, kv heads over tensor); the trainer's weights are used in
place when their layout agrees and resharded explicitly when the sampler asks for another; with the
batch unsharded (tensor parallelism only) extends are compacted to the appended rows; the Pallas
decode kernel runs per shard and gives the same generations."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import write_tiny_qwen3

ROOT = Path(__file__).resolve().parents[2]

CHECK = textwrap.dedent("""
    import sys, numpy as np, jax
    jax.config.update("jax_default_matmul_precision", "highest")
    from jax.sharding import NamedSharding, PartitionSpec as P
    from envtune_jax.models import hf_io
    from envtune_jax.mesh import MeshConfig, make_mesh
    from envtune_jax.sharding import LOGICAL_AXIS_RULES
    from envtune_jax.models.generation.buckets import BucketConfig
    from envtune_jax.models.generation.engine import GenerationEngine
    from envtune_jax.models.generation.sampling_params import SamplingParams
    assert len(jax.devices()) == 8, jax.devices()
    ckpt = sys.argv[1]
    rng = np.random.RandomState(0)
    prompts = [rng.randint(0, 512, n).tolist() for n in (5, 23, 11, 40)]
    turn = {1: rng.randint(0, 512, 9).tolist(), 3: rng.randint(0, 512, 30).tolist()}
    params = SamplingParams(temperature=1.0, top_k=40, top_p=0.95, max_new_tokens=16, stop_token_ids=())
    buckets = BucketConfig(min_cache_len=128, min_chunk_len=64, prefill_chunk=64)  # one program each

    def episode(engine, turn=turn):
        state = engine.start(prompts, rng=1)
        state, _ = engine.decode(state, params)
        state = engine.extend(state, turn)
        state, _ = engine.decode(state, params)
        return state, engine.history(state)

    single = hf_io.load_pretrained(ckpt, progress=False)
    single_engine = GenerationEngine(single, batch_size=4, max_cache_len=128, cache_dtype="float32", buckets=buckets)
    _, expected = episode(single_engine)
    _, expected_one_slot = episode(single_engine, {3: turn[3]})

    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    model = hf_io.load_pretrained(ckpt, mesh=mesh, progress=False)
    engine = GenerationEngine(model, batch_size=4, max_cache_len=128, cache_dtype="float32", mesh=mesh,
                              buckets=buckets)
    state, got = episode(engine)
    assert engine.weights.copied_arrays == 0, "weights already on the mesh must not be copied"
    assert engine.trace_counts["extend_rows"] == 0  # batch split over devices: every call runs all slots
    keys = state.cache.keys[0]
    want = NamedSharding(mesh, P(("data", "fsdp"), "tensor", None, None))  # [B, K, S, H]
    assert keys.sharding.is_equivalent_to(want, 4), keys.sharding
    assert len(keys.sharding.device_set) == 8
    np.testing.assert_array_equal(got.lengths, expected.lengths)
    for b in range(4):
        n = got.lengths[b]
        np.testing.assert_array_equal(got.tokens[b, :n], expected.tokens[b, :n])
        np.testing.assert_array_equal(got.sampled[b, :n], expected.sampled[b, :n])
        assert np.abs(got.logprobs[b, :n] - expected.logprobs[b, :n]).max() <= 1e-5

    # the sampler asks for tensor-parallel-only weights (no fsdp): an explicit, counted reshard
    rules = dict(LOGICAL_AXIS_RULES, embed=())
    tp_engine = GenerationEngine(model, batch_size=4, max_cache_len=128, cache_dtype="float32", mesh=mesh,
                                 buckets=buckets, weight_rules=rules)
    q = tp_engine.weights.params()["layers"][0]["attn"]["q"].get_value()
    assert q.sharding.is_equivalent_to(NamedSharding(mesh, P(None, "tensor", None)), 3), q.sharding
    assert tp_engine.weights.copied_arrays > 0
    trainer_q = model.layers[0].attn.q[...].sharding  # the trainer's copy is untouched
    assert trainer_q.is_equivalent_to(NamedSharding(mesh, P("fsdp", "tensor", None)), 3), trainer_q
    hidden = np.asarray(tp_engine.start(prompts, rng=1).hidden_bd)
    reference = np.asarray(engine.start(prompts, rng=1).hidden_bd)
    assert np.abs(hidden - reference).max() <= 1e-5 * np.abs(reference).max()

    # tensor parallelism only (2 devices, batch unsharded): extends of a few slots run on those rows only
    tp_mesh = make_mesh(MeshConfig(data=1, fsdp=1, tensor=2), devices=jax.devices()[:2])
    tp_model = hf_io.load_pretrained(ckpt, mesh=tp_mesh, progress=False)
    tp_only = GenerationEngine(tp_model, batch_size=4, max_cache_len=128, cache_dtype="float32", mesh=tp_mesh,
                               buckets=buckets)
    state, got = episode(tp_only, {3: turn[3]})
    assert tp_only.trace_counts["extend_rows"] > 0, tp_only.trace_counts
    keys = state.cache.keys[0]
    assert keys.sharding.is_equivalent_to(NamedSharding(tp_mesh, P(None, "tensor", None, None)), 4), keys.sharding
    np.testing.assert_array_equal(got.lengths, expected_one_slot.lengths)
    for b in range(4):
        n = got.lengths[b]
        np.testing.assert_array_equal(got.tokens[b, :n], expected_one_slot.tokens[b, :n])
        assert np.abs(got.logprobs[b, :n] - expected_one_slot.logprobs[b, :n]).max() <= 1e-5

    # the Pallas decode kernel runs per shard (shard_map over the cache's layout), same generations
    kernel_model = hf_io.load_pretrained(ckpt, mesh=mesh, progress=False, decode_attention="pallas")
    _, got = episode(GenerationEngine(kernel_model, batch_size=4, max_cache_len=128, cache_dtype="float32",
                                      mesh=mesh, buckets=buckets))
    np.testing.assert_array_equal(got.lengths, expected.lengths)
    for b in range(4):
        n = got.lengths[b]
        np.testing.assert_array_equal(got.tokens[b, :n], expected.tokens[b, :n])
        assert np.abs(got.logprobs[b, :n] - expected.logprobs[b, :n]).max() <= 1e-5
    print("ok")
""")


@pytest.mark.multidevice
def test_eight_device_mesh_gives_the_same_generations(tmp_path):
    ckpt = write_tiny_qwen3(tmp_path / "ckpt", "tied_kv2", vocab_size=512)
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT)
    )
    result = subprocess.run(
        [sys.executable, "-c", CHECK, str(ckpt)], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0 and "ok" in result.stdout, result.stdout + result.stderr
