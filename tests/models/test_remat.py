"""Remat policies change memory, never results: gradients equal the plain ones."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from envtune_jax.models.config import Qwen3Config
from envtune_jax.models.qwen3 import init_model

CFG = Qwen3Config(
    vocab_size=128, hidden_size=32, intermediate_size=64, num_layers=3, num_heads=4, num_kv_heads=2, head_dim=8
)


def _grads(cfg):
    model = init_model(cfg, seed=3)
    tokens = jnp.asarray(np.random.RandomState(0).randint(0, 128, (2, 16)))

    def loss(m):
        logp = jax.nn.log_softmax(m(tokens[:, :-1]))
        return -jnp.take_along_axis(logp, tokens[:, 1:, None], -1).mean()

    return nnx.jit(nnx.grad(loss))(model)


def test_every_remat_policy_gives_the_same_gradients():
    plain = nnx.to_flat_state(_grads(CFG))
    for policy in ("full", "dots", "dots_no_batch,none,full"):
        other = nnx.to_flat_state(_grads(CFG.replace(remat=policy)))
        for (path, a), (_, b) in zip(plain, other):
            np.testing.assert_allclose(np.asarray(a[...]), np.asarray(b[...]), rtol=1e-5, atol=1e-7, err_msg=str(path))


def test_remat_is_really_applied():
    tokens = jnp.zeros((1, 4), jnp.int32)

    def jaxpr_text(cfg):
        graphdef, state = nnx.split(init_model(cfg))
        return str(jax.make_jaxpr(lambda s: nnx.merge(graphdef, s)(tokens).sum())(state))

    assert "remat" not in jaxpr_text(CFG) and "checkpoint" not in jaxpr_text(CFG)
    text = jaxpr_text(CFG.replace(remat="full"))
    assert "remat" in text or "checkpoint" in text
