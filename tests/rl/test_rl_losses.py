"""GRPO advantages and the policy loss (rl/advantages.py, rl/losses.py) against independent NumPy code."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from envtune_jax.config import ConfigError, load
from envtune_jax.rl import advantages, losses
from envtune_jax.rl.rl_config import LossConfig

AGG_MODES = ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"]


# ---------------------------------------------------------------- NumPy references
def np_group_advantages(rewards_pg, scale_by_std=True, eps=1e-6, ddof=1):
    out = np.zeros_like(rewards_pg, dtype=np.float64)
    for p, row in enumerate(np.float64(rewards_pg)):
        if np.all(row == row[0]):
            continue
        std = np.std(row, ddof=ddof) if len(row) > ddof else 0.0
        out[p] = (row - row.mean()) / (std + eps) if scale_by_std else row - row.mean()
    return out


def np_aggregate(loss_bt, mask_bt, mode, norm_length=None):
    all_rows = [(loss_bt[b][mask_bt[b] > 0]) for b in range(loss_bt.shape[0])]
    if mode == "seq-mean-token-sum-norm":  # Dr. GRPO: (1/B) sum_b sum_t / constant, empty sequences count
        return np.mean([row.sum() / norm_length for row in all_rows])
    rows = [row for row in all_rows if row.size]
    if not rows:
        return 0.0
    if mode == "token-mean":
        return np.concatenate(rows).mean()
    return np.mean([row.mean() for row in rows])


def np_kl(logp, ref, estimator, clamp):
    if estimator == "k1":
        kl = logp - ref
    else:
        kl = np.exp(ref - logp) - (ref - logp) - 1
    return kl if clamp is None else np.clip(kl, -clamp, clamp)


def np_ppo(ratio, adv, eps_low, eps_high, dual_c):
    """Case form: A >= 0 -> -A min(r, 1 + eh); A < 0 -> |A| min(max(r, 1 - el), c)."""
    positive = -adv * np.minimum(ratio, 1 + eps_high)
    negative = np.abs(adv) * np.maximum(ratio, 1 - eps_low)
    if dual_c is not None:
        negative = np.minimum(negative, np.abs(adv) * dual_c)
    return np.where(adv >= 0, positive, negative)


def np_ratio(logp, old, mask, level):
    if level == "token":
        return np.where(mask > 0, np.exp(logp - old), 1.0)
    seq = np.array(
        [np.exp(np.mean((logp[b] - old[b])[mask[b] > 0])) if mask[b].any() else 1.0 for b in range(logp.shape[0])]
    )
    return np.broadcast_to(seq[:, None], logp.shape)


def np_policy_loss(logp, old, ref, adv, ent, mask, cfg):
    ratio = np_ratio(logp, old, mask, cfg.ratio_level)
    pg = np_aggregate(
        np_ppo(ratio, adv, cfg.eps_low, cfg.eps_high, cfg.dual_clip_c), mask, cfg.loss_agg_mode, cfg.seq_sum_norm_length
    )
    kl = np_aggregate(
        np_kl(logp, ref, cfg.kl_estimator, cfg.kl_clamp), mask, cfg.loss_agg_mode, cfg.seq_sum_norm_length
    )
    entropy = np_aggregate(ent, mask, cfg.loss_agg_mode, cfg.seq_sum_norm_length)
    counted = mask > 0
    token_ratio = np.exp(logp - old)[counted]
    metrics = {
        "pg_loss": pg,
        "kl": kl,
        "entropy": entropy,
        "clip_frac_high": np.mean(((adv > 0) & (ratio > 1 + cfg.eps_high))[counted]),
        "clip_frac_low": np.mean(((adv < 0) & (ratio < 1 - cfg.eps_low))[counted]),
        "dual_clip_frac": np.mean(((adv < 0) & (ratio > cfg.dual_clip_c))[counted]),
        "ratio_mean": np.mean(ratio[counted]),
        "approx_kl": np.mean(token_ratio - 1 - np.log(token_ratio)),
    }
    return pg + cfg.kl_coef * kl - cfg.entropy_coef * entropy, metrics


# ---------------------------------------------------------------- inputs
def random_batch(seed, batch=4, tokens=9, spread=0.4):
    rng = np.random.default_rng(seed)
    old = -rng.uniform(0.1, 3.0, (batch, tokens))
    logp = old + rng.normal(0, spread, (batch, tokens))
    ref = old + rng.normal(0, spread, (batch, tokens))
    adv = rng.normal(0, 1, (batch, 1)) * np.ones((1, tokens))
    ent = rng.uniform(0, 2, (batch, tokens))
    mask = (rng.uniform(size=(batch, tokens)) < 0.7).astype(np.float32)
    mask[1] = 0.0  # a sequence with no counted token
    return [np.float32(x) for x in (logp, old, ref, adv, ent, mask)]


# Jitted wrappers: one compile per test instead of one per eager op (tests share a 2-core CPU).
jit_policy_loss = jax.jit(losses.policy_loss, static_argnames="config")
jit_group_advantages = jax.jit(advantages.group_advantages, static_argnames=("scale_by_std", "eps", "ddof"))
jit_group_advantages_from_ids = jax.jit(
    advantages.group_advantages_from_ids, static_argnames=("num_groups", "scale_by_std", "eps", "ddof")
)


# ---------------------------------------------------------------- advantages
@pytest.mark.parametrize("scale_by_std", [True, False])
def test_group_advantages_match_numpy(scale_by_std):
    rewards_pg = np.random.default_rng(0).uniform(0, 2, (5, 16)).astype(np.float32)
    got = jit_group_advantages(jnp.asarray(rewards_pg), scale_by_std=scale_by_std)
    np.testing.assert_allclose(got, np_group_advantages(rewards_pg, scale_by_std), rtol=1e-5, atol=1e-5)


def test_identical_groups_and_singletons_get_exactly_zero():
    # In float32 the mean of 16 x 0.7 is off by 1 ulp; a naive (R - mean) / (std + 1e-6) gives ~0.1.
    rewards_pg = jnp.array([[0.7] * 16, [1.0] * 16, [0.0, 1.0, 0.25] + [0.5] * 13], jnp.float32)
    got = jit_group_advantages(rewards_pg)
    assert np.all(np.asarray(got[:2]) == 0.0) and np.all(np.asarray(got[2]) != 0.0)
    assert np.all(np.asarray(advantages.group_advantages(jnp.ones((3, 1)))) == 0.0)
    ids_got = jit_group_advantages_from_ids(jnp.array([0.7] * 16 + [0.1]), jnp.array([0] * 16 + [1]), num_groups=2)
    assert np.all(np.asarray(ids_got) == 0.0)


def test_group_ids_form_matches_grid_form_and_numpy_for_uneven_groups():
    rng = np.random.default_rng(1)
    rewards_pg = rng.uniform(0, 1, (3, 4)).astype(np.float32)
    order = rng.permutation(12)
    rewards_b, ids_b = rewards_pg.reshape(-1)[order], np.repeat(np.arange(3), 4)[order]
    got_b = jit_group_advantages_from_ids(jnp.asarray(rewards_b), jnp.asarray(ids_b), num_groups=3)
    want_b = np.asarray(jit_group_advantages(jnp.asarray(rewards_pg))).reshape(-1)[order]
    np.testing.assert_allclose(got_b, want_b, rtol=1e-5, atol=1e-6)
    uneven_ids = np.array([0, 0, 1, 1, 1, 2, 2, 2, 2, 0])
    uneven_rewards = rng.uniform(0, 1, 10).astype(np.float32)
    got = jit_group_advantages_from_ids(
        jnp.asarray(uneven_rewards), jnp.asarray(uneven_ids), num_groups=3, scale_by_std=True, ddof=0
    )
    for g in range(3):
        members = uneven_ids == g
        want = np_group_advantages(uneven_rewards[members][None], True, 1e-6, ddof=0)[0]
        np.testing.assert_allclose(np.asarray(got)[members], want, rtol=1e-5, atol=1e-6)


def test_group_ids_out_of_range_raise_or_give_nan_under_jit():
    with pytest.raises(ValueError, match="group ids"):
        advantages.group_advantages_from_ids(jnp.ones(3), jnp.array([0, 1, 2]), 2)
    got = jit_group_advantages_from_ids(jnp.array([0.0, 1.0, 5.0]), jnp.array([0, 0, 2]), num_groups=2)
    assert np.all(np.isfinite(got[:2])) and np.isnan(got[2])


def test_token_advantages_broadcast_and_mask():
    mask_bt = jnp.array([[1, 1, 0], [0, 0, 0]], jnp.float32)
    got = advantages.token_advantages(jnp.array([2.0, -1.0]), mask_bt)
    np.testing.assert_array_equal(got, [[2.0, 2.0, 0.0], [0.0, 0.0, 0.0]])


# ---------------------------------------------------------------- pieces
@pytest.mark.parametrize("mode", AGG_MODES)
def test_aggregations_match_numpy_and_accumulate_exactly(mode):
    loss_bt, *_, mask_bt = random_batch(2, batch=6)
    got = losses.aggregate(jnp.asarray(loss_bt), jnp.asarray(mask_bt), mode, norm_length=20)
    np.testing.assert_allclose(got, np_aggregate(loss_bt, mask_bt, mode, 20), rtol=1e-6)
    assert float(losses.aggregate(jnp.asarray(loss_bt), jnp.zeros_like(mask_bt), mode, 20)) == 0.0
    # Micro-batches weighted by aggregation_weight reproduce the whole-batch value.
    parts = [(jnp.asarray(loss_bt[s]), jnp.asarray(mask_bt[s])) for s in (slice(0, 2), slice(2, 6))]
    weights = [losses.aggregation_weight(m, mode) for _, m in parts]
    combined = sum(losses.aggregate(part, m, mode, 20) * w for (part, m), w in zip(parts, weights)) / sum(weights)
    np.testing.assert_allclose(combined, got, rtol=1e-6)


@pytest.mark.parametrize("estimator,clamp", [("k1", None), ("k3", None), ("low_var_kl", 10.0), ("k1", 0.05)])
def test_kl_estimators_match_numpy(estimator, clamp):
    rng = np.random.default_rng(3)
    logp, ref = np.float32(-rng.uniform(0, 3, (2, 50))), np.float32(-rng.uniform(0, 15, (2, 50)))
    got = losses.kl_per_token(jnp.asarray(logp), jnp.asarray(ref), estimator, clamp)
    np.testing.assert_allclose(got, np_kl(np.float64(logp), np.float64(ref), estimator, clamp), rtol=2e-5, atol=1e-5)


def test_ppo_clip_values_and_zero_gradients_where_clipped():
    eps_low, eps_high, dual_c = 0.2, 0.28, 10.0
    ratio = np.float32([0.5, 1.0, 1.5, 0.5, 1.0, 1.5, 20.0, 0.9])
    adv = np.float32([1.0, 1.0, 1.0, -1.0, -1.0, -2.0, -2.0, 0.0])

    def total(r):
        return jnp.sum(losses.ppo_clip_loss(r, jnp.asarray(adv), eps_low, eps_high, dual_c).loss_bt)

    out = losses.ppo_clip_loss(jnp.asarray(ratio), jnp.asarray(adv), eps_low, eps_high, dual_c)
    np.testing.assert_allclose(out.loss_bt, np_ppo(ratio, adv, eps_low, eps_high, dual_c), rtol=1e-6)
    grad = np.asarray(jax.grad(total)(jnp.asarray(ratio)))
    # A>0 & r<1-el: pessimistic branch keeps -A; A>0 & r>1+eh: clipped; A<0 & r<1-el: clipped;
    # A<0 & r in (1-el, c): |A|; A<0 & r > c: dual clip, loss = -A c, gradient 0; A = 0: 0.
    np.testing.assert_allclose(grad, [-1.0, -1.0, 0.0, 0.0, 1.0, 2.0, 0.0, 0.0])
    assert float(out.loss_bt[6]) == pytest.approx(2.0 * dual_c)
    np.testing.assert_array_equal(out.clipped_high_bt, ratio * 0 + [0, 0, 1, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(out.clipped_low_bt, [0, 0, 0, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(out.dual_clipped_bt, [0, 0, 0, 0, 0, 0, 1, 0])
    no_dual = losses.ppo_clip_loss(jnp.asarray(ratio), jnp.asarray(adv), eps_low, eps_high, None)
    assert float(no_dual.loss_bt[6]) == pytest.approx(40.0) and not np.any(no_dual.dual_clipped_bt)


# ---------------------------------------------------------------- composed loss
# Every aggregation mode, both ratio levels (GSPO with its small clip range) and every estimator.
@pytest.mark.parametrize(
    "mode,ratio_level,estimator,eps",
    [
        ("token-mean", "token", "low_var_kl", (0.2, 0.28)),
        ("seq-mean-token-mean", "sequence", "k1", (3e-4, 4e-4)),
        ("seq-mean-token-sum-norm", "token", "k3", (0.2, 0.28)),
        ("token-mean", "sequence", "k3", (3e-4, 4e-4)),
    ],
)
def test_policy_loss_matches_numpy(mode, ratio_level, estimator, eps):
    norm_length = 16 if mode == "seq-mean-token-sum-norm" else None
    config = LossConfig(
        loss_agg_mode=mode,
        ratio_level=ratio_level,
        kl_estimator=estimator,
        seq_sum_norm_length=norm_length,
        eps_low=eps[0],
        eps_high=eps[1],
    )
    logp, old, ref, adv, ent, mask = random_batch(4, spread=0.5)
    adv[0], mask[0, :2], logp[0, :2] = -1.5, 1.0, old[0, :2] + 3.0  # ratio e^3 > c with A < 0: dual clip
    loss, metrics = jit_policy_loss(*map(jnp.asarray, (logp, old, ref, adv, ent, mask)), config=config)
    want_loss, want_metrics = np_policy_loss(*map(np.float64, (logp, old, ref, adv, ent, mask)), config)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5, atol=1e-6)
    for name, want in want_metrics.items():
        np.testing.assert_allclose(metrics[name], want, rtol=1e-5, atol=1e-6, err_msg=name)
    assert metrics["clip_frac_high"] + metrics["clip_frac_low"] > 0  # the spread reaches the clip region
    assert ratio_level == "sequence" or metrics["dual_clip_frac"] > 0


def test_policy_loss_gradient_matches_closed_form_token_and_sequence():
    logp, old, ref, adv, ent, mask = map(jnp.asarray, random_batch(5, spread=0.05))
    for level in ("token", "sequence"):
        config = LossConfig(kl_coef=0.0, entropy_coef=0.0, ratio_level=level)
        grad = jax.jit(jax.grad(lambda lp: losses.policy_loss(lp, old, None, adv, None, mask, config)[0]))(logp)
        ratio = np_ratio(np.asarray(logp), np.asarray(old), np.asarray(mask), level)
        inside = np.abs(ratio - 1) < 0.2  # small spread: no clipping, d loss / d logp = -A r m / N
        want = -np.asarray(adv) * ratio * np.asarray(mask) / np.asarray(mask).sum()
        assert inside[np.asarray(mask) > 0].all()
        np.testing.assert_allclose(grad, want, rtol=1e-5, atol=1e-7)


def test_uncounted_positions_do_not_leak_nan():
    logp, old, ref, adv, ent, mask = map(jnp.asarray, random_batch(6))
    poisoned = [jnp.where(mask > 0, x, jnp.nan) for x in (logp, old, ref, adv, ent)]
    loss_and_grad = jax.jit(jax.value_and_grad(lambda lp, *rest: losses.policy_loss(lp, *rest, LossConfig())[0]))
    value, grad = loss_and_grad(poisoned[0], *poisoned[1:], mask)
    clean_value, clean_grad = loss_and_grad(logp, old, ref, adv, ent, mask)
    np.testing.assert_allclose(value, clean_value, rtol=1e-6)
    np.testing.assert_allclose(grad, clean_grad, rtol=1e-6)
    empty_loss, empty_metrics = jit_policy_loss(logp, old, ref, adv, ent, jnp.zeros_like(mask), config=LossConfig())
    assert float(empty_loss) == 0.0 and all(np.isfinite(v) for v in empty_metrics.values())


# ---------------------------------------------------------------- config and registries
def test_unknown_names_suggest_the_closest():
    with pytest.raises(losses.UnknownNameError, match="Did you mean 'token-mean'"):
        LossConfig(loss_agg_mode="token_mean")
    with pytest.raises(losses.UnknownNameError, match="Did you mean 'low_var_kl'"):
        LossConfig(kl_estimator="low_var")
    with pytest.raises(ConfigError, match="ratio_level"):
        LossConfig(ratio_level="sentence")
    with pytest.raises(ConfigError, match="dual_clip_c"):
        LossConfig(dual_clip_c=0.5)
    with pytest.raises(ValueError, match="ref_logp_bt"):
        losses.policy_loss(
            *map(jnp.asarray, random_batch(0)[:2]), None, *map(jnp.asarray, random_batch(0)[3:]), LossConfig()
        )


def test_config_defaults_and_yaml_overrides(tmp_path):
    path = tmp_path / "loss.yaml"
    path.write_text("eps_high: 0.3\nloss_agg_mode: seq-mean-token-sum-norm\n")
    config = load(LossConfig, path, ["seq_sum_norm_length=24576", "dual_clip_c=none"])
    assert (
        dataclasses.replace(
            config, eps_high=0.28, loss_agg_mode="token-mean", seq_sum_norm_length=None, dual_clip_c=10.0
        )
        == LossConfig()
    )
    assert (config.eps_high, config.seq_sum_norm_length, config.dual_clip_c) == (0.3, 24576, None)
    default = LossConfig()
    assert (default.eps_low, default.kl_coef, default.entropy_coef, default.kl_clamp) == (0.2, 0.1, 0.001, 10.0)


def test_seq_mean_token_sum_norm_divides_by_constants_only():
    """Dr. GRPO's divisor is the maximum response length, a constant: padding a batch to a longer bucket, or
    one sequence having no counted token, must not change the scale of the other sequences' terms."""
    loss_bt, *_, mask_bt = random_batch(7, batch=4, tokens=9)
    mask_bt[1] = 1.0
    loss, mask = jnp.asarray(loss_bt), jnp.asarray(mask_bt)
    value = float(losses.aggregate(loss, mask, "seq-mean-token-sum-norm", 100))
    assert value == pytest.approx(float(np.sum(loss_bt * mask_bt)) / 100 / 4, rel=1e-6)
    padded = float(
        losses.aggregate(
            jnp.pad(loss, ((0, 0), (0, 23))), jnp.pad(mask, ((0, 0), (0, 23))), "seq-mean-token-sum-norm", 100
        )
    )
    assert padded == pytest.approx(value, rel=1e-6)  # the old divisor followed the padded length (9 -> 32)
    emptied = float(losses.aggregate(loss, mask.at[1].set(0.0), "seq-mean-token-sum-norm", 100))
    others = float(np.sum((loss_bt * mask_bt)[[0, 2, 3]])) / 100 / 4
    assert emptied == pytest.approx(others, rel=1e-6)  # still divided by all 4 sequences
    with pytest.raises(ConfigError, match="seq_sum_norm_length"):
        LossConfig(loss_agg_mode="seq-mean-token-sum-norm")


def test_a_loss_field_its_mode_ignores_is_an_error_naming_it():
    with pytest.raises(ConfigError, match="kl_estimator"):
        LossConfig(kl_coef=0.0, kl_estimator="k1")
    with pytest.raises(ConfigError, match="seq_sum_norm_length"):
        LossConfig(seq_sum_norm_length=4096)  # token-mean never divides by it
    with pytest.raises(ConfigError, match="advantage_eps"):
        load(LossConfig, None, ["scale_advantages_by_std=false", "advantage_eps=1e-6"])  # even at its default
    assert LossConfig(kl_coef=0.0).kl_estimator == "low_var_kl"  # defaults are never an error


def test_sampler_mismatch_counts_tokens_outside_the_clip_range():
    logp = jnp.asarray([[-1.0, -2.0, -3.0, -4.0]])
    sampler = jnp.asarray([[-1.0, -2.5, -2.9, -9.0]])  # ratios 1, e^0.5, e^-0.1, (masked)
    mask = jnp.asarray([[1.0, 1.0, 1.0, 0.0]])
    abs_sum, outside = losses.sampler_mismatch_sums(logp, sampler, mask, 0.2, 0.28)
    assert float(abs_sum) == pytest.approx(0.6, rel=1e-6)
    assert float(outside) == 1.0  # e^0.5 = 1.65 > 1.28; e^-0.1 = 0.905 inside [0.8, 1.28]


def test_sum_norm_without_a_norm_length_is_a_config_error():
    loss_bt, mask_bt = jnp.ones((2, 3)), jnp.ones((2, 3))
    with pytest.raises(ConfigError, match="norm_length"):
        losses.seq_mean_token_sum_norm(loss_bt, mask_bt)
