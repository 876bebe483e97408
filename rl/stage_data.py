"""Which BFCL entries a stage trains and validates on, and the order it draws them in.

Subsets: stage1_easy, base_train (the base-category training entries), train (all four categories),
validation. The order is a seeded permutation per epoch, so a run resumed at data position p draws
exactly the prompts an uninterrupted run would have. `subset_size` counts a subset from the split rule
alone (no data read), so budgets and recipe checks are known before anything loads.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from envtune_jax.environments.bfcl_data import CATEGORIES, SCENARIOS_PER_CATEGORY, BfclEntry
from envtune_jax.environments.split_sources import split_entries_from
from envtune_jax.environments.splits import (
    BLOCK_SIZE,
    EASY_PER_BLOCK,
    TEST_PER_BLOCK,
    VALIDATION_PER_BLOCK,
    first_per_category,
)

_SUBSETS = {
    "stage1_easy": ("stage1_easy", None),
    "base_train": ("train", "multi_turn_base"),
    "train": ("train", None),
    "validation": ("validation", None),
}


def subset_size(subset: str, limit_per_category: int | None = None) -> int:
    """How many entries `load_subset(subset, limit_per_category=...)` returns, from the split rule alone."""
    blocks = SCENARIOS_PER_CATEGORY // BLOCK_SIZE
    train_per_category = blocks * (BLOCK_SIZE - TEST_PER_BLOCK)
    per_category = {
        "stage1_easy": {"multi_turn_base": blocks * EASY_PER_BLOCK},
        "base_train": {"multi_turn_base": train_per_category},
        "train": dict.fromkeys(CATEGORIES, train_per_category),
        "validation": dict.fromkeys(CATEGORIES, blocks * VALIDATION_PER_BLOCK),
    }
    if subset not in per_category:
        raise ValueError(f"unknown data subset '{subset}'; choose from {sorted(per_category)}")
    counts = per_category[subset].values()
    return sum(counts if limit_per_category is None else (min(count, limit_per_category) for count in counts))


def load_subset(
    subset: str,
    source: str = "tfds",
    data_dir: str | None = None,
    limit_per_category: int | None = None,
    prompt_length=None,
) -> list[BfclEntry]:
    """Entries of a stage's subset; with `prompt_length` (entry → tokens) and `limit_per_category`, the
    limit keeps each category's shortest prompts (CPU demos; sorted stably, shortest first)."""
    if subset not in _SUBSETS:
        raise ValueError(f"unknown data subset '{subset}'; choose from {sorted(_SUBSETS)}")
    split, only = _SUBSETS[subset]
    entries = split_entries_from(source, split, data_dir=data_dir)
    if only is not None:
        entries = [e for e in entries if e.category == only]
    if prompt_length is not None and limit_per_category is not None:
        entries = sorted(entries, key=prompt_length)
    if limit_per_category is not None:
        entries = first_per_category(entries, limit_per_category)
    if not entries:
        raise ValueError(f"data subset '{subset}' is empty")
    return entries


def draw(entries: Sequence[BfclEntry], position: int, count: int, seed: int) -> list[BfclEntry]:
    """`count` entries starting at global data position `position` (epochs reshuffled by seed)."""
    picked = []
    n = len(entries)
    for offset in range(position, position + count):
        epoch, index = divmod(offset, n)
        order = np.random.default_rng([seed, epoch]).permutation(n)
        picked.append(entries[int(order[index])])
    return picked
