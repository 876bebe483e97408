"""Shared-prefix train batches (a group's prompt once, its continuations after it): log-probs, loss and every
gradient equal those of the unshared batch, with ragged continuations, several groups per row, both mask
forms (one masked attention, also on splash; two-level with a log-sum-exp merge) and micro-batches, through
the Trainer's reference-model and recompute passes."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from envtune_jax.models.config import Qwen3Config
from envtune_jax.models.qwen3 import init_model
from envtune_jax.rl.batch import pack_batch
from envtune_jax.rl.losses import policy_loss
from envtune_jax.rl.optimizer import OptimizerConfig
from envtune_jax.rl.prefix_packing import pack_shared_prefix, sample_order
from envtune_jax.rl.rl_config import LossConfig
from envtune_jax.rl.train_step import Trainer, TrainStepConfig, sampled_logprobs

CFG = Qwen3Config(
    vocab_size=96, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8
)
CHUNKS = dict(temperature=1.0, chunk_t=16, chunk_v=40)


def _trajectories(seed=0):
    """Three groups of three: prompts of 10, 14 and 6 tokens; continuations of ragged lengths with environment
    tokens (mask 0) between sampled ones; in the second group all samples begin with the same two tokens."""
    rng = np.random.RandomState(seed)
    tokens, masks, logprobs, groups = [], [], [], []
    for group, (prompt_len, conts) in enumerate([(10, (7, 3, 12)), (14, (5, 9, 2)), (6, (1, 11, 4))]):
        prompt = rng.randint(0, CFG.vocab_size, prompt_len)
        common = rng.randint(0, CFG.vocab_size, 2)
        for length in conts:
            own = rng.randint(0, CFG.vocab_size, length)
            if group == 1:
                own[:2] = common
            mask = np.concatenate([np.zeros(prompt_len), (rng.rand(length) < 0.7)]).astype(np.int32)
            ids = np.concatenate([prompt, own]).astype(np.int32)
            tokens.append(ids)
            masks.append(mask)
            logprobs.append(np.where(mask > 0, -np.log(CFG.vocab_size) + 0.1 * rng.randn(len(ids)), 0.0))
            groups.append(group)
    advantages = rng.randn(len(tokens)).astype(np.float32)
    return tokens, masks, logprobs, advantages, groups


@pytest.fixture(scope="module")
def setup():
    graphdef, params = nnx.split(init_model(CFG, seed=2), nnx.Param)
    return graphdef, params


def _loss_fn(graphdef, batch, loss_cfg, ref_bk=None):
    def loss(params):
        logp, entropy = sampled_logprobs(graphdef, params, batch.tokens_bt, batch.target_index_bk, **CHUNKS)
        adv = batch.advantages_b[:, None] * batch.mask_bk
        value, _ = policy_loss(logp, batch.old_logprobs_bk, ref_bk, adv, entropy, batch.mask_bk, loss_cfg)
        return value, logp

    return jax.jit(jax.value_and_grad(loss, has_aux=True))


# per-sequence aggregation: the samples of a shared row must stay separate sequences for the loss
LOSS = LossConfig(kl_coef=0.0, loss_agg_mode="seq-mean-token-mean")


@pytest.fixture(scope="module")
def unshared(setup):
    """(trajectories, packed batch, (loss, log-probs), gradients) of the unshared batch, computed once."""
    graphdef, params = setup
    trajectories = _trajectories()
    plain = pack_batch(*trajectories[:4])
    return trajectories, plain, *_loss_fn(graphdef, plain, LOSS)(params)


@pytest.mark.parametrize("two_level, attention", [(True, "reference"), (False, "reference"), (False, "splash")])
def test_logprobs_loss_and_gradients_equal_the_unshared_batch(setup, unshared, two_level, attention):
    """attention: the model's back-end for the one masked attention ("splash": the static mask of the rows'
    layout, in Pallas interpret mode); the unshared batch always runs the reference."""
    graphdef, params = setup
    if attention != "reference":
        graphdef = nnx.split(init_model(dataclasses.replace(CFG, attention_impl=attention)), nnx.Param)[0]
    (tokens, masks, logprobs, advantages, groups), plain, (want, want_logp), want_grads = unshared
    shared = pack_shared_prefix(tokens, masks, logprobs, advantages, groups, groups_per_row=2, two_level=two_level)
    rows = shared.tokens_bt
    assert rows.shape[0] == 2 and rows.layout.groups == 2  # three groups over two rows: one row holds two
    assert rows.shape[1] * rows.shape[0] < plain.tokens_bt.size
    (got, got_logp), got_grads = _loss_fn(graphdef, shared, LOSS)(params)
    order = sample_order(groups, shared, groups_per_row=2)
    for i in range(len(tokens)):
        n = int(plain.mask_bk[i].sum())
        assert int(shared.mask_bk[order[i]].sum()) == n
        np.testing.assert_allclose(np.asarray(got_logp)[order[i], :n], np.asarray(want_logp)[i, :n], rtol=1e-5)
    assert abs(float(got) - float(want)) <= 1e-5 * abs(float(want))
    for path, want_leaf in jax.tree_util.tree_leaves_with_path(want_grads):
        got_leaf = np.asarray(dict(jax.tree_util.tree_leaves_with_path(got_grads))[path])
        scale = np.abs(np.asarray(want_leaf)).max()
        assert scale > 0
        assert np.abs(got_leaf - np.asarray(want_leaf)).max() <= 1e-5 * scale, jax.tree_util.keystr(path)


def test_trainer_step_with_reference_and_recompute_passes_matches(setup):
    """The whole step (KL to a reference, recomputed old log-probs, two micro-batches of rows): the same
    loss, KL, entropy and gradient norm as the unshared batch in one micro-batch, two-level and as one
    masked attention on splash (the rows' static mask; Pallas interpret mode)."""
    graphdef, params = setup
    splash_graphdef = nnx.split(init_model(dataclasses.replace(CFG, attention_impl="splash")), nnx.Param)[0]
    tokens, masks, logprobs, advantages, groups = _trajectories(seed=1)
    ref_params = jax.tree.map(lambda x: x * 1.01, params)
    loss_cfg = LossConfig(kl_coef=0.1, loss_agg_mode="token-mean")
    base = TrainStepConfig(old_logprobs="recompute", logprob_chunk_t=16, logprob_chunk_v=40)
    metrics = {}
    for name, mode, micro, batch, model in (
        ("plain", "off", 0, pack_batch(tokens, masks, logprobs, advantages), graphdef),
        (
            "shared",
            "two_level",
            1,
            pack_shared_prefix(tokens, masks, logprobs, advantages, groups, groups_per_row=2, rows_multiple=1),
            graphdef,
        ),
        (
            "splash",
            "mask",
            1,
            pack_shared_prefix(
                tokens, masks, logprobs, advantages, groups, groups_per_row=2, rows_multiple=1, two_level=False
            ),
            splash_graphdef,
        ),
    ):
        trainer = Trainer(
            model,
            loss_cfg,
            OptimizerConfig(learning_rate=1e-3),
            dataclasses.replace(base, micro_batch_size=micro, shared_prefix=mode),
        )
        copy = jax.tree.map(lambda x: jnp.array(x, copy=True), params)
        _, out = trainer.step(trainer.init(copy), ref_params, batch)
        metrics[name] = {k: float(v) for k, v in jax.device_get(out).items()}
    for key in (
        "loss",
        "kl",
        "entropy",
        "pg_loss",
        "grad_norm",
        "model_tokens",
        "sampler_logp_abs_diff",
        "sampler_ratio_outside_clip",
    ):
        for name in ("shared", "splash"):
            want, got = metrics["plain"][key], metrics[name][key]
            assert abs(got - want) <= 1e-5 * max(abs(want), 1e-3), (name, key, got, want)


def test_trainer_refuses_a_batch_of_the_other_packing(setup):
    graphdef, _ = setup
    tokens, masks, logprobs, advantages, groups = _trajectories()
    trainer = Trainer(graphdef, LossConfig(kl_coef=0.0), OptimizerConfig(), TrainStepConfig(shared_prefix="mask"))
    with pytest.raises(ValueError, match="not packed with shared prefixes"):
        trainer.step(None, None, pack_batch(tokens, masks, logprobs, advantages))


def test_groups_per_row_needs_shared_prefix():
    from envtune_jax.config import ConfigError

    with pytest.raises(ConfigError, match="prefix_groups_per_row=2 has no effect"):
        TrainStepConfig(prefix_groups_per_row=2)
    assert TrainStepConfig(shared_prefix="two_level", prefix_groups_per_row=2).prefix_groups_per_row == 2


def test_the_learner_packs_groups_once_when_the_train_step_shares_prefixes():
    from types import SimpleNamespace

    from envtune_jax.rl.grpo import PolicyLearner
    from envtune_jax.rl.prefix_packing import PrefixRows
    from envtune_jax.rl.rollout import Trajectory
    from envtune_jax.rl.train_step import TrainState

    tokens, masks, logprobs, advantages, groups = _trajectories()
    trajectories = [
        Trajectory(f"e{i}", "synthetic", g, t, m, lp.astype(np.float32), None, False)
        for i, (t, m, lp, g) in enumerate(zip(tokens, masks, logprobs, groups))
    ]
    trainer = SimpleNamespace(
        step_cfg=TrainStepConfig(shared_prefix="two_level", micro_batch_size=2),
        init=lambda params: TrainState(params, None, jnp.zeros((), jnp.int32)),
    )
    learner = PolicyLearner(init_model(CFG), None, trainer, None, LossConfig(kl_coef=0.0))
    batch, rows = learner._train_batch(trajectories, advantages)
    assert isinstance(batch.tokens_bt, PrefixRows) and rows == len(trajectories)
    assert batch.tokens_bt.shape[0] == 4 and batch.tokens_bt.two_level  # 3 groups, rows rounded up to 2 x 2
    assert float(batch.mask_bk.sum()) == sum(float(np.sum(m[1:])) for m in masks)
