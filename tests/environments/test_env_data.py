"""BFCL data: loading, the deterministic scenario split, stage subsets, the TFDS builder, the missing-package
error and the warning for another bfcl-eval version."""

from __future__ import annotations

import builtins
import collections
import importlib.metadata
import warnings

import pytest

from envtune_jax.environments import bfcl_data, splits
from envtune_jax.environments.bfcl_data import (
    CATEGORIES,
    BfclDataMissingError,
    BfclEntry,
    load_entries,
    offered_tool_docs,
)


def test_entries_and_tool_docs_match_the_package_files():
    entries = load_entries()
    assert len(entries) == 800 and collections.Counter(e.category for e in entries) == {c: 200 for c in CATEGORIES}
    assert all(len(e.question) == e.num_turns for e in entries)
    entry = bfcl_data.entry_by_id("multi_turn_miss_func_3")
    offered, withheld = offered_tool_docs(entry)
    assert [d["name"] for d in withheld[1]] == ["find", "ls"]
    assert len(offered) == 18 - 2 and all(d["description"].endswith(bfcl_data.PYTHON_SYNTAX_NOTE) for d in offered)
    assert not any(d["description"].endswith(bfcl_data.PYTHON_SYNTAX_NOTE) for d in withheld[1])
    offered[0]["description"] = "changed"
    assert offered_tool_docs(entry)[0][0]["description"] != "changed"  # callers get fresh copies
    assert BfclEntry.from_json(entry.to_json()) == entry


def test_split_is_by_scenario_stratified_and_deterministic():
    test, train = splits.test_scenarios(), splits.train_scenarios()
    assert len(test) == len(train) == 100 and not test & train
    for block in range(4):
        assert len([i for i in test if i // 50 == block]) == 25
    test_entries, train_entries = splits.split_entries("test"), splits.split_entries("train")
    assert len(test_entries) == len(train_entries) == 400
    assert {e.scenario_index for e in test_entries} == test
    for entries in (test_entries, train_entries):
        assert collections.Counter(e.category for e in entries) == {c: 100 for c in CATEGORIES}
    assert splits.test_scenarios("another seed") != test and splits.test_scenarios() == test


def test_stage_subsets_are_drawn_from_train():
    train = splits.train_scenarios()
    validation = splits.split_entries("validation")
    assert len(validation) == 16 * 4 and {e.scenario_index for e in validation} <= train
    easy = splits.split_entries("stage1_easy")
    assert len(easy) == 76 and all(e.category == "multi_turn_base" and e.scenario_index in train for e in easy)
    easy_calls = sum(sum(map(len, e.ground_truth)) for e in easy) / len(easy)
    base_train = [e for e in splits.split_entries("train") if e.category == "multi_turn_base"]
    assert easy_calls < sum(sum(map(len, e.ground_truth)) for e in base_train) / len(base_train)
    assert splits.split_entries("stage1_easy", ["multi_turn_miss_func"]) == []
    with pytest.raises(ValueError):
        splits.split_entries("dev")


def test_missing_package_error_names_the_install_command(monkeypatch):
    real_import = builtins.__import__

    def no_bfcl(name, *args, **kwargs):
        if name == "bfcl_eval" or name.startswith("bfcl_eval."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_bfcl)
    with pytest.raises(BfclDataMissingError, match="pip install --no-deps bfcl-eval==2026.3.23 mpmath==1.3.0"):
        bfcl_data._package_data_dir()


def _pretend_bfcl_version(monkeypatch, version):
    real_version = importlib.metadata.version

    def fake_version(name):
        if name != bfcl_data.BFCL_DISTRIBUTION:
            return real_version(name)
        if version is None:
            raise importlib.metadata.PackageNotFoundError(name)
        return version

    monkeypatch.setattr(importlib.metadata, "version", fake_version)


def test_another_bfcl_version_warns_clearly_and_still_loads(monkeypatch):
    _pretend_bfcl_version(monkeypatch, "2025.1.1")
    pinned = r"bfcl-eval version 2025\.1\.1 is installed, but this project is pinned to 2026\.3\.23"
    with pytest.warns(bfcl_data.BfclVersionWarning, match=pinned) as record:
        entries = bfcl_data._load_category.__wrapped__("multi_turn_base")  # the uncached data load
    assert len(entries) == 200
    assert "pip install --no-deps bfcl-eval==2026.3.23 mpmath==1.3.0" in str(record[0].message)
    _pretend_bfcl_version(monkeypatch, None)
    with pytest.warns(bfcl_data.BfclVersionWarning, match="without package metadata"):
        bfcl_data._package_data_dir()


def test_pinned_bfcl_version_loads_silently():
    assert bfcl_data.installed_bfcl_version() == bfcl_data.BFCL_VERSION == "2026.3.23"
    with warnings.catch_warnings():
        warnings.simplefilter("error", bfcl_data.BfclVersionWarning)
        assert bfcl_data.check_bfcl_version() is None
        bfcl_data._package_data_dir()


def test_tfds_builder_writes_array_record_and_reads_back_every_split(tmp_path):
    tfds_builder = pytest.importorskip("envtune_jax.environments.tfds_builder")
    builder = tfds_builder.bfcl_builder(tmp_path)
    builder.download_and_prepare()
    files = sorted(p.name for p in (tmp_path / "bfcl_multi_turn" / "1.0.0").iterdir())
    assert any(name.startswith("bfcl_multi_turn-test.array_record") for name in files)
    source = builder.as_data_source(split="train")
    stored_ids = [tfds_builder._text(source[i]["id"]) for i in range(len(source))]
    package_ids = [e.id for e in splits.split_entries("train")]
    assert sorted(stored_ids) == sorted(package_ids) and stored_ids != package_ids  # shuffled on write
    for split in tfds_builder.BUILDER_SPLITS:
        assert tfds_builder.load_split_entries(split, data_dir=tmp_path) == splits.split_entries(split)
    assert tfds_builder.load_split_entries("all", ["multi_turn_base"], data_dir=tmp_path) == load_entries(
        ["multi_turn_base"]
    )
