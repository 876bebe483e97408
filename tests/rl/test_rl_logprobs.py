"""Chunked log-probs / entropy (rl/logprobs.py) against the full-logits reference and NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from envtune_jax.rl.logprobs import token_logprobs_and_entropy, token_logprobs_and_entropy_reference

TOL = dict(rtol=1e-5, atol=1e-5)
# Jitted so each test compiles once instead of op by op (the tests run on a shared 2-core CPU).
reference = jax.jit(token_logprobs_and_entropy_reference)


def _inputs(batch, tokens, model_dim, vocab, seed=0, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    hidden_btd = jnp.asarray(rng.standard_normal((batch, tokens, model_dim)), jnp.float32).astype(dtype)
    unembed_dv = jnp.asarray(rng.standard_normal((model_dim, vocab)) * 3 / np.sqrt(model_dim), jnp.float32)
    targets_bt = jnp.asarray(rng.integers(0, vocab, (batch, tokens)), jnp.int32)
    return hidden_btd, unembed_dv.astype(dtype), targets_bt


def _numpy_logprobs_and_entropy(hidden_btd, unembed_dv, targets_bt, temperature):
    logits_btv = np.einsum("btd,dv->btv", np.float64(hidden_btd), np.float64(unembed_dv)) / temperature
    shifted_btv = logits_btv - logits_btv.max(-1, keepdims=True)
    logp_btv = shifted_btv - np.log(np.exp(shifted_btv).sum(-1, keepdims=True))
    picked_bt = np.take_along_axis(logp_btv, np.asarray(targets_bt)[..., None], axis=-1)[..., 0]
    return picked_bt, -(np.exp(logp_btv) * logp_btv).sum(-1)


# (B, T, D, V, chunk_t, chunk_v): neither chunk divides; both divide (several chunks); chunks larger than T and V.
SHAPES = [(2, 13, 8, 37, 4, 5), (1, 8, 16, 32, 4, 8), (3, 5, 4, 19, 16, 64)]


def _values_and_gradients(fn, logp_weights_bt, entropy_weights_bt):
    """Jitted (h, w, temperature) -> (logp_bt, entropy_bt, d/dh, d/dw) of sum(w_l * logp) + sum(w_e * entropy).
    The temperature is a traced argument, so this also checks that it may be one."""

    def run(hidden_btd, unembed_dv, temperature):
        outputs, pullback = jax.vjp(lambda h, w: fn(h, w, temperature), hidden_btd, unembed_dv)
        return (*outputs, *pullback((logp_weights_bt, entropy_weights_bt)))

    return jax.jit(run)


@pytest.mark.parametrize("batch,tokens,model_dim,vocab,chunk_t,chunk_v", SHAPES)
def test_chunked_matches_reference_and_numpy_values_and_gradients(batch, tokens, model_dim, vocab, chunk_t, chunk_v):
    hidden_btd, unembed_dv, targets_bt = _inputs(batch, tokens, model_dim, vocab)
    logp_weights_bt, entropy_weights_bt = np.random.default_rng(7).standard_normal((2, batch, tokens), np.float32)
    chunked = _values_and_gradients(
        lambda h, w, temp: token_logprobs_and_entropy(h, w, targets_bt, temp, chunk_t, chunk_v),
        logp_weights_bt,
        entropy_weights_bt,
    )
    plain = _values_and_gradients(
        lambda h, w, temp: token_logprobs_and_entropy_reference(h, w, targets_bt, temp),
        logp_weights_bt,
        entropy_weights_bt,
    )
    temperature = jnp.float32(0.7)
    got, want = chunked(hidden_btd, unembed_dv, temperature), plain(hidden_btd, unembed_dv, temperature)
    assert got[0].shape == got[1].shape == (batch, tokens)
    for name, got_x, want_x in zip(("logp", "entropy", "d_hidden", "d_unembed"), got, want):
        np.testing.assert_allclose(got_x, want_x, **TOL, err_msg=name)
    np_logp_bt, np_entropy_bt = _numpy_logprobs_and_entropy(hidden_btd, unembed_dv, targets_bt, 0.7)
    np.testing.assert_allclose(got[0], np_logp_bt, **TOL)
    np.testing.assert_allclose(got[1], np_entropy_bt, **TOL)


def test_bf16_inputs_accumulate_in_fp32():
    hidden_btd, unembed_dv, targets_bt = _inputs(2, 11, 64, 300, dtype=jnp.bfloat16)
    logp_bt, entropy_bt = token_logprobs_and_entropy(hidden_btd, unembed_dv, targets_bt, 1.0, 4, 64)
    assert logp_bt.dtype == entropy_bt.dtype == jnp.float32
    # bf16 * bf16 products are exact in fp32, so an fp32-accumulating result matches fp32 maths closely.
    want = _numpy_logprobs_and_entropy(np.float32(hidden_btd), np.float32(unembed_dv), targets_bt, 1.0)
    np.testing.assert_allclose(logp_bt, want[0], rtol=1e-5, atol=2e-5)
    np.testing.assert_allclose(entropy_bt, want[1], rtol=1e-5, atol=2e-5)


def test_uniform_logits_give_log_vocab():
    hidden_btd, _, targets_bt = _inputs(1, 6, 4, 29)
    logp_bt, entropy_bt = token_logprobs_and_entropy(hidden_btd, jnp.zeros((4, 29)), targets_bt, 1.0, 4, 8)
    np.testing.assert_allclose(logp_bt, -np.log(29) * np.ones((1, 6)), rtol=1e-6)
    np.testing.assert_allclose(entropy_bt, np.log(29) * np.ones((1, 6)), rtol=1e-6)


def test_out_of_range_targets_give_nan_logp_in_both_versions():
    hidden_btd, unembed_dv, targets_bt = _inputs(1, 4, 8, 12)
    targets_bt = targets_bt.at[0, 1].set(12).at[0, 2].set(-1)
    for logp_bt, entropy_bt in (
        token_logprobs_and_entropy(hidden_btd, unembed_dv, targets_bt, 1.0, 2, 5),
        reference(hidden_btd, unembed_dv, targets_bt),
    ):
        assert np.isnan(logp_bt[0, 1]) and np.isnan(logp_bt[0, 2])
        assert np.all(np.isfinite(logp_bt[0, [0, 3]])) and np.all(np.isfinite(entropy_bt))


def test_backward_does_not_keep_full_logits():
    batch, tokens, model_dim, vocab = 2, 512, 64, 8192
    hidden_btd, unembed_dv, targets_bt = _inputs(batch, tokens, model_dim, vocab)

    def scalar(hidden_btd, unembed_dv):
        logp_bt, entropy_bt = token_logprobs_and_entropy(hidden_btd, unembed_dv, targets_bt, 1.0, 64, 1024)
        return jnp.sum(logp_bt) + jnp.sum(entropy_bt)

    compiled = jax.jit(jax.grad(scalar, argnums=(0, 1))).lower(hidden_btd, unembed_dv).compile()
    analysis = compiled.memory_analysis()
    if analysis is None:
        pytest.skip("this backend reports no memory analysis")
    full_logits_bytes = batch * tokens * vocab * 4
    # Measured on CPU: ~6 MB with per-chunk checkpointing, ~83 MB without; full fp32 logits are 33.5 MB.
    assert analysis.temp_size_in_bytes < full_logits_bytes / 2


def test_bad_layout_and_arguments_raise():
    hidden_btd, unembed_dv, targets_bt = _inputs(1, 4, 8, 12)
    with pytest.raises(ValueError, match="unembed_dv must be"):
        token_logprobs_and_entropy(hidden_btd, unembed_dv.T, targets_bt)
    with pytest.raises(ValueError, match="chunk sizes"):
        token_logprobs_and_entropy(hidden_btd, unembed_dv, targets_bt, 1.0, 0, 4)
    with pytest.raises(ValueError, match="temperature"):
        token_logprobs_and_entropy(hidden_btd, unembed_dv, targets_bt, 0.0)
