"""The train step: accumulation over micro-batches is exact, the loss equals the plain formulation,
and optimisation moves log-probs in the direction of the advantages."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from envtune_jax.config import ConfigError
from envtune_jax.models.config import Qwen3Config
from envtune_jax.models.qwen3 import init_model
from envtune_jax.rl.batch import dense_to_packed
from envtune_jax.rl.losses import policy_loss
from envtune_jax.rl.optimizer import OptimizerConfig
from envtune_jax.rl.rl_config import LossConfig
from envtune_jax.rl.train_step import Trainer, TrainStepConfig

CFG = Qwen3Config(
    vocab_size=96, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8
)
B, T = 4, 24


def _batch(seed=0):
    rng = np.random.RandomState(seed)
    tokens = rng.randint(0, CFG.vocab_size, (B, T)).astype(np.int32)
    mask = np.zeros((B, T), np.float32)
    for b in range(B):
        mask[b, 6 + b : 18 + b] = 1.0  # model tokens after a prompt; ragged ends
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
    step = TrainStepConfig(micro_batch_size=micro, logprob_chunk_t=8, logprob_chunk_v=40, old_logprobs="sampler")
    return Trainer(graphdef, loss, OptimizerConfig(learning_rate=1e-3), step)


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


@pytest.mark.parametrize("mode", ["recompute", "sampler"])
def test_both_modes_log_the_sampler_trainer_mismatch(setup, whole_batch_trainer, mode):
    """Old log-probs that differ from the trainer's (as bf16 sampler numerics do): both modes report the
    mean |Δ log p| and the share of tokens whose ratio leaves the clip range; recompute trains at ratio 1."""
    graphdef, params = setup
    tokens, mask, _, adv = _batch(3)
    trainer = (
        whole_batch_trainer
        if mode == "sampler"
        else Trainer(
            graphdef,
            LossConfig(),
            OptimizerConfig(),
            TrainStepConfig(logprob_chunk_t=8, logprob_chunk_v=40, old_logprobs="recompute"),
        )
    )
    exact, _ = trainer.logprobs(params, jnp.asarray(tokens))
    offsets = np.where(np.arange(T) % 3 == 0, 0.5, 0.01).astype(np.float32)  # every third token way off
    sampler = np.asarray(exact) + offsets[None, :]
    batch = dense_to_packed(tokens, mask, sampler, adv)
    _, metrics = trainer.step(trainer.init(_copy(params)), _copy(params), batch)
    counted = mask > 0
    want_abs = np.mean(np.broadcast_to(offsets, mask.shape)[counted])
    want_outside = np.mean(np.broadcast_to(offsets == 0.5, mask.shape)[counted])  # e^-0.5 < 0.8; e^-0.01 inside
    np.testing.assert_allclose(float(metrics["sampler_logp_abs_diff"]), want_abs, rtol=1e-3)
    np.testing.assert_allclose(float(metrics["sampler_ratio_outside_clip"]), want_outside, atol=1e-6)
    if mode == "recompute":
        np.testing.assert_allclose(float(metrics["ratio_mean"]), 1.0, atol=1e-5)
        assert float(metrics["clip_frac_low"]) == float(metrics["clip_frac_high"]) == 0.0
    else:
        assert float(metrics["clip_frac_low"]) + float(metrics["clip_frac_high"]) > 0  # clipping on numerics alone


def test_per_micro_batch_weighting_is_the_mean_of_micro_batch_token_means(setup):
    """verl 0.4.1's weighting: each micro-batch's token-mean loss divided by the number of micro-batches.
    With ragged masks it differs from the batch's exact token mean, which the default "batch" keeps."""
    graphdef, params = setup
    tokens, mask, old, adv = _batch(4)
    mask[0, 6:16] = 0.0  # row 0 keeps 2 tokens, the others 12: micro-batch token counts differ
    batch = dense_to_packed(tokens, mask, old, adv)
    verl = Trainer(
        graphdef,
        LossConfig(kl_coef=0.0, entropy_coef=0.0),
        OptimizerConfig(learning_rate=1e-3),
        TrainStepConfig(
            micro_batch_size=2,
            loss_weighting="per_micro_batch",
            weighting_micro_batch_rows=2,
            logprob_chunk_t=8,
            logprob_chunk_v=40,
            old_logprobs="sampler",
        ),
    )
    _, verl_metrics = verl.step(verl.init(_copy(params)), None, batch)
    logp = np.asarray(verl.logprobs(params, jnp.asarray(tokens))[0])
    loss_cfg = LossConfig(kl_coef=0.0, entropy_coef=0.0)

    def plain_loss(rows):  # the plain loss of some rows on dense [rows, T] arrays
        adv_bt = jnp.asarray(adv[rows])[:, None] * mask[rows]
        arrays = [jnp.asarray(x[rows]) for x in (logp, old, mask)]
        return float(policy_loss(arrays[0], arrays[1], None, adv_bt, None, arrays[2], loss_cfg)[0])

    micro_batches = [[0, 2], [1, 3]]  # rows m, m + M, ... (the trainer's split keeps data-parallel shards local)
    want_verl = np.mean([plain_loss(rows) for rows in micro_batches])
    want_exact = plain_loss([0, 1, 2, 3])
    np.testing.assert_allclose(float(verl_metrics["loss"]), want_verl, rtol=1e-4)
    # the default weighting's exact batch value (test_micro_batching_gives_the_same_update) differs here
    assert abs(want_verl - want_exact) > 1e-3
    with pytest.raises(ConfigError, match="weighting_micro_batch_rows"):
        TrainStepConfig(weighting_micro_batch_rows=2)  # ignored by the default "batch" weighting
    with pytest.raises(ConfigError, match="must divide"):
        TrainStepConfig(micro_batch_size=4, loss_weighting="per_micro_batch", weighting_micro_batch_rows=3)
