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

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

# Qwen3's <|im_end|> and <|endoftext|> (ids fixed by the tokenizer; see envtune_jax.chat.special_tokens).
QWEN3_STOP_TOKEN_IDS = (151645, 151643)
MAX_STOP_TOKENS = 8  # stop ids travel as a fixed-size array so changing them never recompiles


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens. top_k = 0 and top_p = 1.0 switch those filters off.

    max_new_tokens: per turn, an int for every sequence or one int per sequence (batch slot).
    temperature also scales the reported log-probs when greedy (argmax ignores it).
    """
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    greedy: bool = False
    max_new_tokens: int | tuple[int, ...] = 256
    stop_token_ids: tuple[int, ...] = QWEN3_STOP_TOKEN_IDS

    def __post_init__(self):
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature} (use greedy=True for argmax)")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be ≥ 0 (0 = off), got {self.top_k}")
        budgets = (self.max_new_tokens,) if isinstance(self.max_new_tokens, int) else self.max_new_tokens
        if any(int(n) < 0 for n in budgets):
            raise ValueError(f"max_new_tokens must be ≥ 0, got {self.max_new_tokens}")
        if not isinstance(self.max_new_tokens, int):
            object.__setattr__(self, "max_new_tokens", tuple(int(n) for n in self.max_new_tokens))
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))
        if len(self.stop_token_ids) > MAX_STOP_TOKENS:
            raise ValueError(f"at most {MAX_STOP_TOKENS} stop tokens, got {len(self.stop_token_ids)}")

    def static_key(self, vocab_size: int) -> tuple[bool, int, bool]:
        """What changes the compiled program: (greedy, effective top_k, top-p on)."""
        top_k = 0 if self.greedy or self.top_k >= vocab_size else self.top_k
        return self.greedy, top_k, (not self.greedy) and self.top_p < 1.0

    def budgets(self, batch_size: int) -> np.ndarray:
        """max_new_tokens as an int32 [B] array."""
        if isinstance(self.max_new_tokens, int):
            return np.full((batch_size,), self.max_new_tokens, np.int32)
        if len(self.max_new_tokens) != batch_size:
            raise ValueError(f"max_new_tokens lists {len(self.max_new_tokens)} budgets for {batch_size} slots")
        return np.asarray(self.max_new_tokens, np.int32)

    def stop_ids_array(self) -> np.ndarray:
        """Stop ids padded with -1 to [MAX_STOP_TOKENS] (int32)."""
        out = np.full((MAX_STOP_TOKENS,), -1, np.int32)
        out[:len(self.stop_token_ids)] = self.stop_token_ids
        return out


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


def sample_tokens(logits_bv: jax.Array, keys_b: jax.Array, temperature, top_p, *, greedy: bool, top_k: int,
                  use_top_p: bool) -> tuple[jax.Array, jax.Array]:
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


def filtered_probs_reference(logits_v: Sequence[float], temperature: float = 1.0, top_k: int = 0,
                             top_p: float = 1.0) -> np.ndarray:
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
