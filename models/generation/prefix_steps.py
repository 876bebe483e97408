"""The compiled programs of shared-prefix mode, as pure functions of (params, state, inputs) → state.

- `prefill_region_rows`: appends up to T prompt tokens to U gathered regions (ragged; chunk by chunk
  for long prompts), writing only the new window back, and keeps each region's last hidden state.
- `attach_slots`: slot s joins lane l (region l // M): its own cache starts empty, its next token is
  predicted from the region's last prompt token, its turn begins.
- `release_slots` (state.py): slots leave their lanes (a region with no lane left is free for another prompt).
- `reset_regions`: empties regions before a new prompt is prefilled there.
The engine (prefix_engine.py) jits each with the state donated.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from envtune_jax.models import kv_cache as kv
from envtune_jax.models.generation import fields as fl
from envtune_jax.models.generation.prefix_state import FIELDS as PREFIX_FIELDS
from envtune_jax.models.generation.prefix_state import reset_prefix_rows
from envtune_jax.models.generation.state import GenerationState, constrain_state, new_turns


def prefill_region_rows(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    state: GenerationState,
    rows_u: jax.Array,
    tokens_ut: jax.Array,
    num_new_u: jax.Array,
) -> GenerationState:
    """Appends tokens_ut [U, T] (first num_new_u [U] real) to regions rows_u [U] (an index ≥ R is padding)."""
    model = nnx.merge(graphdef, params)
    rows, width = tokens_ut.shape
    prefix_u = fl.gather_rows(state.prefix, PREFIX_FIELDS, "R", rows_u)
    starts_u = prefix_u.regions.lengths
    hidden_utd, row_cache = model.hidden_states(tokens_ut, cache=prefix_u.regions, num_new_b=num_new_u)
    last_u = jnp.clip(num_new_u - 1, 0, width - 1)
    prefix_u = dataclasses.replace(
        prefix_u,
        regions=row_cache,
        tokens_rp=kv.write_positions(prefix_u.tokens_rp, tokens_ut.astype(jnp.int32), starts_u),
        hidden_rd=hidden_utd[jnp.arange(rows), last_u].astype(prefix_u.hidden_rd.dtype),
    )
    prefix = fl.scatter_rows(state.prefix, prefix_u, PREFIX_FIELDS, "R", rows_u, starts_u, width)
    return constrain_state(dataclasses.replace(state, prefix=prefix))


def reset_regions(state: GenerationState, reset_r: jax.Array) -> GenerationState:
    """Regions where reset_r [R] is True become empty."""
    return constrain_state(dataclasses.replace(state, prefix=reset_prefix_rows(state.prefix, "R", reset_r)))


def attach_slots(state: GenerationState, slots_u: jax.Array, lanes_u: jax.Array) -> GenerationState:
    """Slot slots_u[u] joins lane lanes_u[u] [U] (a slot index ≥ B is padding): empty own cache, hidden state
    of its region's last prompt token, a new turn. PRNG keys are left as they are (set by the caller)."""
    prefix = state.prefix
    put = lambda x, new: x.at[slots_u].set(jnp.asarray(new).astype(x.dtype), mode="drop")  # noqa: E731
    hidden_ud = jnp.take(prefix.hidden_rd, lanes_u // prefix.lanes, axis=0, mode="clip")
    attached_b = put(jnp.zeros(state.batch_size, bool), jnp.ones(slots_u.shape, bool))
    lengths_b = jnp.where(attached_b, 0, state.cache.lengths)
    state = dataclasses.replace(
        state,
        cache=kv.KVCache(state.cache.keys, state.cache.values, lengths_b),
        hidden_bd=put(state.hidden_bd, hidden_ud),
        prefix=dataclasses.replace(prefix, lane_b=put(prefix.lane_b, lanes_u)),
    )
    return constrain_state(new_turns(state, attached_b, done=False))
