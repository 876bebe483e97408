"""Packing trajectories into a train batch: only model-sampled positions reach the vocabulary.

In multi-turn rollouts most tokens are prompt and environment text; only the model's own tokens
carry loss. `pack_batch` lists, per sequence, the indices of its sampled tokens (padded to a bucketed
K), so the train step projects just those K hidden states onto the vocabulary instead of all T.
Shapes: tokens [B, T]; everything the loss sees is [B, K].

Multi-host: `process_batch` builds the global batch from each process's own rows (those its devices
hold under the batch sharding, `process_rows`), with T and K agreed across processes, via
`jax.make_array_from_process_local_data`; no process hands JAX rows that another process's devices hold.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
from jax.experimental import multihost_utils

from envtune_jax.models.generation.buckets import round_up
from envtune_jax.sharding import named_sharding

TOKEN_BUCKETS = tuple(16 * 2**i for i in range(16))
K_BUCKETS = tuple(8 * 2**i for i in range(16))


@dataclasses.dataclass
class TrainBatch:
    tokens_bt: jax.Array  # [B, T] int32 whole sequences (prompt, sampled and environment tokens)
    target_index_bk: jax.Array  # [B, K] int32 index t (≥ 1) of each sampled token; 0 where padding
    mask_bk: jax.Array  # [B, K] float32 1 for real entries
    old_logprobs_bk: jax.Array  # [B, K] float32 behaviour-policy log-prob of each sampled token
    advantages_b: jax.Array  # [B] float32

    @property
    def num_model_tokens(self):
        return self.mask_bk.sum()


jax.tree_util.register_dataclass(
    TrainBatch,
    data_fields=["tokens_bt", "target_index_bk", "mask_bk", "old_logprobs_bk", "advantages_b"],
    meta_fields=[],
)


def pack_batch(
    tokens: list[np.ndarray],
    loss_masks: list[np.ndarray],
    logprobs: list[np.ndarray],
    advantages: np.ndarray,
    pad_id: int = 0,
    min_length: int = 0,
) -> TrainBatch:
    """Builds a TrainBatch from per-trajectory arrays (ids [T_i], mask [T_i], sampler log-probs [T_i]).

    T and K are rounded up to buckets so a run compiles the train step a bounded number of times.
    A sampled token at index 0 has no prefix to predict it from and is dropped.
    """
    if not (len(tokens) == len(loss_masks) == len(logprobs) == len(advantages)):
        raise ValueError("tokens, loss_masks, logprobs and advantages must have one entry per trajectory")
    b = len(tokens)
    t = round_up(max(max(len(x) for x in tokens), min_length, 2), TOKEN_BUCKETS)
    picked = [np.flatnonzero(np.asarray(m)[1:] > 0) + 1 for m in loss_masks]
    k = round_up(max(max((len(p) for p in picked), default=1), 1), K_BUCKETS)
    tokens_bt = np.full((b, t), pad_id, np.int32)
    index_bk = np.zeros((b, k), np.int32)
    mask_bk = np.zeros((b, k), np.float32)
    old_bk = np.zeros((b, k), np.float32)
    for row, (ids, where, lp) in enumerate(zip(tokens, picked, logprobs)):
        tokens_bt[row, : len(ids)] = ids
        index_bk[row, : len(where)] = where
        mask_bk[row, : len(where)] = 1.0
        old_bk[row, : len(where)] = np.asarray(lp, np.float32)[where]
    return TrainBatch(tokens_bt, index_bk, mask_bk, old_bk, np.asarray(advantages, np.float32))


def dense_to_packed(
    tokens_bt: np.ndarray, mask_bt: np.ndarray, old_logprobs_bt: np.ndarray, advantages_b: np.ndarray
) -> TrainBatch:
    """Convenience for tests: the packed batch of dense [B, T] arrays."""
    return pack_batch(
        list(np.asarray(tokens_bt)),
        list(np.asarray(mask_bt)),
        list(np.asarray(old_logprobs_bt)),
        np.asarray(advantages_b),
    )


def process_rows(mesh: jax.sharding.Mesh, global_rows: int) -> tuple[int, int]:
    """[start, stop) of the global batch rows that this process's devices hold when [B] is sharded over
    the mesh's batch axes ("act_batch")."""
    sharding = named_sharding(mesh, ("act_batch",), (global_rows,))
    spans = set()
    for index in sharding.addressable_devices_indices_map((global_rows,)).values():
        rows = index[0]
        spans.add((rows.start or 0, global_rows if rows.stop is None else rows.stop))
    start, stop = min(a for a, _ in spans), max(b for _, b in spans)
    if sum(b - a for a, b in spans) != stop - start:
        raise ValueError(f"this process's batch rows are not contiguous: {sorted(spans)}")
    return start, stop


def _pack_agreed(tokens, loss_masks, logprobs, advantages) -> TrainBatch:
    """pack_batch of this process's rows with T and K raised to the maxima over all processes (every
    process must hand JAX blocks of one global shape, whatever its own rows need)."""
    local = pack_batch(tokens, loss_masks, logprobs, advantages)
    sizes = np.array([local.tokens_bt.shape[1], local.mask_bk.shape[1]])
    t_global, k_global = np.asarray(multihost_utils.process_allgather(sizes)).reshape(-1, 2).max(0)
    packed = pack_batch(tokens, loss_masks, logprobs, advantages, min_length=int(t_global))
    pad_k = ((0, 0), (0, int(k_global) - packed.mask_bk.shape[1]))  # index 0 / mask 0 is padding
    return dataclasses.replace(
        packed,
        target_index_bk=np.pad(packed.target_index_bk, pad_k),
        mask_bk=np.pad(packed.mask_bk, pad_k),
        old_logprobs_bk=np.pad(packed.old_logprobs_bk, pad_k),
    )


def process_batch(
    mesh: jax.sharding.Mesh,
    tokens: list[np.ndarray],
    loss_masks: list[np.ndarray],
    logprobs: list[np.ndarray],
    advantages: np.ndarray,
) -> tuple[TrainBatch, tuple[int, int]]:
    """(the global TrainBatch: tokens [B, T], the rest [B, K] and [B], sharded over the batch mesh axes;
    this process's rows (start, stop)). Of the B per-trajectory entries given, this process packs and
    hands JAX only rows process_rows(mesh, B); the other processes supply the rest."""
    global_rows = len(tokens)
    if not len(loss_masks) == len(logprobs) == len(advantages) == global_rows:
        raise ValueError("tokens, loss_masks, logprobs and advantages must have one entry per trajectory")
    start, stop = process_rows(mesh, global_rows)
    mine = slice(start, stop)
    local = _pack_agreed(tokens[mine], loss_masks[mine], logprobs[mine], np.asarray(advantages, np.float32)[mine])

    def to_global(local_array: np.ndarray) -> jax.Array:
        shape = (global_rows, *local_array.shape[1:])
        sharding = named_sharding(mesh, ("act_batch", "act_seq")[: local_array.ndim], shape)
        return jax.make_array_from_process_local_data(sharding, local_array, shape)

    return jax.tree.map(to_global, local), (start, stop)
