"""The train step: accumulation over micro-batches is exact, the loss equals the plain formulation,
and optimisation moves log-probs in the direction of the advantages."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from models.config import Qwen3Config
from models.qwen3 import init_model
from rl.losses import policy_loss
from rl.optimizer import OptimizerConfig
from rl.rl_config import LossConfig
from rl.batch import dense_to_packed
from rl.train_step import Trainer, TrainStepConfig

CFG = Qwen3Config(vocab_size=96, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8)
B, T = 4, 24


def _batch(seed=0):
    rng = np.random.RandomState(seed)
    tokens = rng.randint(0, CFG.vocab_size, (B, T)).astype(np.int32)
    mask = np.zeros((B, T), np.float32)
    for b in range(B):
        mask[b, 6 + b: 18 + b] = 1.0  # model tokens after a prompt; ragged ends
    old = np.where(mask > 0, -np.log(CFG.vocab_size) + 0.05 * rng.randn(B, T), 0.0).astype(np.float32)
    adv = np.array([1.0, -1.0, 0.5, -0.5], np.float32)
    return tokens, mask, old, adv


@pytest.fixture(scope="module")
def setup():
    graphdef, params = nnx.split(init_model(CFG, seed=1), nnx.Param)
    return graphdef, params


@pytest.fixture(scope="module")
def whole_batch_trainer(setup):
    """One compiled step shared by the tests that use the default loss on the whole batch."""
    return _trainer(setup[0], 0)


def _trainer(graphdef, micro, **loss_kw):
    loss = LossConfig(**loss_kw)
    return Trainer(graphdef, loss, OptimizerConfig(learning_rate=1e-3), TrainStepConfig(micro_batch_size=micro, logprob_chunk_t=8, logprob_chunk_v=40))


def _copy(tree):
    return jax.tree.map(lambda x: jnp.array(x, copy=True), tree)


def test_micro_batching_gives_the_same_update(setup, whole_batch_trainer):
    graphdef, params = setup
    batch = dense_to_packed(*_batch())
    results = []
    for micro in (0, 1):
        trainer = whole_batch_trainer if micro == 0 else _trainer(graphdef, micro)
        state, metrics = trainer.step(trainer.init(_copy(params)), _copy(params), batch)
        results.append((state.params, metrics))
    for params_m, metrics_m in results[1:]:
        np.testing.assert_allclose(float(metrics_m["loss"]), float(results[0][1]["loss"]), rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(float(metrics_m["grad_norm"]), float(results[0][1]["grad_norm"]), rtol=1e-4)
        for a, b in zip(jax.tree.leaves(params_m), jax.tree.leaves(results[0][0])):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def test_loss_equals_the_plain_full_logits_formulation(setup, whole_batch_trainer):
    graphdef, params = setup
    tokens, mask, old, _ = _batch(1)
    adv = np.array([1.0, 0.5, 2.0, 0.25], np.float32)  # all positive: no cancellation in the total
    batch = dense_to_packed(tokens, mask, old, adv)
    assert batch.tokens_bt.shape[1] >= T and batch.mask_bk.shape[1] < T  # only sampled positions are projected
    trainer = whole_batch_trainer
    policy_params = jax.tree.map(lambda x: x * 1.01, params)  # policy differs from the reference
    _, metrics = trainer.step(trainer.init(_copy(policy_params)), _copy(params), batch)

    def plain_logp(p):
        logits = nnx.merge(graphdef, p)(tokens[:, :-1])
        logp = jax.nn.log_softmax(logits, -1)
        picked = jnp.take_along_axis(logp, tokens[:, 1:, None], -1)[..., 0]
        ent = -(jnp.exp(logp) * logp).sum(-1)
        pad = jnp.zeros((B, 1))
        return jnp.concatenate([pad, picked], 1), jnp.concatenate([pad, ent], 1)

    logp, ent = plain_logp(policy_params)
    ref, _ = plain_logp(params)
    adv_bt = jnp.asarray(adv)[:, None] * mask
    expected, parts = policy_loss(logp, jnp.asarray(old), ref, adv_bt, ent, jnp.asarray(mask), LossConfig())
    np.testing.assert_allclose(float(metrics["loss"]), float(expected), rtol=1e-5)
    for name in ("pg_loss", "kl", "entropy"):
        np.testing.assert_allclose(float(metrics[name]), float(parts[name]), rtol=1e-5, atol=1e-7)


def test_steps_raise_logprobs_of_positively_rewarded_tokens(setup, whole_batch_trainer):
    graphdef, params = setup
    tokens, mask, _, adv = _batch(2)
    trainer = whole_batch_trainer
    state = trainer.init(_copy(params))
    before, _ = trainer.logprobs(state.params, jnp.asarray(tokens))
    batch = dense_to_packed(tokens, mask, np.asarray(before), adv)
    reference = _copy(params)
    for _ in range(5):
        state, metrics = trainer.step(state, reference, batch)
    after, _ = trainer.logprobs(state.params, jnp.asarray(tokens))
    gain = np.asarray(((after - before) * mask).sum(1) / mask.sum(1))
    assert gain[0] > 0 and gain[2] > 0 and gain[1] < 0 and gain[3] < 0, gain
    assert int(state.step) == 5


def test_recompute_mode_reports_the_sampler_ratio(setup):
    graphdef, params = setup
    tokens, mask, _, adv = _batch(3)
    trainer = Trainer(graphdef, LossConfig(), OptimizerConfig(), TrainStepConfig(old_logprobs="recompute"))
    exact, _ = trainer.logprobs(params, jnp.asarray(tokens))
    batch = dense_to_packed(tokens, mask, np.asarray(exact), adv)
    _, metrics = trainer.step(trainer.init(_copy(params)), _copy(params), batch)
    np.testing.assert_allclose(float(metrics["sampler_recompute_ratio"]), 1.0, atol=1e-5)
    np.testing.assert_allclose(float(metrics["ratio_mean"]), 1.0, atol=1e-5)
