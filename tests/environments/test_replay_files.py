"""`envtune eval --replay`: reads the folder `envtune eval` writes, names file and line of what it refuses,
and reports (stderr and eval_results.json) every recording that is not scored as recorded."""

from __future__ import annotations

import json

import pytest

from envtune_jax.cli.main import main
from envtune_jax.environments.replay_files import ReplayFileError, load_recordings
from envtune_jax.environments.splits import split_entries

COMMAND = ["eval", "--split", "test", "--categories", "base,miss_func", "--limit", "2", "--data-source", "package"]


@pytest.fixture(scope="module")
def oracle_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("oracle") / "eval"
    assert main(COMMAND + ["--policy", "oracle", "--out", str(out)]) == 0
    return out


def test_the_folder_eval_writes_replays_to_the_same_table(oracle_run, tmp_path, capsys):
    capsys.readouterr()
    assert main(COMMAND + ["--replay", str(oracle_run), "--out", str(tmp_path / "replayed")]) == 0
    captured = capsys.readouterr()
    assert "| OVERALL | 4 | 4 | 100.00% |" in captured.out and "warning" not in captured.err
    replayed = json.loads((tmp_path / "replayed" / "eval_results.json").read_text())
    assert replayed["entries"] == json.loads((oracle_run / "eval_results.json").read_text())["entries"]


def test_recordings_not_scored_as_recorded_are_reported(oracle_run, tmp_path, capsys):
    lines = [json.loads(line) for line in (oracle_run / "model_results.jsonl").read_text().splitlines()]
    lines[0]["result"] = "Error during inference: CUDA out of memory"  # the official harness's failed inference
    lines[1]["result"] = lines[1]["result"][:-1]  # a turn short
    train_base = next(entry.id for entry in split_entries("train", ["multi_turn_base"]))
    lines += [
        dict(lines[2]),  # the same record again
        {"id": "simple_0", "result": [["x"]]},
        {"id": "multi_turn_miss_param_0", "result": [["x"]]},
        {"id": train_base, "result": [["x"]]},
    ]
    replay = tmp_path / "recorded.jsonl"
    replay.write_text("".join(json.dumps(line) + "\n" for line in lines))
    capsys.readouterr()
    assert main(COMMAND + ["--replay", str(replay), "--out", str(tmp_path / "o")]) == 0
    captured = capsys.readouterr()
    assert "| OVERALL | 2 | 4 | 50.00% |" in captured.out
    warnings = captured.err.splitlines()
    expected = [
        "1 recordings hold an error text",
        "1 recordings have another number of turns",
        "1 ids are recorded more than once",
        "not a BFCL V3 multi-turn entry id (first: simple_0 at",
        "in a category not evaluated (--categories) (first: multi_turn_miss_param_0",
        f"not among the evaluated entries (--split test with --limit) (first: {train_base}",
    ]
    for fragment in expected:
        assert sum(fragment in line for line in warnings) == 1, (fragment, warnings)
    unscored = json.loads((tmp_path / "o" / "eval_results.json").read_text())["unscored_recordings"]
    assert unscored["failed_inference"] == [lines[0]["id"]] and unscored["turn_count"] == [lines[1]["id"]]
    assert unscored["repeated"] == [lines[2]["id"]] and unscored["not a BFCL V3 multi-turn entry id"] == ["simple_0"]


@pytest.mark.parametrize(
    "text,message",
    [
        ('{"id": "a", "result": [["x"]]}\n\n{"id": "b", "result": [["x"]]\n', r"recorded\.jsonl:3: not valid JSON"),
        ('[{"id": "a", "result": [["x"]]},\n {"id": "b"}]', r"recorded\.jsonl record 2: a record needs a string 'id'"),
        (
            '{"id": "a", "result": [[{"ls": "{}"}]]}\n',
            r"recorded\.jsonl:1: 'result' of a must be a list of turns.*"
            r"got a list of list of dict",
        ),
        (
            '{"id": "a", "result": [["x"]]}\n{"id": "a", "result": [["y"]]}\n',
            r"a is recorded twice with different results: .*recorded\.jsonl:1 and .*recorded\.jsonl:2",
        ),
    ],
)
def test_a_malformed_recording_is_refused_naming_file_and_line(tmp_path, text, message):
    path = tmp_path / "recorded.jsonl"
    path.write_text(text)
    with pytest.raises(ReplayFileError, match=message):
        load_recordings([path])


def test_the_summary_alone_is_not_taken_for_records(oracle_run, tmp_path):
    with pytest.raises(ReplayFileError, match=r"eval_results\.json:1: not valid JSON .*pass its folder"):
        load_recordings([oracle_run / "eval_results.json"])
