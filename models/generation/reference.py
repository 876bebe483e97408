"""Plain, cache-free references the engine is tested against: fresh full forwards, nothing clever.

- `reference_logprobs`: what the trainer computes — log_softmax(model.logits(hidden) / temperature)
  over the full vocabulary at every position of whole sequences, by one forward without a cache.
- `reference_greedy`: greedy decoding by re-running the whole sequence for every new token.
Both materialise [B, T, V] logits: for tiny test models only.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


@nnx.jit
def _full_logits(model, tokens_bt, segments_bt):
    return model(tokens_bt, None, segments_bt)


def reference_logprobs(model: nnx.Module, tokens_bt, lengths_b=None, temperature: float = 1.0) -> np.ndarray:
    """log p(tokens[b, t] | tokens[b, :t]) as float32 [B, T] (NumPy); 0 at t = 0 and at t ≥ lengths[b].

    tokens_bt [B, T] right-padded; lengths_b [B] real lengths (default all T).
    """
    tokens_bt = np.asarray(tokens_bt, np.int32)
    batch, width = tokens_bt.shape
    lengths_b = np.full(batch, width) if lengths_b is None else np.asarray(lengths_b)
    segments_bt = (np.arange(width)[None, :] < lengths_b[:, None]).astype(np.int32)
    logits_btv = _full_logits(model, jnp.asarray(tokens_bt), jnp.asarray(segments_bt))
    logp_btv = jax.nn.log_softmax(logits_btv[:, :-1].astype(jnp.float32) / temperature, axis=-1)
    picked = jnp.take_along_axis(logp_btv, jnp.asarray(tokens_bt[:, 1:, None]), axis=-1)[..., 0]
    out = np.zeros((batch, width), np.float32)
    out[:, 1:] = np.asarray(picked)
    out[segments_bt == 0] = 0.0
    return out


def reference_greedy(
    model: nnx.Module, prompt: Sequence[int], num_new: int, stop_token_ids: Sequence[int] = ()
) -> list[int]:
    """Greedy continuation of one prompt, re-running the full sequence for each token.

    The sequence is right-padded to one fixed width (padding masked out) so this compiles once.
    """
    width = len(prompt) + num_new
    tokens = np.zeros((1, width), np.int32)
    tokens[0, : len(prompt)] = prompt
    length = len(prompt)
    generated: list[int] = []
    while length < width:
        segments = (np.arange(width) < length).astype(np.int32)[None]
        logits_v = _full_logits(model, jnp.asarray(tokens), jnp.asarray(segments))[0, length - 1]
        token = int(jnp.argmax(logits_v))
        generated.append(token)
        tokens[0, length] = token
        length += 1
        if token in stop_token_ids:
            break
    return generated
