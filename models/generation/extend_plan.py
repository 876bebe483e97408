"""How an extend (ragged token lists for some slots) is split into compiled calls: rows compacted, widths split.

An extend call runs the model over a block of U rows x T new tokens. The plain program runs all B slots
(slots with nothing to append ride along as padding); the compacted one runs U < B gathered rows (each
row's cached keys and values are gathered, attended and written back). A long append is processed in
passes of at most `chunk` tokens per row, so a re-rendered conversation's new episode (a 4k-token prompt)
in one slot does not cost B rows in each of its passes, and the short tails of the other slots need
not be padded to the long one's width: within a pass, rows are split into a short and a long group when
two calls cost less than one.

Costs are counted in token-forwards (one token through every layer = 1):
- U·T for the block's matmuls (padding included: U and T are rounded up to their buckets);
- `call_tokens` per call: the weights are read once per call. A token costs 2·P FLOPs against 2·P bytes
  of bf16 weights, so the read costs as long as the matmuls of (matmul rate / bandwidth) tokens, whatever
  the model size: ≈ 240-270 on an H100 (~800 TFLOP/s measured over 3.0-3.35 TB/s), ≈ 165 on a TPU v5p,
  ≈ 560 on a v6e (their data-sheet rates); 256 is used;
- `slot_tokens` per cached slot the call moves (all layers' keys and values): a full call's attention
  reads B·S slots; a compacted call moves 3·U·S (the gather reads and writes its rows, the attention
  reads them again), which is why a compacted call is chosen only where it costs less.
Row counts of compacted calls climb by 4 (1, 4, 16, ... below B): every (rows, width, capacity) is a
program to compile, and the calls that gain most are those of one or a few rows.
The plan is a pure function of the counts, tested on its own; the engine runs it (engine.extend).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax.numpy as jnp
import numpy as np

from envtune_jax.models.generation.buckets import round_up

CALL_TOKENS = 256.0  # token-forwards that one call's weight read costs (see the module docstring)
COMPACT_SLOT_PASSES = 3  # passes over a gathered row's cache in a compacted call (gather read + write, attention)
ROW_STEP = 4  # compacted calls have 1, 4, 16, ... rows


@dataclasses.dataclass(frozen=True)
class ExtendCosts:
    call_tokens: float = CALL_TOKENS
    slot_tokens: float = 0.0  # one cached slot's keys and values (all layers), in token-forwards

    @classmethod
    def for_model(cls, config, cache_bytes_per_value: int) -> "ExtendCosts":
        """Slot cost from the model's shapes: a slot's K/V bytes over the bytes of the weights an extend
        reads (the layers'; the embedding is only gathered and no logits are computed), times call_tokens."""
        weight_bytes = config.layer_params * jnp.dtype(config.dtype).itemsize
        slot_bytes = 2 * config.num_layers * config.num_kv_heads * config.head_dim * cache_bytes_per_value
        return cls(CALL_TOKENS, CALL_TOKENS * slot_bytes / weight_bytes)


@dataclasses.dataclass(frozen=True)
class ExtendCall:
    """One compiled extend call: slots[i] gets tokens offsets[i] : offsets[i] + counts[i] of its append."""

    slots: tuple[int, ...]  # slots appended to (ascending)
    offsets: tuple[int, ...]  # where each slot's tokens of this call start in its append
    counts: tuple[int, ...]  # tokens each slot gets in this call (1..width)
    width: int  # T: a chunk bucket ≥ max(counts)
    rows: int  # U: a row bucket ≥ len(slots); rows == batch means the plain all-slots program

    def compacted(self, batch: int) -> bool:
        return self.rows < batch


def row_buckets(batch: int, compact: bool = True) -> tuple[int, ...]:
    """Row counts a call may have: 1, 4, 16, ... below the batch, and the batch (only it without compaction)."""
    if not compact:
        return (batch,)
    sizes = []
    power = 1
    while power < batch:
        sizes.append(power)
        power *= ROW_STEP
    return tuple(sizes) + (batch,)


def call_cost(rows: int, width: int, batch: int, capacity: int, costs: ExtendCosts) -> float:
    """Token-forwards of one call of `rows` rows x `width` tokens over a cache of `capacity` slots."""
    slots_read = batch * capacity if rows >= batch else COMPACT_SLOT_PASSES * rows * capacity
    return rows * width + costs.call_tokens + costs.slot_tokens * slots_read


def _block(num_slots: int, longest: int, batch: int, capacity: int, chunk_buckets, rows_ladder, costs):
    """(cost, rows, width) of the cheaper program (compacted or all slots) for num_slots rows."""
    width = round_up(longest, chunk_buckets)
    options = {round_up(num_slots, rows_ladder), batch}
    return min((call_cost(rows, width, batch, capacity, costs), -rows, width) for rows in options)


def plan_extend(
    counts_b: Sequence[int],
    *,
    chunk: int,
    chunk_buckets: Sequence[int],
    rows_ladder: Sequence[int],
    capacity: int,
    costs: ExtendCosts = ExtendCosts(),
) -> list[ExtendCall]:
    """The calls that append counts_b[b] tokens to each slot b, in order (a slot's pieces in sequence).

    Each pass gives every slot with tokens left its next piece (≤ chunk tokens); within a pass the slots
    are sorted by piece length and cut into at most two groups (short, long) where that costs less, and
    each group runs as the cheaper of a compacted call and an all-slots call.
    """
    counts = np.asarray(counts_b, np.int64)
    batch = counts.shape[0]
    if rows_ladder[-1] != batch:
        raise ValueError(f"the row ladder {tuple(rows_ladder)} must end with the batch size {batch}")
    done = np.zeros_like(counts)
    calls: list[ExtendCall] = []
    while (counts > done).any():
        slots = np.flatnonzero(counts > done)
        pieces = np.minimum(counts[slots] - done[slots], chunk)
        order = np.argsort(pieces, kind="stable")
        slots, pieces = slots[order], pieces[order]

        def block(lo: int, hi: int):
            return _block(hi - lo, int(pieces[hi - 1]), batch, capacity, chunk_buckets, rows_ladder, costs)

        best = (block(0, len(slots))[0], len(slots))  # (cost, cut): slots[:cut] short, slots[cut:] long
        for cut in range(1, len(slots)):
            if pieces[cut - 1] == pieces[cut]:
                continue
            cost = block(0, cut)[0] + block(cut, len(slots))[0]
            if cost < best[0]:
                best = (cost, cut)
        for lo, hi in ((0, best[1]), (best[1], len(slots))):
            if lo == hi:
                continue
            _, neg_rows, width = block(lo, hi)
            group = np.sort(slots[lo:hi])
            calls.append(
                ExtendCall(
                    tuple(int(s) for s in group),
                    tuple(int(done[s]) for s in group),
                    tuple(int(min(counts[s] - done[s], chunk)) for s in group),
                    width,
                    -neg_rows,
                )
            )
        done[slots] += pieces
    return calls
