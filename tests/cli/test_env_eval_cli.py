"""`envtune eval`: the table, the files it writes, replay of its own result layout, the model-path error."""

from __future__ import annotations

import json

from envtune_jax.cli.main import main
from envtune_jax.environments.eval_report import TableRow, category_table, markdown_table
from tests.conftest import write_weightless_hf_dir


def test_oracle_eval_writes_the_table_and_its_replay_scores_the_same(tmp_path, capsys):
    out = tmp_path / "oracle"
    assert (
        main(
            [
                "eval",
                "--policy",
                "oracle",
                "--split",
                "test",
                "--categories",
                "base,miss_param",
                "--data-source",
                "package",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "| multi_turn_base | 100 | 100 | 100.00% |" in printed and "| OVERALL | 200 | 200 | 100.00% |" in printed
    results = json.loads((out / "eval_results.json").read_text())
    assert results["split"] == "test" and results["overall_accuracy"] == 100.0 and len(results["entries"]) == 200
    assert (out / "eval_results.md").read_text().startswith("| Category | Correct | Total | Accuracy |")

    # Replay the written layout, with one entry's recording cut short and one made to skip its calls.
    lines = [json.loads(line) for line in (out / "model_results.jsonl").read_text().splitlines()]
    lines[0]["result"] = lines[0]["result"][:-1]
    lines[1]["result"] = [["no calls"] for _ in lines[1]["result"]]
    replay_file = tmp_path / "recorded.jsonl"
    replay_file.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert (
        main(
            [
                "eval",
                "--replay",
                str(replay_file),
                "--split",
                "test",
                "--categories",
                "base,miss_param",
                "--data-source",
                "package",
                "--out",
                str(tmp_path / "replay"),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "| multi_turn_base | 98 | 100 | 98.00% |" in printed
    assert "| OVERALL | 198 | 200 | 99.00% |" in printed


def test_a_model_that_cannot_be_loaded_fails_clearly(tmp_path, capsys):
    hf_dir = write_weightless_hf_dir(tmp_path / "hf")
    assert main(["eval", "--hf", str(hf_dir), "--data-source", "package", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "missing tensors" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o" / "eval_records.partial").exists()  # nothing evaluated: no progress left behind


def test_overall_is_the_unweighted_mean_of_category_accuracies():
    class _Outcome:
        def __init__(self, correct):
            self.correct = correct

    class _Record:
        def __init__(self, category, correct):
            self.category, self.outcome = category, _Outcome(correct)

    records = [_Record("multi_turn_base", i < 3) for i in range(4)] + [
        _Record("multi_turn_miss_func", i < 1) for i in range(2)
    ]
    rows = category_table(records)
    assert rows[-1] == TableRow("OVERALL", 4, 6, (75.0 + 50.0) / 2)
    assert markdown_table(rows).splitlines()[-1] == "| OVERALL | 4 | 6 | 62.50% |"


def test_default_data_source_is_the_tfds_dataset_built_on_first_use(tmp_path, capsys):
    data_dir = tmp_path / "tfds"
    assert (
        main(
            [
                "eval",
                "--policy",
                "oracle",
                "--split",
                "test",
                "--categories",
                "miss_func",
                "--limit",
                "3",
                "--data-dir",
                str(data_dir),
                "--out",
                str(tmp_path / "out"),
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    assert "| multi_turn_miss_func | 3 | 3 | 100.00% |" in captured.out
    # one line of ours instead of TFDS's messages and its progress bars per split and pass
    assert "Downloading and preparing" not in captured.out and "Subsequent calls" not in captured.out
    assert "Generating" not in captured.err and "Shuffling" not in captured.err
    assert captured.err.count("preparing the BFCL V3 multi-turn splits once") == 1
    assert any(data_dir.rglob("*.array_record*"))  # prepared there on first use, then read through TFDS
    results = json.loads((tmp_path / "out" / "eval_results.json").read_text())
    from envtune_jax.environments.splits import first_per_category, split_entries

    expected = first_per_category(split_entries("test", ["multi_turn_miss_func"]), 3)
    assert [entry["id"] for entry in results["entries"]] == [entry.id for entry in expected]


def test_an_interrupted_eval_goes_on_where_it_stopped(tmp_path, capsys, monkeypatch):
    """Each finished entry is saved as it ends; the same command with the same --out evaluates only the
    others (a line cut short by the kill is dropped and its entry played again) and writes the results an
    uninterrupted run writes. Another run's command into that folder is refused."""
    from envtune_jax.environments import eval_report

    command = [
        "eval",
        "--policy",
        "oracle",
        "--split",
        "test",
        "--categories",
        "base,miss_func",
        "--limit",
        "3",
        "--data-source",
        "package",
    ]
    assert main(command + ["--out", str(tmp_path / "whole")]) == 0
    capsys.readouterr()

    out = tmp_path / "resumed"
    add = eval_report.EvalProgress.add
    added = []

    def add_then_die(self, record):
        if len(added) == 4:
            raise KeyboardInterrupt
        add(self, record)
        added.append(record.episode_id)

    monkeypatch.setattr(eval_report.EvalProgress, "add", add_then_die)
    assert main(command + ["--out", str(out)]) == 130  # interrupted after 4 saved entries
    monkeypatch.setattr(eval_report.EvalProgress, "add", add)
    partial = out / eval_report.PROGRESS_FILE
    with partial.open("a") as handle:
        handle.write('{"id": "multi_turn_miss_func_9", "categ')  # killed mid-write
    assert not (out / "eval_results.json").exists()

    assert main(command[:-6] + ["--categories", "base", "--data-source", "package", "--out", str(out)]) == 2
    assert "another evaluation" in capsys.readouterr().err

    played = []
    monkeypatch.setattr(
        eval_report.EvalProgress, "add", lambda self, record: played.append(record.episode_id) or add(self, record)
    )
    assert main(command + ["--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "resuming: 4 entries already evaluated" in captured.err
    assert "| OVERALL | 6 | 6 | 100.00% |" in captured.out
    whole = json.loads((tmp_path / "whole" / "eval_results.json").read_text())
    assert len(added) == 4 and sorted(played) == sorted({entry["id"] for entry in whole["entries"]} - set(added))
    resumed = json.loads((out / "eval_results.json").read_text())
    assert resumed["entries"] == whole["entries"] and resumed["resumed_entries"] == 4
    assert (out / "model_results.jsonl").read_text() == (tmp_path / "whole" / "model_results.jsonl").read_text()
    assert not partial.exists()


def test_a_finished_evaluation_is_replaced_only_with_overwrite(tmp_path, capsys):
    out = tmp_path / "eval"
    command = [
        "eval",
        "--split",
        "test",
        "--categories",
        "base",
        "--limit",
        "2",
        "--data-source",
        "package",
        "--out",
        str(out),
    ]
    assert main(command + ["--policy", "oracle"]) == 0
    finished = (out / "eval_results.json").read_text()
    capsys.readouterr()
    assert main(command + ["--policy", "do-nothing"]) == 2
    err = capsys.readouterr().err
    assert "holds a finished evaluation" in err and len(err.splitlines()) == 1
    assert (out / "eval_results.json").read_text() == finished and not (out / "eval_records.partial").exists()
    assert main(command + ["--policy", "do-nothing", "--overwrite"]) == 0
    assert json.loads((out / "eval_results.json").read_text())["overall_accuracy"] == 0.0
