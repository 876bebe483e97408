"""Stage data: subsets from either source, shortest-first limits, and the resumable draw order."""

from __future__ import annotations

import pytest

from envtune_jax.environments.split_sources import split_entries_from
from envtune_jax.environments.splits import first_per_category, split_entries
from envtune_jax.rl.stage_data import draw, load_subset


def test_subsets_come_from_the_split_and_keep_the_shortest_per_category():
    base = load_subset("base_train", source="package")
    assert base and {e.category for e in base} == {"multi_turn_base"}
    assert base == [e for e in split_entries("train") if e.category == "multi_turn_base"]
    length = lambda entry: len(str(entry.question))  # noqa: E731 - any entry → size function
    short = load_subset("train", source="package", limit_per_category=2, prompt_length=length)
    assert len(short) == 8 and all(sum(e.category == s.category for e in short) == 2 for s in short)
    everything = split_entries("train")
    for entry in short:  # nothing shorter of the same category was left out
        same = sorted(length(e) for e in everything if e.category == entry.category)
        assert length(entry) <= same[1]
    with pytest.raises(ValueError, match="unknown data subset"):
        load_subset("stage9", source="package")
    with pytest.raises(ValueError, match="unknown data source"):
        split_entries_from("s3", "train")


def test_first_per_category_keeps_order():
    entries = split_entries("test")
    kept = first_per_category(entries, 1)
    assert [e.category for e in kept] == sorted({e.category for e in entries}, key=[e.category for e in entries].index)
    assert all(e is next(x for x in entries if x.category == e.category) for e in kept)


def test_draw_resumes_at_any_position():
    entries = load_subset("validation", source="package")
    whole = draw(entries, 0, 3 * len(entries), seed=7)
    assert draw(entries, 5, 10, seed=7) == whole[5:15]
    assert sorted(id(e) for e in whole[: len(entries)]) == sorted(id(e) for e in entries)  # an epoch is a permutation
