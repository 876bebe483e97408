"""Where a split's entries come from: the installed bfcl-eval package or the TFDS dataset built from it.

The split rule lives in splits.py and the TFDS builder (tfds_builder.py) applies it, so the choice between
the two sources sits above both; TensorFlow Datasets is imported only when the TFDS source is chosen.
"""

from __future__ import annotations

from typing import Iterable

from envtune_jax.environments.bfcl_data import CATEGORIES, BfclEntry
from envtune_jax.environments.splits import split_entries


def split_entries_from(
    source: str, split: str, categories: Iterable[str] = CATEGORIES, data_dir: str | None = None
) -> list[BfclEntry]:
    """`split_entries` read from `source`: "package" (the installed bfcl-eval data) or "tfds" (the TFDS
    dataset, optionally under `data_dir`)."""
    if source == "package":
        return split_entries(split, categories)
    if source == "tfds":
        from envtune_jax.environments.tfds_builder import (
            load_split_entries,  # TensorFlow Datasets loads only when asked for
        )

        return load_split_entries(split, categories, data_dir=data_dir)
    raise ValueError(f"unknown data source {source!r}; choose 'tfds' or 'package'")
