"""Token sampling: greedy, temperature, top-k, top-p with per-sequence PRNG keys, and the log-probs.

Conventions shared with the trainer (or importance ratios are biased):
- the returned log-prob of a token is log_softmax(logits / temperature) over the FULL vocabulary,
  never renormalised after top-k / top-p filtering (greedy too: it reports the same quantity);
- top-k keeps the k largest logits; top-p then keeps, from the top-k survivors renormalised, the
  smallest prefix (in decreasing probability) whose mass reaches top_p — the token that crosses
  top_p is kept. The sample is drawn from the survivors renormalised.
- the key of sequence b for the token at position p is fold_in(key_b, p): a sequence's samples do
  not depend on its batch neighbours, its slot, the mesh, or how decoding is chunked.

`filtered_probs_reference` is the plain NumPy statement of the definition the tests compare
empirical frequencies of `sample_tokens` against.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from envtune_jax.models.generation.sampling_params import MAX_STOP_TOKENS, QWEN3_STOP_TOKEN_IDS, SamplingParams  # noqa: F401


def token_logprobs(logits_bv: jax.Array, tokens_b: jax.Array, temperature) -> jax.Array:
    """log_softmax(logits / temperature)[token] over the full vocabulary, fp32 [B]."""
    logp_bv = jax.nn.log_softmax(logits_bv.astype(jnp.float32) / temperature, axis=-1)
    return jnp.take_along_axis(logp_bv, tokens_b[:, None], axis=-1)[:, 0]


def position_keys(key_data_b2: jax.Array, positions_b: jax.Array) -> jax.Array:
    """Typed PRNG keys [B]: fold_in(key of sequence b, position of the token being sampled)."""
    keys_b = jax.random.wrap_key_data(key_data_b2)
    return jax.vmap(jax.random.fold_in)(keys_b, positions_b)


def _filter_top_p(sorted_logits_bk: jax.Array, top_p) -> jax.Array:
    """Masks (to -inf) the tail of descending logits [B, K] beyond cumulative probability top_p."""
    probs_bk = jax.nn.softmax(sorted_logits_bk, axis=-1)
    mass_before_bk = jnp.cumsum(probs_bk, axis=-1) - probs_bk
    return jnp.where(mass_before_bk < top_p, sorted_logits_bk, -jnp.inf)


def sample_tokens(
    logits_bv: jax.Array, keys_b: jax.Array, temperature, top_p, *, greedy: bool, top_k: int, use_top_p: bool
) -> tuple[jax.Array, jax.Array]:
    """Samples one token per row of logits [B, V] (fp32). Returns (tokens [B] int32, log-probs [B] fp32).

    temperature / top_p may be traced scalars; greedy, top_k (0 = off) and use_top_p are static.
    """
    scaled_bv = logits_bv.astype(jnp.float32) / temperature
    if greedy:
        tokens_b = jnp.argmax(logits_bv, axis=-1).astype(jnp.int32)
    elif top_k == 0 and not use_top_p:
        tokens_b = jax.vmap(jax.random.categorical)(keys_b, scaled_bv).astype(jnp.int32)
    else:
        width = top_k if top_k else scaled_bv.shape[-1]
        top_logits_bk, top_ids_bk = jax.lax.top_k(scaled_bv, width)  # descending
        if use_top_p:
            top_logits_bk = _filter_top_p(top_logits_bk, top_p)
        choice_b = jax.vmap(jax.random.categorical)(keys_b, top_logits_bk)
        tokens_b = jnp.take_along_axis(top_ids_bk, choice_b[:, None], axis=-1)[:, 0].astype(jnp.int32)
    return tokens_b, token_logprobs(scaled_bv, tokens_b, 1.0)


def filtered_probs_reference(
    logits_v: Sequence[float], temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0
) -> np.ndarray:
    """The sampling distribution [V] by definition (NumPy, float64): softmax(l / T), top-k, top-p."""
    scaled = np.asarray(logits_v, np.float64) / temperature
    order = np.argsort(-scaled, kind="stable")
    keep = np.zeros(scaled.shape, bool)
    keep[order[:top_k] if top_k else order] = True
    probs = np.where(keep, np.exp(scaled - scaled.max()), 0.0)
    probs /= probs.sum()
    if top_p < 1.0:
        mass_before = 0.0
        for index in order:
            if not keep[index]:
                continue
            if mass_before >= top_p:
                keep[index] = False
            mass_before += probs[index]
        probs = np.where(keep, probs, 0.0)
        probs /= probs.sum()
    return probs
