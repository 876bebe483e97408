"""The device-side state of a batch of B generation slots, and the pure functions that reshape it.

Slot b holds one sequence, left-aligned: position p of the sequence is slot p of the KV cache and
of `tokens_bs` / `logprobs_bs` / `sampled_bs`; entries at or beyond `cache.lengths[b]` are garbage
that later writes overwrite. `hidden_bd[b]` is the final hidden state of the last cached token,
i.e. what predicts the next one, so prefill/extend never compute logits and decode computes them
for one position per sequence per step. A "turn" starts when tokens are appended to a sequence
(`turn_start_b` = its length then); `done_b` says the turn ended (stop token, budget or capacity).
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from envtune_jax.sharding import constrain
from models.generation.prefix_state import PrefixState, constrain_prefix
from models.kv_cache import CACHE_AXES, KVCache, cache_shape

_PER_SLOT = ("cache_batch", None)
_PER_POSITION = ("cache_batch", "cache_seq")


@dataclasses.dataclass
class GenerationState:
    cache: KVCache  # keys/values per layer [B, K, S, H]; lengths [B]
    hidden_bd: jax.Array  # [B, D] compute dtype: hidden state of each sequence's last cached token
    tokens_bs: jax.Array  # [B, S] int32 token ids of the whole sequence (prompt, sampled, appended)
    logprobs_bs: jax.Array  # [B, S] fp32 sampler log-prob of sampled tokens (0 elsewhere)
    sampled_bs: jax.Array  # [B, S] bool: token was sampled by the engine (not prompt/environment)
    key_data_b2: jax.Array  # [B, 2] uint32 PRNG key data of each sequence (default threefry impl)
    turn_start_b: jax.Array  # [B] int32 length of the sequence when its current turn began
    done_b: jax.Array  # [B] bool: the current turn is over
    stop_hit_b: jax.Array  # [B] bool: ... because a stop token was sampled
    # shared prompts (prefix_state.py); with them, `cache` and the [B, S] arrays hold each slot's own tokens
    prefix: PrefixState | None = None

    @property
    def batch_size(self) -> int:
        return self.tokens_bs.shape[0]

    @property
    def capacity(self) -> int:
        return self.tokens_bs.shape[1]


jax.tree_util.register_dataclass(
    GenerationState,
    data_fields=[f.name for f in dataclasses.fields(GenerationState)],
    meta_fields=[],
)


def constrain_state(state: GenerationState) -> GenerationState:
    """Pins every array to its layout on the active mesh (batch over data/fsdp, kv heads over tensor).

    Applied to every output so that shardings, and hence compiled programs, stay stable across calls.
    """
    cache = KVCache(tuple(constrain(k, CACHE_AXES) for k in state.cache.keys),
                    tuple(constrain(v, CACHE_AXES) for v in state.cache.values),
                    constrain(state.cache.lengths, ("cache_batch",)))
    return GenerationState(
        cache=cache,
        hidden_bd=constrain(state.hidden_bd, _PER_SLOT),
        tokens_bs=constrain(state.tokens_bs, _PER_POSITION),
        logprobs_bs=constrain(state.logprobs_bs, _PER_POSITION),
        sampled_bs=constrain(state.sampled_bs, _PER_POSITION),
        key_data_b2=constrain(state.key_data_b2, _PER_SLOT),
        turn_start_b=constrain(state.turn_start_b, ("cache_batch",)),
        done_b=constrain(state.done_b, ("cache_batch",)),
        stop_hit_b=constrain(state.stop_hit_b, ("cache_batch",)),
        prefix=None if state.prefix is None else constrain_prefix(state.prefix),
    )


def empty_state(num_layers: int, num_kv_heads: int, head_dim: int, hidden_size: int, batch: int, capacity: int,
                cache_dtype, hidden_dtype) -> GenerationState:
    """All slots empty (length 0, done). Meant to run under jit so arrays are born sharded."""
    shape_bksh = cache_shape(batch, num_kv_heads, capacity, head_dim)
    cache = KVCache(tuple(jnp.zeros(shape_bksh, cache_dtype) for _ in range(num_layers)),
                    tuple(jnp.zeros(shape_bksh, cache_dtype) for _ in range(num_layers)),
                    jnp.zeros((batch,), jnp.int32))
    return constrain_state(GenerationState(
        cache=cache,
        hidden_bd=jnp.zeros((batch, hidden_size), hidden_dtype),
        tokens_bs=jnp.zeros((batch, capacity), jnp.int32),
        logprobs_bs=jnp.zeros((batch, capacity), jnp.float32),
        sampled_bs=jnp.zeros((batch, capacity), bool),
        key_data_b2=jnp.zeros((batch, 2), jnp.uint32),
        turn_start_b=jnp.zeros((batch,), jnp.int32),
        done_b=jnp.ones((batch,), bool),
        stop_hit_b=jnp.zeros((batch,), bool),
    ))


def grow(state: GenerationState, capacity: int) -> GenerationState:
    """The same state with S raised to `capacity` (new slots zero)."""
    extra = capacity - state.capacity
    if extra < 0:
        raise ValueError(f"cannot shrink capacity {state.capacity} to {capacity}")

    def pad_slots(x, axis):  # zeros appended along the slot axis S
        widths = [(0, 0)] * x.ndim
        widths[axis] = (0, extra)
        return jnp.pad(x, widths)

    pad_seq = functools.partial(pad_slots, axis=1)  # per-position arrays [B, S]
    pad_cache = functools.partial(pad_slots, axis=2)  # keys / values [B, K, S, H]

    cache = KVCache(tuple(map(pad_cache, state.cache.keys)), tuple(map(pad_cache, state.cache.values)),
                    state.cache.lengths)
    return constrain_state(dataclasses.replace(
        state, cache=cache, tokens_bs=pad_seq(state.tokens_bs), logprobs_bs=pad_seq(state.logprobs_bs),
        sampled_bs=pad_seq(state.sampled_bs)))


def reset_slots(state: GenerationState, reset_b: jax.Array, key_data_b2: jax.Array) -> GenerationState:
    """Empties the slots where reset_b [B] is True and gives them new PRNG keys [B, 2]."""
    lengths = jnp.where(reset_b, 0, state.cache.lengths)
    return constrain_state(dataclasses.replace(
        state,
        cache=KVCache(state.cache.keys, state.cache.values, lengths),
        hidden_bd=jnp.where(reset_b[:, None], 0, state.hidden_bd).astype(state.hidden_bd.dtype),
        key_data_b2=jnp.where(reset_b[:, None], key_data_b2, state.key_data_b2),
        turn_start_b=jnp.where(reset_b, 0, state.turn_start_b),
        done_b=state.done_b | reset_b,
        stop_hit_b=state.stop_hit_b & ~reset_b,
    ))


def rewind_slots(state: GenerationState, keep_b: jax.Array) -> GenerationState:
    """Cuts sequence b back to its first keep_b[b] tokens where keep_b [B] ≥ 0 (-1: untouched).

    The kept tokens' cache entries stay; hidden_bd of a cut slot is stale until an extend appends to it.
    """
    cut_b = keep_b >= 0
    lengths = jnp.where(cut_b, jnp.minimum(keep_b, state.cache.lengths), state.cache.lengths)
    return constrain_state(dataclasses.replace(
        state,
        cache=KVCache(state.cache.keys, state.cache.values, lengths),
        turn_start_b=jnp.where(cut_b, lengths, state.turn_start_b),
        done_b=state.done_b | cut_b,
        stop_hit_b=state.stop_hit_b & ~cut_b,
    ))
