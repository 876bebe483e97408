"""A tensorflow-datasets builder for BFCL V3 multi-turn (array_record files, read with as_data_source).

Splits (see envtune_jax.environments.splits for the rule): `train` (400), `test` (400), `validation` (64, drawn from
train) and `stage1_easy` (76, drawn from train). Each example stores the entry as a JSON string, so the
nested question / initial_config / ground-truth lists survive unchanged, plus its id, category and
scenario index. TFDS shuffles examples when writing; ids are stored, so nothing depends on the order.
Works without TensorFlow: writing and `as_data_source` reading only need numpy and array_record.

    builder = bfcl_builder(data_dir)       # default data_dir: $XDG_CACHE_HOME/envtune_jax/tfds
    builder.download_and_prepare()         # reads the installed bfcl-eval package, writes array_record
    entries = load_split_entries("test")   # prepares if needed, then reads via as_data_source
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from pathlib import Path
from typing import Iterable

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from envtune_jax.environments.bfcl_data import BFCL_PIN, CATEGORIES, BfclEntry
from envtune_jax.environments.splits import SPLIT_SEED, split_entries

BUILDER_SPLITS = ("train", "test", "validation", "stage1_easy")


def default_data_dir() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "envtune_jax" / "tfds"


class BfclMultiTurn(tfds.core.GeneratorBasedBuilder):
    """BFCL V3 multi-turn entries with ground truth, split by scenario (no test scenario in train)."""

    VERSION = tfds.core.Version("1.0.0")
    # Where TFDS looks for optional metadata files; set explicitly because an editable install can make
    # this package resolve as a namespace package, which TFDS cannot inspect.
    pkg_dir_path = epath.Path(__file__).parent
    RELEASE_NOTES = {"1.0.0": f"Data of {BFCL_PIN}; scenario split seed {SPLIT_SEED!r}."}

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "id": tfds.features.Text(),
                    "category": tfds.features.Text(),
                    "scenario_index": tfds.features.Scalar(dtype=np.int32),
                    "entry_json": tfds.features.Text(),
                }
            ),
            homepage="https://gorilla.cs.berkeley.edu/leaderboard.html",
        )

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(split) for split in BUILDER_SPLITS}

    def _generate_examples(self, split: str):
        for entry in split_entries(split):
            yield (
                entry.id,
                {
                    "id": entry.id,
                    "category": entry.category,
                    "scenario_index": entry.scenario_index,
                    "entry_json": entry.to_json(),
                },
            )


def bfcl_builder(data_dir: str | os.PathLike | None = None) -> BfclMultiTurn:
    return BfclMultiTurn(data_dir=str(data_dir or default_data_dir()), file_format=tfds.core.FileFormat.ARRAY_RECORD)


def prepare_quietly(builder: BfclMultiTurn) -> None:
    """Writes the splits if they are not there yet, saying so in one line: TFDS's own messages ("Downloading
    and preparing dataset Unknown size ...") and progress bars (one per split and pass) go nowhere."""
    if builder.is_prepared():
        return
    print(f"preparing the BFCL V3 multi-turn splits once, in {builder.data_dir}", file=sys.stderr, flush=True)
    tfds.display_progress_bar(False)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            builder.download_and_prepare()
    finally:
        tfds.display_progress_bar(True)


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def load_split_entries(
    split: str, categories: Iterable[str] = CATEGORIES, data_dir: str | os.PathLike | None = None
) -> list[BfclEntry]:
    """Entries of `split` ("all" = train + test) read through TFDS, sorted by category then scenario."""
    categories = tuple(categories)
    splits = ("train", "test") if split == "all" else (split,)
    unknown = [s for s in splits if s not in BUILDER_SPLITS]
    if unknown:
        raise ValueError(f"unknown split {split!r}; choose from {list(BUILDER_SPLITS) + ['all']}")
    builder = bfcl_builder(data_dir)
    prepare_quietly(builder)
    entries = []
    for name in splits:
        source = builder.as_data_source(split=name)
        for index in range(len(source)):
            example = source[index]
            if _text(example["category"]) in categories:
                entries.append(BfclEntry.from_json(_text(example["entry_json"])))
    order = {category: i for i, category in enumerate(CATEGORIES)}
    return sorted(entries, key=lambda e: (order[e.category], e.scenario_index))
