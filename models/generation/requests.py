"""Validation of host-side requests to the engine: slot indices, token-id lists and active masks.

Every check raises `GenerationInputError` (or its subclass `CacheFullError`) with a message that
names the offending slot or value, before anything reaches a compiled program.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


class GenerationInputError(ValueError):
    """A prompt, extension, slot index or mask is malformed; the message says which and why."""


class CacheFullError(GenerationInputError):
    """A request needs more cache slots than the engine's max_cache_len."""


def check_slot(slot, batch_size: int) -> int:
    if not isinstance(slot, (int, np.integer)) or not 0 <= slot < batch_size:
        raise GenerationInputError(f"slot {slot!r} is not in [0, {batch_size})")
    return int(slot)


def check_tokens(tokens: Sequence[int], vocab_size: int, what: str) -> np.ndarray:
    """The token ids as int32 [T]; they must be a flat list of ints in [0, vocab_size)."""
    array = np.asarray(tokens)
    if array.ndim != 1 or (array.size and not np.issubdtype(array.dtype, np.integer)):
        raise GenerationInputError(
            f"{what}: expected a flat list of token ids, got shape {array.shape} dtype {array.dtype}"
        )
    if array.size and (array.min() < 0 or array.max() >= vocab_size):
        raise GenerationInputError(f"{what}: token ids must be in [0, {vocab_size}), got {array.min()}..{array.max()}")
    return array.astype(np.int32)


def active_mask(active, lengths_b: np.ndarray) -> np.ndarray:
    """[B] bool from a bool mask [B], a list of slot indices, or None (= every non-empty slot)."""
    batch_size = lengths_b.shape[0]
    if active is None:
        return lengths_b > 0
    mask = np.asarray(active)
    if mask.dtype == bool:
        if mask.shape != (batch_size,):
            raise GenerationInputError(f"active mask must have shape ({batch_size},), got {mask.shape}")
        return mask
    out = np.zeros(batch_size, bool)
    out[[check_slot(s, batch_size) for s in mask.reshape(-1).tolist()]] = True
    return out
