"""Which BFCL entries a stage trains and validates on, and the order it draws them in.

Subsets: stage1_easy, base_train (the base-category training entries), train (all four categories),
validation. The order is a seeded permutation per epoch, so a run resumed at data position p draws
exactly the prompts an uninterrupted run would have.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from environments.bfcl_data import BfclEntry
from environments.splits import first_per_category, split_entries_from

_SUBSETS = {"stage1_easy": ("stage1_easy", None), "base_train": ("train", "multi_turn_base"),
            "train": ("train", None), "validation": ("validation", None)}


def load_subset(subset: str, source: str = "tfds", data_dir: str | None = None,
                limit_per_category: int | None = None, prompt_length=None) -> list[BfclEntry]:
    """Entries of a stage's subset; with `prompt_length` (entry → tokens), shortest prompts first
    (stable), so `limit_per_category` keeps the shortest (CPU demos)."""
    if subset not in _SUBSETS:
        raise ValueError(f"unknown data subset '{subset}'; choose from {sorted(_SUBSETS)}")
    split, only = _SUBSETS[subset]
    entries = split_entries_from(source, split, data_dir=data_dir)
    if only is not None:
        entries = [e for e in entries if e.category == only]
    if prompt_length is not None:
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
