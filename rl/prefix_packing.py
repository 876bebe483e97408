"""Shared-prefix train batches: each GRPO group's prompt computed once, its samples' continuations after it.

Without sharing, a group of G trajectories [prompt; continuation_i] goes through the model as G rows,
its prompt G times (rl/batch.py). `pack_shared_prefix` instead builds rows of `groups_per_row` groups,
each laid out as a prompt block (P tokens) and G continuation blocks (C tokens each):

    row = [prompt_1 | cont_1,1 | … | cont_1,G | prompt_2 | cont_2,1 | … ]        T = n · (P + G · C)

The shared prompt of a group is the longest common prefix of its trajectories (at least its rendered
prompt; samples that begin alike share more). Each token carries its position (a continuation goes
on from its prompt's length), its segment (group within the row; 0 = padding) and its branch (0 =
prompt, c ≥ 1 = continuation c): a token attends a key of its segment at a position ≤ its own whose
branch is 0 or its own. That mask runs as one masked attention on any back-end that takes a dense
mask (reference / chunked / xla / cudnn: train_step.shared_prefix "mask") or takes the static mask of the
rows' layout (splash on TPU, models/row_layout.py), or per block with a log-sum-exp merge ("two_level":
prompt vs prompt, continuation vs its prompt, continuation vs itself; models/prefix_attention.py).

The loss side is per trajectory, as without sharing: B = M · R samples (M = n · G sample places per
row; empty places are masked), sample s = m · R + r sitting in row r. That order survives the train
step's strided micro-batches (micro-batch j takes rows j, j + J, … and samples j, j + J, …, so the
same rows' samples) whenever the micro-batch count divides R. A sample's [K] entries index the row of
its sampled tokens; `predecessors_rt` gives, for each row index, the index of the token before it in
its own sequence (a continuation's first token follows its prompt's last), whose hidden state
predicts it. The reference-model and recompute passes of the train step run on the same rows.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from envtune_jax.models.generation.buckets import geometric_ladder, round_up
from envtune_jax.models.prefix_attention import RowBranches
from envtune_jax.models.row_layout import PackedRowLayout
from envtune_jax.rl.batch import K_BUCKETS, TrainBatch
from envtune_jax.rl.logprobs import token_logprobs_and_entropy

BLOCK_BUCKETS = geometric_ladder(16, 2**20)  # prompt and continuation widths: 16 x (1, 1.5, 2, 3, 4, ...)


@dataclasses.dataclass
class PrefixRows:
    """Shared-prefix rows [R, T] (TrainBatch.tokens_bt in shared-prefix mode)."""

    tokens_rt: jax.Array  # int32 token ids (padding: 0)
    positions_rt: jax.Array  # int32 position in its own sequence
    segments_rt: jax.Array  # int32 group within the row, 1..n (0 = padding)
    branches_rt: jax.Array  # int32 0 = the group's prompt, c ≥ 1 = continuation c
    predecessors_rt: jax.Array  # int32 row index of the token before this one in its sequence (0 for none)
    layout: PackedRowLayout
    two_level: bool = True  # per-block attention merged by log-sum-exp; False: one masked attention

    @property
    def shape(self) -> tuple[int, int]:
        return self.tokens_rt.shape


jax.tree_util.register_dataclass(
    PrefixRows,
    data_fields=["tokens_rt", "positions_rt", "segments_rt", "branches_rt", "predecessors_rt"],
    meta_fields=["layout", "two_level"],
)


def _common_prefix_length(sequences: Sequence[np.ndarray]) -> int:
    shortest = min(len(s) for s in sequences)
    first = sequences[0][:shortest]
    same = np.ones(shortest, bool)
    for other in sequences[1:]:
        same &= other[:shortest] == first
    return int(shortest if same.all() else np.argmin(same))


def pack_shared_prefix(
    tokens: list[np.ndarray],
    loss_masks: list[np.ndarray],
    logprobs: list[np.ndarray],
    advantages: np.ndarray,
    groups: Sequence[int],
    *,
    groups_per_row: int = 1,
    rows_multiple: int = 1,
    two_level: bool = True,
    pad_id: int = 0,
) -> TrainBatch:
    """A TrainBatch whose tokens_bt is PrefixRows and whose [B, K] / [B] fields are per sample (see the module
    docstring). groups[i]: the group of trajectory i. R is rounded up to a multiple of `rows_multiple`
    (the micro-batch count). A sampled token at index 0 has no prefix to predict it from and is dropped."""
    if not (len(tokens) == len(loss_masks) == len(logprobs) == len(advantages) == len(groups)):
        raise ValueError("tokens, loss_masks, logprobs, advantages and groups need one entry per trajectory")
    if groups_per_row < 1 or rows_multiple < 1:
        raise ValueError(f"groups_per_row and rows_multiple must be ≥ 1, got {groups_per_row}, {rows_multiple}")
    members = collections.defaultdict(list)
    for i, group in enumerate(groups):
        members[group].append(i)
    order = list(members.values())  # groups in order of first appearance
    shared = [_common_prefix_length([np.asarray(tokens[i]) for i in group]) for group in order]
    longest_cont = max(len(tokens[i]) - shared[g] for g, group in enumerate(order) for i in group)
    layout = PackedRowLayout(
        groups_per_row,
        round_up(max(max(shared), 1), BLOCK_BUCKETS),
        max(len(group) for group in order),
        round_up(max(longest_cont, 1), BLOCK_BUCKETS),
    )
    needed_rows = -(-len(order) // groups_per_row)
    rows = -(-needed_rows // rows_multiple) * rows_multiple
    places = groups_per_row * layout.branches  # M
    shape = (rows, layout.row_width)
    tokens_rt = np.full(shape, pad_id, np.int32)
    positions_rt, segments_rt, branches_rt, predecessors_rt = (np.zeros(shape, np.int32) for _ in range(4))
    picked = [np.flatnonzero(np.asarray(m)[1:] > 0) + 1 for m in loss_masks]
    k = round_up(max(max((len(p) for p in picked), default=1), 1), K_BUCKETS)
    index_bk = np.zeros((places * rows, k), np.int32)
    mask_bk = np.zeros((places * rows, k), np.float32)
    old_bk = np.zeros((places * rows, k), np.float32)
    advantages_b = np.zeros(places * rows, np.float32)
    for g, group in enumerate(order):
        row, slot = divmod(g, groups_per_row)
        base = slot * layout.group_width
        length = shared[g]
        prompt = np.asarray(tokens[group[0]])[:length]
        span = slice(base, base + length)
        tokens_rt[row, span], positions_rt[row, span], segments_rt[row, span] = prompt, np.arange(length), slot + 1
        predecessors_rt[row, span] = np.maximum(np.arange(base, base + length) - 1, base)
        for c, i in enumerate(group):
            ids = np.asarray(tokens[i])
            start = base + layout.prompt_width + c * layout.branch_width
            own = len(ids) - length
            cont = slice(start, start + own)
            tokens_rt[row, cont], positions_rt[row, cont] = ids[length:], length + np.arange(own)
            segments_rt[row, cont] = slot + 1
            branches_rt[row, start : start + layout.branch_width] = c + 1
            predecessors_rt[row, cont] = np.arange(start, start + own) - 1
            if own and length:
                predecessors_rt[row, start] = base + length - 1
            where = picked[i]
            in_row = np.where(where < length, base + where, start + where - length)
            sample = (slot * layout.branches + c) * rows + row
            index_bk[sample, : len(where)] = in_row
            mask_bk[sample, : len(where)] = 1.0
            old_bk[sample, : len(where)] = np.asarray(logprobs[i], np.float32)[where]
            advantages_b[sample] = advantages[i]
    rows_data = PrefixRows(tokens_rt, positions_rt, segments_rt, branches_rt, predecessors_rt, layout, two_level)
    return TrainBatch(rows_data, index_bk, mask_bk, old_bk, advantages_b)


def sample_order(groups: Sequence[int], batch: TrainBatch, groups_per_row: int) -> np.ndarray:
    """[number of trajectories] the sample index (row of the [B, K] arrays) of each trajectory, in input order."""
    rows = batch.tokens_bt.shape[0]
    branches = batch.tokens_bt.layout.branches
    seen: dict[int, int] = {}
    counts: collections.Counter[int] = collections.Counter()
    out = []
    for group in groups:
        g = seen.setdefault(group, len(seen))
        row, slot = divmod(g, groups_per_row)
        out.append((slot * branches + counts[group]) * rows + row)
        counts[group] += 1
    return np.asarray(out)


def packed_sampled_logprobs(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    rows: PrefixRows,
    target_index_bk: jax.Array,
    temperature: float,
    chunk_t: int,
    chunk_v: int,
) -> tuple[jax.Array, jax.Array]:
    """(logp_bk, entropy_bk) of each sample's sampled tokens, from one forward over the shared-prefix rows.
    Sample b reads row b mod R. Differentiable in `params`."""
    model = nnx.merge(graphdef, params)
    branches = RowBranches(rows.branches_rt, rows.layout, rows.two_level)
    hidden_rtd, _ = model.hidden_states(rows.tokens_rt, rows.positions_rt, rows.segments_rt, branches=branches)
    row_b1 = (jnp.arange(target_index_bk.shape[0]) % rows.shape[0])[:, None]
    source_bk = jnp.asarray(rows.predecessors_rt)[row_b1, target_index_bk]
    hidden_bkd = hidden_rtd[row_b1, source_bk]
    targets_bk = jnp.asarray(rows.tokens_rt)[row_b1, target_index_bk]
    return token_logprobs_and_entropy(hidden_bkd, model.unembedding().T, targets_bk, temperature, chunk_t, chunk_v)
