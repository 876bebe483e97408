"""Sharding rules and the 8-fake-CPU-device mesh: same logits as one device."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from jax.sharding import PartitionSpec as P

from envtune_jax.mesh import MeshConfig, resolve_mesh_shape
from envtune_jax.sharding import logical_to_spec
from tests.conftest import write_tiny_qwen3

ROOT = Path(__file__).resolve().parents[2]


class FakeMesh:
    def __init__(self, **sizes):
        self.axis_names = tuple(sizes)
        self.axis_sizes = tuple(sizes.values())


def test_rules_map_logical_axes_and_check_divisibility():
    mesh = FakeMesh(data=2, fsdp=2, tensor=4)
    assert logical_to_spec(("embed", "q_heads", "head_dim"), (64, 8, 16), mesh) == P("fsdp", "tensor", None)
    # 2 kv heads do not divide over tensor=4: replicated instead of an error
    assert logical_to_spec(("embed", "kv_heads", "head_dim"), (64, 2, 16), mesh) == P("fsdp", None, None)
    assert logical_to_spec(("act_batch", "act_seq", "act_embed"), (8, 5, 64), mesh) == P(("data", "fsdp"), None, None)
    # batch 2 divides data but not data*fsdp
    assert logical_to_spec(("act_batch", "act_seq"), (2, 5), mesh) == P("data", None)


def test_a_mesh_axis_is_used_once_per_array():
    assert logical_to_spec(("vocab", "mlp")) == P("tensor", None)


def test_unknown_logical_axis_is_an_error():
    with pytest.raises(KeyError, match="no sharding rule"):
        logical_to_spec(("not_an_axis",))


def test_mesh_shape_resolution():
    assert resolve_mesh_shape(MeshConfig(data=2, fsdp=-1, tensor=2), 8) == (2, 2, 2)
    assert resolve_mesh_shape(MeshConfig(data=1, fsdp=-1, tensor=1), 1) == (1, 1, 1)
    with pytest.raises(ValueError, match="needs 4 devices"):
        resolve_mesh_shape(MeshConfig(data=2, fsdp=2, tensor=1), 8)
    with pytest.raises(ValueError, match="at most one"):
        resolve_mesh_shape(MeshConfig(data=-1, fsdp=-1, tensor=1), 8)


CHECK = textwrap.dedent("""
    import sys, numpy as np, jax
    jax.config.update("jax_default_matmul_precision", "highest")
    from flax import nnx
    from envtune_jax.models import hf_io
    from envtune_jax.mesh import MeshConfig, make_mesh
    assert len(jax.devices()) == 8, jax.devices()
    ckpt = sys.argv[1]
    tokens = np.random.RandomState(0).randint(0, 512, (4, 96))
    single = np.asarray(hf_io.load_pretrained(ckpt, progress=False)(tokens))
    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    model = hf_io.load_pretrained(ckpt, mesh=mesh, progress=False)
    q = model.layers[0].attn.q[...]
    assert len(q.sharding.device_set) == 8 and q.addressable_shards[0].data.shape != q.shape, q.sharding
    with jax.set_mesh(mesh):
        sharded = np.asarray(nnx.jit(lambda m, t: m(t))(model, tokens))
    err = np.linalg.norm(sharded - single) / np.linalg.norm(single)
    print("relative error", err)
    assert err <= 1e-6, err
""")


@pytest.mark.multidevice
def test_eight_device_mesh_gives_same_logits(tmp_path):
    ckpt = write_tiny_qwen3(tmp_path / "ckpt", "tied_kv4_theta5e6", vocab_size=512)
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT)
    )
    result = subprocess.run(
        [sys.executable, "-c", CHECK, str(ckpt)], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
