"""Host-side (NumPy) views of generation output: one decode call's new tokens, or whole sequences.

`DecodeResult` holds what one `decode` call sampled: tokens and log-probs [B, N] padded past each
row's `num_tokens` (tokens with -1, log-probs with 0), plus whether each sequence's turn ended and
whether it ended on a stop token (the stop token itself is included in the tokens).
`History` is the whole of every sequence — prompt, sampled and appended tokens in order, with the
sampler's log-probs and a mask of which tokens were sampled: what the trainer consumes.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from envtune_jax.models.generation import fields as fl
from envtune_jax.models.generation.state import FIELDS, GenerationState

PAD_TOKEN = -1


@dataclasses.dataclass
class DecodeResult:
    tokens: np.ndarray  # [B, N] int32, -1 past num_tokens
    logprobs: np.ndarray  # [B, N] float32, 0 past num_tokens
    num_tokens: np.ndarray  # [B] int32 tokens sampled by this call
    finished: np.ndarray  # [B] bool: the sequence's turn is over (stop token, budget, or full cache)
    stop_token_hit: np.ndarray  # [B] bool: ... and it ended on a stop token

    def token_lists(self) -> list[list[int]]:
        return [row[:n].tolist() for row, n in zip(self.tokens, self.num_tokens)]


@dataclasses.dataclass
class History:
    tokens: np.ndarray  # [B, S] int32; entries at or past lengths[b] are meaningless
    logprobs: np.ndarray  # [B, S] float32 sampler log-prob of sampled tokens, 0 elsewhere
    sampled: np.ndarray  # [B, S] bool: sampled by the engine (vs prompt / appended environment tokens)
    lengths: np.ndarray  # [B] int32

    def sequence(self, b: int) -> list[int]:
        return self.tokens[b, : self.lengths[b]].tolist()


def to_host(array: jax.Array) -> np.ndarray:
    """A NumPy copy of a (possibly multi-host sharded) array."""
    if isinstance(array, jax.Array) and not array.is_fully_addressable:
        from jax.experimental import multihost_utils

        array = multihost_utils.process_allgather(array, tiled=True)
    return np.asarray(jax.device_get(array))


def history(state: GenerationState) -> History:
    """Every sequence in full: the per-position arrays that `FIELDS` shows in `History`, as NumPy."""
    own = History(
        lengths=to_host(state.cache.lengths),
        **{field.history: to_host(fl.get(state, field.path)) for field in _HISTORY_FIELDS},
    )
    return own if state.prefix is None else _with_prompts(own, state)


_HISTORY_FIELDS = tuple(field for field in FIELDS if field.history)


def _with_prompts(own: History, state: GenerationState) -> History:
    """Whole sequences of shared-prefix slots: the region's prompt [P], then the slot's own tokens [S]. The
    prompt's positions hold its tokens, and every other array's empty value (not sampled, log-prob 0)."""
    prefix = state.prefix
    prompts_rp, prompt_lengths_r = to_host(prefix.tokens_rp), to_host(prefix.regions.lengths)
    region_b = to_host(prefix.lane_b) // prefix.lanes
    batch, own_width = own.lengths.shape[0], own.tokens.shape[1]
    whole = {}
    for field in _HISTORY_FIELDS:
        mine = getattr(own, field.history)
        whole[field.history] = np.full((batch, prefix.capacity + own_width), field.empty, mine.dtype)
    lengths = own.lengths.copy()
    for b in range(batch):
        start = prompt_lengths_r[region_b[b]] if region_b[b] < prefix.num_regions else 0
        if start:
            whole["tokens"][b, :start] = prompts_rp[region_b[b], :start]
        for name, array in whole.items():
            array[b, start : start + own_width] = getattr(own, name)[b]
        lengths[b] += start
    return History(lengths=lengths, **whole)


def collect_decode(state: GenerationState, lengths_before: np.ndarray) -> DecodeResult:
    """The tokens each sequence gained since it had `lengths_before` [B] tokens."""
    seen = history(state)
    counts = (seen.lengths - lengths_before).astype(np.int32)
    width = int(counts.max(initial=0))
    tokens = np.full((len(counts), width), PAD_TOKEN, np.int32)
    logprobs = np.zeros((len(counts), width), np.float32)
    for b, (start, count) in enumerate(zip(lengths_before, counts)):
        tokens[b, :count] = seen.tokens[b, start : start + count]
        logprobs[b, :count] = seen.logprobs[b, start : start + count]
    return DecodeResult(tokens, logprobs, counts, to_host(state.done_b), to_host(state.stop_hit_b))


def concat_results(parts: list[tuple[DecodeResult, int]]) -> DecodeResult:
    """Stacks the first n rows of each result (padding N to the widest)."""
    width = max((r.tokens.shape[1] for r, _ in parts), default=0)

    def rows(field: str, fill):
        arrays = []
        for result, n in parts:
            value = getattr(result, field)[:n]
            if value.ndim == 2:
                value = np.pad(value, ((0, 0), (0, width - value.shape[1])), constant_values=fill)
            arrays.append(value)
        return np.concatenate(arrays)

    return DecodeResult(
        rows("tokens", -1),
        rows("logprobs", 0.0),
        rows("num_tokens", 0),
        rows("finished", False),
        rows("stop_token_hit", False),
    )
