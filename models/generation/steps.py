"""The engine's compiled programs that run the model, as pure functions of (params, state, inputs) → state.

- `extend_chunk`: appends up to T tokens per sequence (ragged: num_new_b of them real) to the
  cache in one forward pass; prefill is extend on empty slots. Keeps only the hidden state of each
  extended sequence's last real token — logits are never computed for prompt positions.
- `decode_loop`: one `lax.while_loop` that, per step, turns each live sequence's hidden state into
  logits [B, V], samples a token, and runs the model on it (T = 1), until every live sequence has
  ended its turn (stop token, its max_new_tokens, or a full cache) or `max_steps` steps have run.
  Sequences that are not live ride along in their slot: their tokens are not counted and their
  cache entries past their length are garbage that later writes overwrite.
- `extend_rows`: `extend_chunk` on U < B gathered slots (the compacted call of extend_plan.py): the
  model runs on [U, T] only, and only the new window of each slot is written back.
The engine jits each with the state donated; the model graph is closed over (`graphdef`). The programs
that only move state (grow, reset, rewind, copy slots) are in state.py, the shared-prefix ones in
prefix_steps.py.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from envtune_jax.models import kv_cache as kv
from envtune_jax.models.generation.sampling import position_keys, sample_tokens
from envtune_jax.models.generation.state import GenerationState, constrain_state, gather_slots, new_turns, scatter_slots


def extend_chunk(
    graphdef: nnx.GraphDef, params: nnx.State, state: GenerationState, tokens_bt: jax.Array, num_new_b: jax.Array
) -> GenerationState:
    """Appends tokens_bt [B, T] (first num_new_b [B] of each row real) to each sequence."""
    model = nnx.merge(graphdef, params)
    batch, width = tokens_bt.shape
    starts_b = state.cache.lengths
    prefix = None if state.prefix is None else state.prefix.view()
    hidden_btd, cache = model.hidden_states(tokens_bt, cache=state.cache, num_new_b=num_new_b, prefix=prefix)
    last_b = jnp.clip(num_new_b - 1, 0, width - 1)
    last_hidden_bd = hidden_btd[jnp.arange(batch), last_b]
    extended_b = num_new_b > 0
    state = dataclasses.replace(
        state,
        cache=cache,
        hidden_bd=jnp.where(extended_b[:, None], last_hidden_bd, state.hidden_bd).astype(state.hidden_bd.dtype),
        tokens_bs=kv.write_positions(state.tokens_bs, tokens_bt.astype(jnp.int32), starts_b),
        logprobs_bs=kv.write_positions(state.logprobs_bs, jnp.zeros((batch, width), jnp.float32), starts_b),
        sampled_bs=kv.write_positions(state.sampled_bs, jnp.zeros((batch, width), bool), starts_b),
    )
    return constrain_state(new_turns(state, extended_b, done=False))


def extend_rows(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    state: GenerationState,
    rows_u: jax.Array,
    tokens_ut: jax.Array,
    num_new_u: jax.Array,
) -> GenerationState:
    """Appends tokens_ut [U, T] (first num_new_u [U] of each row real, ≥ 1) to the sequences in slots rows_u [U].

    A row index ≥ B is padding: it runs on a copy of the last slot and is written nowhere. The other
    B - U slots are untouched; the result equals extend_chunk with those slots' tokens and zeros elsewhere.
    """
    rows = gather_slots(state, rows_u)
    starts_u = rows.cache.lengths
    rows = extend_chunk(graphdef, params, rows, tokens_ut, num_new_u)
    return scatter_slots(state, rows, rows_u, starts_u, tokens_ut.shape[1])


def live_mask(state: GenerationState, active_b: jax.Array, budgets_b: jax.Array) -> jax.Array:
    """[B] bool: the sequence samples a token this step."""
    lengths_b = state.cache.lengths
    generated_b = lengths_b - state.turn_start_b
    return active_b & ~state.done_b & (_held(state) > 0) & (lengths_b < state.capacity) & (generated_b < budgets_b)


def _held(state: GenerationState) -> jax.Array:
    """[B] tokens of each sequence (a shared prompt included): 0 for an empty slot."""
    return state.cache.lengths if state.prefix is None else state.cache.lengths + state.prefix.offsets_b()


def decode_loop(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    state: GenerationState,
    active_b: jax.Array,
    budgets_b: jax.Array,
    stop_ids_k: jax.Array,
    temperature: jax.Array,
    top_p: jax.Array,
    max_steps: jax.Array,
    *,
    greedy: bool,
    top_k: int,
    use_top_p: bool,
) -> GenerationState:
    """Samples until no sequence is live or max_steps steps ran.

    active_b [B] bool: sequences allowed to generate in this call; budgets_b [B] int32: max new
    tokens of the current turn; stop_ids_k [K] int32 (-1 = unused); temperature, top_p, max_steps:
    scalars (traced, so changing them never recompiles).
    """
    capacity = state.capacity
    lengths_b = state.cache.lengths
    exhausted_b = (
        active_b & (_held(state) > 0) & ((lengths_b - state.turn_start_b >= budgets_b) | (lengths_b >= capacity))
    )
    state = dataclasses.replace(state, done_b=state.done_b | exhausted_b)

    def cond(carry):
        loop_state, step = carry
        return (step < max_steps) & jnp.any(live_mask(loop_state, active_b, budgets_b))

    def body(carry):
        loop_state, step = carry
        model = nnx.merge(graphdef, params)
        live_b = live_mask(loop_state, active_b, budgets_b)
        positions_b = loop_state.cache.lengths  # the slot written; the sequence position adds the prefix
        prefix = None if loop_state.prefix is None else loop_state.prefix.view()
        sequence_positions_b = positions_b if prefix is None else positions_b + prefix.offsets_b()
        logits_bv = model.logits(loop_state.hidden_bd[:, None, :])[:, 0]
        keys_b = position_keys(loop_state.key_data_b2, sequence_positions_b)
        tokens_b, logprobs_b = sample_tokens(
            logits_bv, keys_b, temperature, top_p, greedy=greedy, top_k=top_k, use_top_p=use_top_p
        )
        hidden_b1d, cache = model.hidden_states(
            tokens_b[:, None], cache=loop_state.cache, num_new_b=live_b.astype(jnp.int32), prefix=prefix
        )
        is_stop_b = jnp.any(tokens_b[:, None] == stop_ids_k[None, :], axis=-1)
        new_lengths_b = cache.lengths
        turn_over_b = is_stop_b | (new_lengths_b - loop_state.turn_start_b >= budgets_b) | (new_lengths_b >= capacity)
        new_state = dataclasses.replace(
            loop_state,
            cache=cache,
            hidden_bd=jnp.where(live_b[:, None], hidden_b1d[:, 0], loop_state.hidden_bd),
            tokens_bs=kv.write_positions(loop_state.tokens_bs, tokens_b[:, None], positions_b),
            logprobs_bs=kv.write_positions(loop_state.logprobs_bs, logprobs_b[:, None], positions_b),
            sampled_bs=kv.write_positions(loop_state.sampled_bs, jnp.ones_like(live_b)[:, None], positions_b),
            done_b=loop_state.done_b | (live_b & turn_over_b),
            stop_hit_b=loop_state.stop_hit_b | (live_b & is_stop_b),
        )
        return constrain_state(new_state), step + 1

    final_state, _ = jax.lax.while_loop(cond, body, (state, jnp.zeros((), jnp.int32)))
    return final_state
