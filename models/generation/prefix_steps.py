"""The compiled programs of shared-prefix mode, as pure functions of (params, state, inputs) → state.

- `prefill_region_rows`: appends up to T prompt tokens to U gathered regions (ragged; chunk by chunk
  for long prompts), writing only the new window back, and keeps each region's last hidden state.
- `attach_slots`: slot s joins lane l (region l // M): its own cache starts empty, its next token is
  predicted from the region's last prompt token, its turn begins.
- `release_slots`: slots leave their lanes (a region with no lane left is free for another prompt).
- `reset_regions`: empties regions before a new prompt is prefilled there.
The engine (prefix_engine.py) jits each with the state donated.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from models import kv_cache as kv
from models.generation.state import GenerationState, constrain_state


def prefill_region_rows(graphdef: nnx.GraphDef, params: nnx.State, state: GenerationState, rows_u: jax.Array,
                        tokens_ut: jax.Array, num_new_u: jax.Array) -> GenerationState:
    """Appends tokens_ut [U, T] (first num_new_u [U] real) to regions rows_u [U] (an index ≥ R is padding)."""
    model = nnx.merge(graphdef, params)
    prefix = state.prefix
    rows, width = tokens_ut.shape
    gather = lambda x: jnp.take(x, rows_u, axis=0, mode="clip")  # noqa: E731
    scatter = lambda x, new: x.at[rows_u].set(new.astype(x.dtype), mode="drop")  # noqa: E731
    starts_u = gather(prefix.regions.lengths)
    row_cache = kv.KVCache(tuple(map(gather, prefix.regions.keys)), tuple(map(gather, prefix.regions.values)),
                           starts_u)
    hidden_utd, row_cache = model.hidden_states(tokens_ut, cache=row_cache, num_new_b=num_new_u)

    def write_back(full_rkph, rows_ukph):
        return kv.write_kv(full_rkph, kv.read_window(rows_ukph, starts_u, width), starts_u, rows_u)

    regions = kv.KVCache(tuple(map(write_back, prefix.regions.keys, row_cache.keys)),
                         tuple(map(write_back, prefix.regions.values, row_cache.values)),
                         scatter(prefix.regions.lengths, row_cache.lengths))
    last_u = jnp.clip(num_new_u - 1, 0, width - 1)
    prefix = dataclasses.replace(
        prefix, regions=regions,
        tokens_rp=kv.write_positions(prefix.tokens_rp, tokens_ut.astype(jnp.int32), starts_u, rows_u),
        hidden_rd=scatter(prefix.hidden_rd, hidden_utd[jnp.arange(rows), last_u]))
    return constrain_state(dataclasses.replace(state, prefix=prefix))


def reset_regions(state: GenerationState, reset_r: jax.Array) -> GenerationState:
    """Regions where reset_r [R] is True become empty."""
    regions = state.prefix.regions
    lengths = jnp.where(reset_r, 0, regions.lengths)
    prefix = dataclasses.replace(state.prefix, regions=kv.KVCache(regions.keys, regions.values, lengths))
    return constrain_state(dataclasses.replace(state, prefix=prefix))


def attach_slots(state: GenerationState, slots_u: jax.Array, lanes_u: jax.Array) -> GenerationState:
    """Slot slots_u[u] joins lane lanes_u[u] [U] (a slot index ≥ B is padding): empty own cache, hidden state
    of its region's last prompt token, a new turn. PRNG keys are left as they are (set by the caller)."""
    prefix = state.prefix
    put = lambda x, new: x.at[slots_u].set(jnp.asarray(new).astype(x.dtype), mode="drop")  # noqa: E731
    hidden_ud = jnp.take(prefix.hidden_rd, lanes_u // prefix.lanes, axis=0, mode="clip")
    zeros_u = jnp.zeros(slots_u.shape, jnp.int32)
    cache = kv.KVCache(state.cache.keys, state.cache.values, put(state.cache.lengths, zeros_u))
    return constrain_state(dataclasses.replace(
        state, cache=cache, hidden_bd=put(state.hidden_bd, hidden_ud),
        prefix=dataclasses.replace(prefix, lane_b=put(prefix.lane_b, lanes_u)),
        turn_start_b=put(state.turn_start_b, zeros_u), done_b=put(state.done_b, zeros_u > 0),
        stop_hit_b=put(state.stop_hit_b, zeros_u > 0)))


def release_slots(state: GenerationState, release_b: jax.Array) -> GenerationState:
    """Slots where release_b [B] is True leave their lanes and become empty (length 0, done)."""
    prefix = state.prefix
    cache = kv.KVCache(state.cache.keys, state.cache.values, jnp.where(release_b, 0, state.cache.lengths))
    return constrain_state(dataclasses.replace(
        state, cache=cache, prefix=dataclasses.replace(prefix, lane_b=jnp.where(release_b, prefix.no_lane,
                                                                                prefix.lane_b)),
        turn_start_b=jnp.where(release_b, 0, state.turn_start_b), done_b=state.done_b | release_b,
        stop_hit_b=state.stop_hit_b & ~release_b))
