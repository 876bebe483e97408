"""Deterministic train/test split of BFCL V3 multi-turn by scenario, plus the stage subsets.

The four categories are variants of the same 200 scenarios (aligned by index), so the split is made on
the scenario index and applied to all four categories at once: no test scenario leaks into training.

Rule (stable across Python/NumPy versions; nothing but SHA-256):
- The 200 scenarios form four domain blocks of 50: 0-49 file system, 50-99 vehicle, 100-149 trading,
  150-199 travel.
- Within each block, scenarios are ranked by `sha256(f"{seed}:{index}")` (hex digest, ascending);
  the first 25 are `test`, the other 25 `train`. With seed "envtune-bfcl-v3" that is 100 scenarios x 4
  categories = 400 entries per side.
- `validation`: within each block, the `VALIDATION_PER_BLOCK` train scenarios ranked first by
  `sha256(f"{seed}:validation:{index}")`, all four categories (a monitoring subset of train, not held out).
- `stage1_easy`: the base-category train entries with the fewest ground-truth calls, `EASY_PER_BLOCK`
  per block (ties broken by fewer turns, then by index): 19 x 4 = 76 entries, the paper's "~75".
"""

from __future__ import annotations

import collections
import hashlib
from typing import Iterable

from envtune_jax.environments.bfcl_data import CATEGORIES, SCENARIOS_PER_CATEGORY, BfclEntry, load_entries

SPLIT_SEED = "envtune-bfcl-v3"
BLOCK_SIZE = 50
TEST_PER_BLOCK = 25
VALIDATION_PER_BLOCK = 4
EASY_PER_BLOCK = 19
DOMAIN_BLOCKS = ("file_system", "vehicle", "trading", "travel")
SPLITS = ("train", "test", "validation", "stage1_easy", "all")


def _rank_key(seed: str, index: int, salt: str = "") -> str:
    return hashlib.sha256(f"{seed}:{salt}{index}".encode()).hexdigest()


def domain_block_of(scenario_index: int) -> str:
    if not 0 <= scenario_index < SCENARIOS_PER_CATEGORY:
        raise ValueError(f"scenario index {scenario_index} outside 0..{SCENARIOS_PER_CATEGORY - 1}")
    return DOMAIN_BLOCKS[scenario_index // BLOCK_SIZE]


def _blocks() -> list[range]:
    return [range(start, start + BLOCK_SIZE) for start in range(0, SCENARIOS_PER_CATEGORY, BLOCK_SIZE)]


def test_scenarios(seed: str = SPLIT_SEED) -> frozenset[int]:
    """The 100 held-out scenario indices (25 per domain block)."""
    chosen: list[int] = []
    for block in _blocks():
        chosen += sorted(block, key=lambda i: _rank_key(seed, i))[:TEST_PER_BLOCK]
    return frozenset(chosen)


def train_scenarios(seed: str = SPLIT_SEED) -> frozenset[int]:
    return frozenset(range(SCENARIOS_PER_CATEGORY)) - test_scenarios(seed)


def validation_scenarios(seed: str = SPLIT_SEED) -> frozenset[int]:
    train = train_scenarios(seed)
    chosen: list[int] = []
    for block in _blocks():
        in_train = [i for i in block if i in train]
        chosen += sorted(in_train, key=lambda i: _rank_key(seed, i, "validation:"))[:VALIDATION_PER_BLOCK]
    return frozenset(chosen)


def _easy_entries(entries: list[BfclEntry], seed: str) -> list[BfclEntry]:
    train = train_scenarios(seed)
    base_train = [e for e in entries if e.category == "multi_turn_base" and e.scenario_index in train]
    chosen: list[BfclEntry] = []
    for block in _blocks():
        in_block = [e for e in base_train if e.scenario_index in block]
        in_block.sort(key=lambda e: (sum(len(t) for t in e.ground_truth), e.num_turns, e.scenario_index))
        chosen += in_block[:EASY_PER_BLOCK]
    return sorted(chosen, key=lambda e: e.scenario_index)


def split_entries(split: str, categories: Iterable[str] = CATEGORIES, seed: str = SPLIT_SEED) -> list[BfclEntry]:
    """Entries of `split` (one of SPLITS) restricted to `categories`, in category then scenario order."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose from {list(SPLITS)}")
    categories = tuple(categories)
    entries = load_entries(categories if split != "stage1_easy" else CATEGORIES)
    if split == "all":
        return entries
    if split == "stage1_easy":
        return [e for e in _easy_entries(entries, seed) if e.category in categories]
    scenarios = {"train": train_scenarios, "test": test_scenarios, "validation": validation_scenarios}[split](seed)
    return [e for e in entries if e.scenario_index in scenarios]


def first_per_category(entries: Iterable[BfclEntry], limit: int) -> list[BfclEntry]:
    """The first `limit` entries of each category, in the given order."""
    counts: collections.Counter = collections.Counter()
    kept = []
    for entry in entries:
        if counts[entry.category] < limit:
            kept.append(entry)
            counts[entry.category] += 1
    return kept


def split_of_scenario(scenario_index: int, seed: str = SPLIT_SEED) -> str:
    """'train' or 'test'."""
    domain_block_of(scenario_index)
    return "test" if scenario_index in test_scenarios(seed) else "train"
