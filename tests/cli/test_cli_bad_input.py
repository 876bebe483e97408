"""Every subcommand answers bad input with one line on stderr and exit status 2, before any model loads.

The table runs in-process (the heavy phase, which starts with `initialize_distributed`, is made to fail,
so each row proves its error came from the checks that run first); a row per subcommand also runs as a
subprocess of the real command, which must end within 2 s without importing JAX, transformers, torch or
TensorFlow.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from envtune_jax.cli import outputs
from envtune_jax.cli.main import main
from tests.conftest import write_weightless_hf_dir

ROOT = Path(__file__).resolve().parents[2]
RECIPE = str(ROOT / "configs" / "recipes" / "tiny_cpu.yaml")
HEAVY_MODULES = ("jax", "transformers", "torch", "tensorflow", "flax", "optax", "orbax")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Named paths of the inputs the table refers to as {name}."""
    root = tmp_path_factory.mktemp("bad_input")
    hf = write_weightless_hf_dir(root / "hf")
    broken = write_weightless_hf_dir(root / "broken_config")
    (broken / "config.json").write_text('{"model_type": "qwen3",')
    llama = write_weightless_hf_dir(root / "llama")
    (llama / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    truncated = write_weightless_hf_dir(root / "truncated")
    header = json.dumps({"w": {"dtype": "F32", "shape": [64, 64], "data_offsets": [0, 16384]}}).encode()
    (truncated / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + bytes(100))
    ckpt = root / "ckpt"
    (ckpt / "params").mkdir(parents=True)
    (ckpt / "model_config.json").write_text(json.dumps({"model": {}, "metadata": {}}))
    unrelated = root / "unrelated"
    unrelated.mkdir()
    (unrelated / "notes.txt").write_text("mine")
    (root / "plain_file").write_text("mine")
    finished = root / "finished_eval"
    finished.mkdir()
    (finished / "eval_results.json").write_text("{}")
    (root / "tools_numbers.json").write_text("[1, 2, 3]")
    (root / "tools_object.json").write_text('{"name": "ls"}')
    (root / "tools_broken.json").write_text("[{")
    (root / "bad.yaml").write_text("run_dir: x\nmodel: {preset: tiny\n")
    (root / "base_missing.yaml").write_text("base: nowhere.yaml\n")
    (root / "replay_bad_line.jsonl").write_text('{"id": "multi_turn_base_0", "result": [["a"]]}\n{"id": oops}\n')
    (root / "replay_twice.jsonl").write_text(
        '{"id": "multi_turn_base_0", "result": [["a"]]}\n{"id": "multi_turn_base_0", "result": [["b"]]}\n'
    )
    (root / "replay_shape.jsonl").write_text('{"id": "multi_turn_base_0", "result": ["a", "b"]}\n')
    (root / "replay_no_id.jsonl").write_text('{"result": [["a"]]}\n')
    paths = {
        name: str(path)
        for name, path in {
            "hf": hf,
            "broken": broken,
            "llama": llama,
            "truncated": truncated,
            "ckpt": ckpt,
            "unrelated": unrelated,
            "finished": finished,
            "root": root,
        }.items()
    }
    paths.update(
        {
            name: str(root / name)
            for name in (
                "plain_file",
                "tools_numbers.json",
                "tools_object.json",
                "tools_broken.json",
                "bad.yaml",
                "base_missing.yaml",
                "replay_bad_line.jsonl",
                "replay_twice.jsonl",
                "replay_shape.jsonl",
                "replay_no_id.jsonl",
            )
        }
    )
    paths["inside_hf"] = str(hf / "out")
    paths["recipe"] = RECIPE
    return paths


# (command line with {name} placeholders, a fragment the one line must hold)
BAD_INPUT = [
    # convert
    ("convert --hf {hf} --out {hf}", "is the --hf folder it reads"),
    ("convert --hf {hf} --out {inside_hf}", "lies inside the --hf folder"),
    ("convert --hf {hf} --out {root}", "holds the --hf folder"),
    ("convert --hf {hf} --out {unrelated}", "did not write (notes.txt)"),
    ("convert --hf {hf} --out {plain_file}", "is not a folder"),
    ("convert --hf {broken} --out {root}/o", "config.json: not valid JSON (line 1"),
    ("convert --hf {truncated} --out {root}/o", "model.safetensors: not a readable safetensors file (truncated"),
    ("convert --hf {llama} --out {root}/o", "model_type='llama'"),
    ("convert --hf {root}/missing --out {root}/o", "missing: not found"),
    ("convert --hf {hf} --out {root}/o --mesh data=x", "size of data must be an integer"),
    ("convert --hf {hf} --out {root}/o --mesh data=2", "needs a multiple of 2 devices, have 1"),
    ("convert --hf {hf} --out {root}/o --mesh fsdp=0", "positive or -1"),
    ("convert --hf {hf} --out {root}/o --mesh pipe=2", "unknown --mesh axis 'pipe'"),
    ("convert --hf {hf}", "the following arguments are required: --out"),
    # export
    ("export --ckpt {root}/missing --out {root}/o", "missing: not found"),
    ("export --ckpt {hf} --out {root}/o", "it holds a Hugging Face checkpoint: use --hf"),
    ("export --ckpt {ckpt} --out {ckpt}", "is the --ckpt folder it reads"),
    ("export --ckpt {ckpt} --out {unrelated}", "did not write"),
    ("export --ckpt {ckpt} --out {root}/o --dtype float16", "invalid choice: 'float16'"),
    # generate
    ("generate --hf {hf} --prompt hi --temperature -1", "--temperature must be > 0"),
    ("generate --hf {hf} --prompt hi --top-p 2", "--top-p must be in (0, 1]"),
    ("generate --hf {hf} --prompt hi --top-k -1", "--top-k must be ≥ 0"),
    ("generate --hf {hf} --prompt hi --stream-chunk 0", "--stream-chunk must be ≥ 1, got 0"),
    ("generate --hf {hf} --prompt hi --max-new-tokens 0", "--max-new-tokens must be ≥ 1"),
    ("generate --hf {hf} --prompt hi --tools {tools_numbers.json}", "tool 0: expected a dict, got int"),
    ("generate --hf {hf} --prompt hi --tools {tools_object.json}", "expected a JSON list of tools"),
    ("generate --hf {hf} --prompt hi --tools {tools_broken.json}", "not valid JSON"),
    ("generate --hf {hf} --prompt hi --tools {root}/none.json", "none.json: not found"),
    ("generate --hf {hf} --prompt hi --mesh data=2", "needs a multiple of 2 devices"),
    ("generate --ckpt {hf} --prompt hi", "use --hf"),
    # train
    ("train --config {bad.yaml}", "bad.yaml:3:1: not valid YAML"),
    ("train --config {root}/none.yaml", "none.yaml: not found"),
    ("train --config {base_missing.yaml}", "config file not found"),
    ("train --config {recipe} stage_overrides=[max_steps=-1]", "max_steps must be ≥ 1, got -1"),
    ("train --config {recipe} stage_overrides=[samples_per_prompt=0]", "samples_per_prompt must be ≥ 2"),
    ("train --config {recipe} sampler.batch_size=0", "batch_size must be ≥ 1"),
    ("train --config {recipe} sampler.top_p=2", "top_p must be in (0, 1]"),
    ("train --config {recipe} rollout.max_new_tokens_per_step=-5", "max_new_tokens_per_step must be ≥ 1"),
    ("train --config {recipe} checkpoint.every_steps=0", "every_steps must be ≥ 1"),
    ("train --config {recipe} model.preset=qwen3-5b", "unknown preset 'qwen3-5b'"),
    ("train --config {recipe} model.preset=null model.hf={root}/none", "model.hf"),
    ("train --config {recipe} mesh.data=2", "needs a multiple of 2 devices"),
    ("train --config {recipe} samplr.batch_size=2", "Did you mean 'sampler'"),
    ("train --config {recipe} 'stages=[nowhere.yaml]'", "stage file nowhere.yaml not found"),
    # eval
    ("eval --policy oracle --limit 0", "--limit must be ≥ 1, got 0"),
    ("eval --policy oracle --categories base,foo", "unknown category 'foo'"),
    ("eval --policy oracle --workers 0", "--workers must be ≥ 1"),
    ("eval --policy oracle --out {finished}", "holds a finished evaluation"),
    ("eval --policy oracle --out {plain_file}", "is not a folder"),
    ("eval --hf {hf} --max-new-tokens 0", "--max-new-tokens must be ≥ 1"),
    ("eval --hf {hf} --mesh data=x", "size of data must be an integer"),
    ("eval --hf {broken}", "not valid JSON"),
    ("eval --replay {replay_bad_line.jsonl}", "replay_bad_line.jsonl:2: not valid JSON"),
    ("eval --replay {replay_twice.jsonl}", "recorded twice with different results"),
    ("eval --replay {replay_shape.jsonl}", "must be a list of turns"),
    ("eval --replay {replay_no_id.jsonl}", "needs a string 'id'"),
    ("eval --replay {root}/none", "none: not found"),
    ("eval --policy oracle --limit x", "invalid int value: 'x'"),
    # bench
    ("bench generate --preset tiny", "--preset needs --random-weights"),
    ("bench generate --preset tinyy --random-weights", "Did you mean 'tiny'"),
    ("bench generate --preset tiny --random-weights --batch 0", "--batch must be ≥ 1"),
    ("bench generate --preset tiny --random-weights --model-config num_heads=3", "num_heads 3"),
    ("bench generate --hf {truncated}", "truncated"),
    ("bench prefill --preset tiny --random-weights --chunk 3", "power of two"),
    ("bench extend --preset tiny --random-weights --batch 1", "--batch must be ≥ 2"),
    ("bench train --preset tiny --random-weights --seq-len 1", "--seq-len must be ≥ 2"),
    ("bench train --preset tiny", "--preset needs --random-weights"),
    ("bench memory --preset tiny --program decode --fraction 2", "--fraction must lie in (0, 1]"),
    ("bench rollout --recipe {recipe} --prompts 0", "--prompts must be ≥ 1"),
    ("bench rollout --recipe {recipe} --stage nope", "--stage 'nope'"),
    # recipe
    ("recipe show {root}/none.yaml", "none.yaml: not found"),
    ("recipe show {bad.yaml}", "bad.yaml:3:1: not valid YAML"),
    ("recipe show {recipe} sampler.max_new_tokens=5", "sampler.max_new_tokens=5 has no effect"),
    ("recipe show {recipe} stage_overrides=[epochs=0]", "epochs must be > 0"),
    ("recipe show", "the following arguments are required: recipe"),
    # plot
    ("plot {root}/none.jsonl", "none.jsonl does not exist"),
    # demo and the top level
    ("demo --eval-limit 0", "--eval-limit must be ≥ 1"),
    ("demo --out {unrelated}", "did not write"),
    ("frobnicate", "invalid choice: 'frobnicate'"),
]

# One row per subcommand, run as the real command in a subprocess: exit 2, one line, < 2 s, no heavy import.
SUBPROCESS_ROWS = [
    "convert --hf {hf} --out {hf}",
    "export --ckpt {hf} --out {root}/o",
    "generate --hf {hf} --prompt hi --temperature -1",
    "generate --hf {hf} --prompt hi --mesh data=2",
    "train --config {recipe} stage_overrides=[max_steps=-1]",
    "train --config {bad.yaml}",
    "eval --policy oracle --categories base,foo",
    "eval --replay {replay_bad_line.jsonl}",
    "bench generate --preset tiny",
    "bench rollout --recipe {recipe} --prompts 0",
    "demo --eval-limit 0",
    "plot {root}/none.jsonl",
    "recipe show {recipe} sampler.max_new_tokens=5",
]


def _argv(line: str, files: dict) -> list[str]:
    import shlex

    return shlex.split(line.replace("{", "{0[").replace("}", "]}").format(files))


@pytest.mark.parametrize("line,fragment", BAD_INPUT, ids=[line for line, _ in BAD_INPUT])
def test_bad_input_is_one_line_and_exit_2_before_anything_heavy(line, fragment, files, capsys, monkeypatch):
    import envtune_jax.mesh

    def heavy_phase():
        raise AssertionError("the heavy phase started: the argument was not checked first")

    monkeypatch.setattr(envtune_jax.mesh, "initialize_distributed", heavy_phase)
    monkeypatch.chdir(files["root"])
    try:
        code = main(_argv(line, files))
    except SystemExit as exc:  # argparse
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("envtune"), err
    assert fragment in err, err


def test_the_real_command_fails_fast_without_heavy_imports(files):
    """Each row in its own process: exit 2, one line on stderr, under 2 s, and none of the heavy
    modules imported by the time the error is reported."""
    probe = (
        "import sys; from envtune_jax.cli.main import main; code = main(sys.argv[1:]); "
        f"print(','.join(m for m in {HEAVY_MODULES!r} if m in sys.modules)); sys.exit(code)"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    slow, heavy, wrong = [], [], []
    for line in SUBPROCESS_ROWS:
        start = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-c", probe, *_argv(line, files)],
            capture_output=True,
            text=True,
            env=env,
            cwd=files["root"],
            timeout=60,
        )
        seconds = time.perf_counter() - start
        if result.returncode != 2 or len(result.stderr.splitlines()) != 1:
            wrong.append((line, result.returncode, result.stderr))
        if result.stdout.strip():
            heavy.append((line, result.stdout.strip()))
        if seconds >= 2.0:
            slow.append((line, round(seconds, 2)))
    assert not wrong, wrong
    assert not heavy, heavy
    assert not slow, slow


def test_debug_anywhere_shows_the_traceback_and_version_prints(files, capsys):
    from envtune_jax.config import ConfigError

    with pytest.raises(ConfigError, match="--limit must be ≥ 1"):
        main(["eval", "--policy", "oracle", "--limit", "0", "--debug"])
    with pytest.raises(ConfigError, match="--limit must be ≥ 1"):
        main(["--debug", "eval", "--policy", "oracle", "--limit", "0"])
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.startswith("envtune-jax ")


def test_an_existing_output_of_the_same_command_may_be_replaced(files, tmp_path):
    """The marker makes an earlier `envtune convert` output replaceable; another command's is not."""
    from envtune_jax.config import ConfigError

    out = tmp_path / "ckpt"
    out.mkdir()
    (out / "model_config.json").write_text("{}")
    with pytest.raises(ConfigError, match="did not write"):
        outputs.check_replaceable(out, {"--hf": Path(files["hf"])}, "convert", overwrite=False)
    outputs.mark(out, "convert", Path(files["hf"]))
    outputs.check_replaceable(out, {"--hf": Path(files["hf"])}, "convert", overwrite=False)
    with pytest.raises(ConfigError, match="holds the output of `envtune convert`"):
        outputs.check_replaceable(out, {"--ckpt": Path(files["ckpt"])}, "export", overwrite=False)
    outputs.check_replaceable(out, {"--ckpt": Path(files["ckpt"])}, "export", overwrite=True)
    with pytest.raises(ConfigError, match="is the --hf folder"):  # --overwrite never allows replacing the input
        outputs.check_replaceable(Path(files["hf"]), {"--hf": Path(files["hf"])}, "convert", overwrite=True)


def test_a_mesh_that_does_not_fit_is_one_line_when_jax_counts_the_devices(files, tmp_path, capsys, monkeypatch):
    """Where the device count is only known once JAX starts, the mesh is still checked before any weight loads."""
    from envtune_jax.cli import validate
    from envtune_jax.models import hf_io

    def no_load(*args, **kwargs):
        raise AssertionError("weights were loaded before the mesh was checked")

    monkeypatch.setattr(validate, "visible_device_count", lambda: None)
    monkeypatch.setattr(hf_io, "load_pretrained", no_load)
    assert main(["convert", "--hf", files["hf"], "--out", str(tmp_path / "o"), "--mesh", "data=2"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "needs a multiple of 2 devices, have 1" in err


def test_the_device_count_is_known_early_only_when_certain(monkeypatch):
    import importlib.metadata

    from envtune_jax.cli import validate

    monkeypatch.delenv("JAX_NUM_CPU_DEVICES", raising=False)
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("XLA_FLAGS", "--xla_backend_optimization_level=0 --xla_force_host_platform_device_count=8")
    assert validate.visible_device_count() == 8
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.1:1234")  # several processes: JAX counts them
    assert validate.visible_device_count() is None
    monkeypatch.delenv("JAX_COORDINATOR_ADDRESS")
    monkeypatch.setenv("JAX_PLATFORMS", "cuda")
    assert validate.visible_device_count() is None
    monkeypatch.delenv("JAX_PLATFORMS")
    monkeypatch.setattr(validate, "_cpu_only_install", lambda: False)  # e.g. the CUDA plugin is installed
    assert validate.visible_device_count() is None
    monkeypatch.setattr(validate, "_cpu_only_install", lambda: True)
    monkeypatch.setenv("XLA_FLAGS", "")
    assert validate.visible_device_count() == 1
    monkeypatch.undo()
    monkeypatch.setenv("PJRT_NAMES_AND_LIBRARY_PATHS", "my_chip:/opt/libmychip.so")
    assert not validate._cpu_only_install()
    monkeypatch.delenv("PJRT_NAMES_AND_LIBRARY_PATHS")
    monkeypatch.setattr(
        importlib.metadata, "entry_points", lambda group: ["xla_cuda12"] if group == "jax_plugins" else []
    )
    assert not validate._cpu_only_install()
