"""The device-side state of a batch of B generation slots, declared once, and the pure functions that reshape it.

Slot b holds one sequence, left-aligned: position p of the sequence is slot p of the KV cache and
of `tokens_bs` / `logprobs_bs` / `sampled_bs`; entries at or beyond `cache.lengths[b]` are garbage
that later writes overwrite. `hidden_bd[b]` is the final hidden state of the last cached token,
i.e. what predicts the next one, so prefill/extend never compute logits and decode computes them
for one position per sequence per step. A "turn" starts when tokens are appended to a sequence
(`turn_start_b` = its length then); `done_b` says the turn ended (stop token, budget or capacity).

`FIELDS` declares every array (dimensions, dtype, empty value, whether emptying or copying a slot
touches it); creating, pinning to the mesh, growing, resetting and copying map over it (fields.py).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from envtune_jax.models.generation import fields as fl
from envtune_jax.models.generation.fields import ArrayField
from envtune_jax.models.generation.prefix_state import PrefixState, constrain_prefix, reset_prefix_rows
from envtune_jax.models.kv_cache import KVCache


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

# Every array of GenerationState (the prefix has its own table). An emptied slot (reset) gets length 0,
# a zero hidden state and a finished turn; its per-position entries stay (past length 0 they are garbage)
# and its PRNG key is the one the reset gives. A copied slot keeps its own PRNG key (copies sample apart).
FIELDS: tuple[ArrayField, ...] = (
    ArrayField("cache.keys", ("B", "K", "S", "H"), "cache", per_layer=True, resets=False),
    ArrayField("cache.values", ("B", "K", "S", "H"), "cache", per_layer=True, resets=False),
    ArrayField("cache.lengths", ("B",), "int32"),
    ArrayField("hidden_bd", ("B", "D"), "hidden"),
    ArrayField("tokens_bs", ("B", "S"), "int32", resets=False, history="tokens"),
    ArrayField("logprobs_bs", ("B", "S"), "float32", resets=False, history="logprobs"),
    ArrayField("sampled_bs", ("B", "S"), "bool", False, resets=False, history="sampled"),
    ArrayField("key_data_b2", ("B", 2), "uint32", resets=False, copied=False),
    ArrayField("turn_start_b", ("B",), "int32"),
    ArrayField("done_b", ("B",), "bool", True),
    ArrayField("stop_hit_b", ("B",), "bool", False),
)


def constrain_state(state: GenerationState) -> GenerationState:
    """Pins every array to its layout on the active mesh (batch over data/fsdp, kv heads over tensor).

    Applied to every output so that shardings, and hence compiled programs, stay stable across calls.
    """
    state = fl.constrain_fields(state, FIELDS)
    return state if state.prefix is None else dataclasses.replace(state, prefix=constrain_prefix(state.prefix))


def empty_state(
    num_layers: int,
    num_kv_heads: int,
    head_dim: int,
    hidden_size: int,
    batch: int,
    capacity: int,
    cache_dtype,
    hidden_dtype,
) -> GenerationState:
    """All slots empty (length 0, done). Meant to run under jit so arrays are born sharded."""
    arrays = fl.empty_arrays(
        FIELDS,
        {"B": batch, "K": num_kv_heads, "S": capacity, "H": head_dim, "D": hidden_size},
        {"cache": cache_dtype, "hidden": hidden_dtype},
        num_layers,
    )
    cache = KVCache(arrays.pop("cache.keys"), arrays.pop("cache.values"), arrays.pop("cache.lengths"))
    return constrain_state(GenerationState(cache=cache, **arrays))


def grow(state: GenerationState, capacity: int) -> GenerationState:
    """The same state with S raised to `capacity` (new slots zero)."""
    extra = capacity - state.capacity
    if extra < 0:
        raise ValueError(f"cannot shrink capacity {state.capacity} to {capacity}")
    return constrain_state(fl.pad_dim(state, FIELDS, "S", extra))


def reset_slots(state: GenerationState, reset_b: jax.Array, key_data_b2: jax.Array) -> GenerationState:
    """Empties the slots where reset_b [B] is True and gives them new PRNG keys [B, 2]."""
    state = fl.reset_rows(state, FIELDS, "B", reset_b)
    return constrain_state(
        dataclasses.replace(state, key_data_b2=jnp.where(reset_b[:, None], key_data_b2, state.key_data_b2))
    )


def copy_slots(state: GenerationState, sources_u: jax.Array, targets_u: jax.Array) -> GenerationState:
    """Slot targets_u[u] becomes a copy of slot sources_u[u] [U]: cache, sequence, turn flags and last hidden
    state, but not the PRNG key (copies sample differently). A target index ≥ B is padding (ignored)."""
    return constrain_state(fl.copy_rows(state, FIELDS, "B", sources_u, targets_u))


def gather_slots(state: GenerationState, rows_u: jax.Array) -> GenerationState:
    """The state of slots rows_u [U] only (an index ≥ B runs on a copy of the last slot). A shared prompt's
    regions stay whole; a padding row gets no lane (a lane read twice would lose its real row)."""
    rows = fl.gather_rows(state, FIELDS, "B", rows_u)
    prefix = state.prefix
    if prefix is None:
        return rows
    lane_u = jnp.where(rows_u < state.batch_size, jnp.take(prefix.lane_b, rows_u, mode="clip"), prefix.no_lane)
    return dataclasses.replace(rows, prefix=dataclasses.replace(prefix, lane_b=lane_u))


def scatter_slots(
    state: GenerationState, rows: GenerationState, rows_u: jax.Array, starts_u: jax.Array, width: int
) -> GenerationState:
    """`state` with the slots of `rows` (from gather_slots, then appended to at positions starts_u [U] ..
    + width - 1) written back to slots rows_u [U]: per-position arrays and caches in that window only."""
    return constrain_state(fl.scatter_rows(state, rows, FIELDS, "B", rows_u, starts_u, width))


def new_turns(state: GenerationState, where_b: jax.Array, *, done: bool) -> GenerationState:
    """Slots where where_b [B] is True begin a turn at their current length: no stop token seen yet, and
    `done` says whether the turn is closed until something is appended (a cut or released slot)."""
    return dataclasses.replace(
        state,
        turn_start_b=jnp.where(where_b, state.cache.lengths, state.turn_start_b),
        done_b=jnp.where(where_b, done, state.done_b),
        stop_hit_b=state.stop_hit_b & ~where_b,
    )


def rewind_slots(state: GenerationState, keep_b: jax.Array) -> GenerationState:
    """Cuts sequence b back to its first keep_b[b] tokens where keep_b [B] ≥ 0 (-1: untouched).

    The kept tokens' cache entries stay; hidden_bd of a cut slot is stale until an extend appends to it.
    """
    cut_b = keep_b >= 0
    lengths = jnp.where(cut_b, jnp.minimum(keep_b, state.cache.lengths), state.cache.lengths)
    state = dataclasses.replace(state, cache=KVCache(state.cache.keys, state.cache.values, lengths))
    return constrain_state(new_turns(state, cut_b, done=True))


def release_slots(state: GenerationState, release_b: jax.Array) -> GenerationState:
    """Slots where release_b [B] is True become empty (length 0, done) and leave their prefix lanes."""
    state = rewind_slots(state, jnp.where(release_b, 0, -1))
    if state.prefix is None:
        return state
    return constrain_state(dataclasses.replace(state, prefix=reset_prefix_rows(state.prefix, "B", release_b)))
