"""Log-probabilities of sampled tokens and policy entropy without materialising [B, T, V] logits.

`token_logprobs_and_entropy` walks T in chunks of `chunk_size_t` and, inside each, V in chunks of
`chunk_size_v`, keeping an online (streaming) logsumexp: a running max m, s = sum exp(l - m) and
u = sum exp(l - m) * l, so that logsumexp = m + log s and entropy = logsumexp - u / s. Logits are
hidden @ unembed / temperature with float32 accumulation whatever the input dtype. Each chunk is
wrapped in `jax.checkpoint`, so the backward pass recomputes a chunk's logits instead of keeping
them: peak extra memory is a few [B, chunk_size_t, chunk_size_v] float32 buffers plus one re-laid-out
copy of the unembedding ([V/chunk_size_v, D, chunk_size_v], input dtype).
`token_logprobs_and_entropy_reference` is the plain full-logits version the tests tie it to.

Conventions the sampler and the trainer must share (or importance ratios are biased):
- log p = log_softmax(logits / temperature) over the FULL vocabulary, no top-k / top-p
  renormalisation, the same temperature as sampling (1.0 in the paper), same dtype of hidden/unembed.
- hidden_btd[b, t] is the final-norm hidden state that predicts targets_bt[b, t]: for a token
  sequence x_bs the caller passes hidden[:, :-1] and targets x[:, 1:].
- The unembedding is laid out [D, V] (einsum `BTD,DV->BTV`); a tied model passes embedding_vd.T.
- targets outside [0, V) give log p = NaN (entropy stays defined): put any valid id (e.g. the pad
  id) at padding positions and mask them out of the loss.
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp

# Value given to the logits of vocabulary padding columns: finite, so 0 * NEG stays 0.
_NEG_LOGIT = -1e30


def token_logprobs_and_entropy_reference(
    hidden_btd: jax.Array, unembed_dv: jax.Array, targets_bt: jax.Array, temperature: float | jax.Array = 1.0
) -> tuple[jax.Array, jax.Array]:
    """Plain version: full float32 logits [B, T, V], log_softmax, gather. Returns ([B, T], [B, T])."""
    logits_btv = jnp.einsum("btd,dv->btv", hidden_btd, unembed_dv, preferred_element_type=jnp.float32)
    logp_btv = jax.nn.log_softmax(logits_btv / temperature, axis=-1)
    vocab = unembed_dv.shape[1]
    in_range_bt = (targets_bt >= 0) & (targets_bt < vocab)
    picked_bt = jnp.take_along_axis(logp_btv, jnp.clip(targets_bt, 0, vocab - 1)[..., None], axis=-1)[..., 0]
    entropy_bt = -jnp.sum(jnp.exp(logp_btv) * logp_btv, axis=-1)
    return jnp.where(in_range_bt, picked_bt, jnp.nan), entropy_bt


def _vocab_step(carry, chunk, *, hidden_btd, targets_bt, temperature, vocab, chunk_size_v):
    """Folds one vocabulary chunk (unembed_dv [D, Vc], first column v_start) into the running sums."""
    max_bt, sum_exp_bt, sum_exp_logit_bt, target_logit_bt = carry
    unembed_dv, v_start = chunk
    logits_btv = jnp.einsum("btd,dv->btv", hidden_btd, unembed_dv, preferred_element_type=jnp.float32)
    logits_btv = logits_btv / temperature
    column_v = v_start + jnp.arange(chunk_size_v)
    logits_btv = jnp.where(column_v < vocab, logits_btv, _NEG_LOGIT)
    # The running max only shifts exponents; logsumexp does not depend on it, so no gradient through it.
    new_max_bt = jax.lax.stop_gradient(jnp.maximum(max_bt, jnp.max(logits_btv, axis=-1)))
    rescale_bt = jnp.exp(max_bt - new_max_bt)
    exp_btv = jnp.exp(logits_btv - new_max_bt[..., None])
    sum_exp_bt = sum_exp_bt * rescale_bt + jnp.sum(exp_btv, axis=-1)
    sum_exp_logit_bt = sum_exp_logit_bt * rescale_bt + jnp.sum(exp_btv * logits_btv, axis=-1)
    local_bt = targets_bt - v_start
    hit_bt = (local_bt >= 0) & (local_bt < chunk_size_v)
    picked_bt = jnp.take_along_axis(logits_btv, jnp.clip(local_bt, 0, chunk_size_v - 1)[..., None], axis=-1)[..., 0]
    target_logit_bt = target_logit_bt + jnp.where(hit_bt, picked_bt, 0.0)
    return (new_max_bt, sum_exp_bt, sum_exp_logit_bt, target_logit_bt), None


def _token_chunk(hidden_btd, targets_bt, unembed_kdv, *, temperature, vocab, chunk_size_v):
    """log p and entropy [B, Tc] for one token chunk, scanning the K vocabulary chunks."""
    batch, tokens = targets_bt.shape
    start = jnp.full((batch, tokens), _NEG_LOGIT, jnp.float32)
    zeros = jnp.zeros((batch, tokens), jnp.float32)
    step = jax.checkpoint(
        functools.partial(
            _vocab_step,
            hidden_btd=hidden_btd,
            targets_bt=targets_bt,
            temperature=temperature,
            vocab=vocab,
            chunk_size_v=chunk_size_v,
        ),
        prevent_cse=False,
    )
    v_starts_k = jnp.arange(unembed_kdv.shape[0]) * chunk_size_v
    (max_bt, sum_exp_bt, sum_exp_logit_bt, target_logit_bt), _ = jax.lax.scan(
        step, (start, zeros, zeros, zeros), (unembed_kdv, v_starts_k)
    )
    logsumexp_bt = max_bt + jnp.log(sum_exp_bt)
    entropy_bt = logsumexp_bt - sum_exp_logit_bt / sum_exp_bt
    in_range_bt = (targets_bt >= 0) & (targets_bt < vocab)
    return jnp.where(in_range_bt, target_logit_bt - logsumexp_bt, jnp.nan), entropy_bt


def token_logprobs_and_entropy(
    hidden_btd: jax.Array,
    unembed_dv: jax.Array,
    targets_bt: jax.Array,
    temperature: float | jax.Array = 1.0,
    chunk_size_t: int = 512,
    chunk_size_v: int = 16384,
) -> tuple[jax.Array, jax.Array]:
    """log p(targets_bt) and entropy [B, T] float32 of softmax(hidden_btd @ unembed_dv / temperature).

    Args: hidden_btd [B, T, D]; unembed_dv [D, V]; targets_bt [B, T] int; temperature > 0 (may be
      traced); chunk sizes are static ints (clamped to T and V; neither needs to divide them).
      Differentiable in hidden_btd and unembed_dv, jit-compatible; matches the reference.
    """
    chex.assert_rank([hidden_btd, unembed_dv, targets_bt], [3, 2, 2])
    chex.assert_equal_shape_prefix([hidden_btd, targets_bt], 2)
    batch, tokens, model_dim = hidden_btd.shape
    if unembed_dv.shape[0] != model_dim:
        raise ValueError(f"unembed_dv must be [D={model_dim}, V], got {unembed_dv.shape} (pass embedding_vd.T)")
    if not (isinstance(chunk_size_t, int) and isinstance(chunk_size_v, int) and chunk_size_t > 0 and chunk_size_v > 0):
        raise ValueError(f"chunk sizes must be positive ints, got {chunk_size_t}, {chunk_size_v}")
    if isinstance(temperature, (int, float)) and temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return _chunked(hidden_btd, unembed_dv, targets_bt, temperature, chunk_size_t, chunk_size_v)


@functools.partial(jax.jit, static_argnames=("chunk_size_t", "chunk_size_v"))
def _chunked(hidden_btd, unembed_dv, targets_bt, temperature, chunk_size_t, chunk_size_v):
    """Lays hidden [B, T, D] out as [Nt, B, Tc, D] and unembed [D, V] as [Nv, D, Vc], maps over Nt."""
    batch, tokens, model_dim = hidden_btd.shape
    vocab = unembed_dv.shape[1]
    chunk_t, chunk_v = min(chunk_size_t, tokens), min(chunk_size_v, vocab)
    num_t, num_v = -(-tokens // chunk_t), -(-vocab // chunk_v)

    pad_t = num_t * chunk_t - tokens
    hidden_nbcd = jnp.pad(hidden_btd, ((0, 0), (0, pad_t), (0, 0)))
    hidden_nbcd = hidden_nbcd.reshape(batch, num_t, chunk_t, model_dim).transpose(1, 0, 2, 3)
    targets_nbc = jnp.pad(targets_bt, ((0, 0), (0, pad_t))).reshape(batch, num_t, chunk_t).transpose(1, 0, 2)
    unembed_kdv = jnp.pad(unembed_dv, ((0, 0), (0, num_v * chunk_v - vocab)))
    unembed_kdv = unembed_kdv.reshape(model_dim, num_v, chunk_v).transpose(1, 0, 2)

    chunk_fn = jax.checkpoint(
        functools.partial(
            _token_chunk, unembed_kdv=unembed_kdv, temperature=temperature, vocab=vocab, chunk_size_v=chunk_v
        ),
        prevent_cse=False,
    )
    logp_nbc, entropy_nbc = jax.lax.map(lambda xs: chunk_fn(*xs), (hidden_nbcd, targets_nbc))

    def unchunk(values_nbc: jax.Array) -> jax.Array:
        return values_nbc.transpose(1, 0, 2).reshape(batch, num_t * chunk_t)[:, :tokens]

    return unchunk(logp_nbc), unchunk(entropy_nbc)
