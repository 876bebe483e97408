"""Shared test set-up (CPU only, float32 matmuls exact enough for parity checks) and the helpers that
write tiny random Qwen3 checkpoints with `transformers` itself, for parity tests."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Tests compile many small programs: without XLA's optimisation work (JAX's jax_disable_most_optimizations: LLVM
# level 0, no expensive passes) they compile in about half the time, and no numerics the tests check change.
# The few tests whose time goes to running programs over thousands of tokens take the `optimized_programs`
# fixture: LLVM level 1, from these flags. XLA_FLAGS set by the caller (`make test-learning`) keep both off.
if "XLA_FLAGS" not in os.environ:
    os.environ["XLA_FLAGS"] = "--xla_backend_optimization_level=1"
    os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# CLI calls in tests compile afresh (a persistent cache shared across runs would hide compile costs and
# leave files under ~/.cache); tests/core/test_compile_cache.py turns it on in a temporary folder.
os.environ.setdefault("ENVTUNE_COMPILATION_CACHE", "off")
os.environ.setdefault("BFCL_PROJECT_ROOT", os.path.join(os.path.dirname(__file__), "..", ".bfcl_project_root"))

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


# The longest tests of `make test`, longest first, run before all others: pytest-xdist hands tests to its two
# workers in collection order, so one of these collected last would run alone at the end of the suite.
LONGEST_FIRST = (
    "tests/bench/test_gpu_suite.py::test_first_light_dry_run_of_both_calls_on_cpu",
    "tests/rl/test_rl_train_loop.py::test_train_runs_the_curriculum_and_resumes_exactly_after_a_kill",
    "tests/rl/test_multihost.py::test_two_processes_train_resume_and_export_like_one_process",
    "tests/cli/test_readme_pipeline.py::test_readme_pipeline_and_help_examples_run_at_tiny_size",
    "tests/bench/test_bench_prefill_rollout.py::test_bench_rollout_tiny_recipe_on_real_bfcl_environments",
    "tests/core/test_compile_cache.py::test_a_second_process_reuses_the_first_ones_programs",
    "tests/generation/test_generation_multidevice.py::test_eight_device_mesh_gives_the_same_generations",
    "tests/generation/test_generation_shared_prefix_multidevice.py::test_shared_prefixes_on_an_eight_device_mesh",
)


def pytest_collection_modifyitems(config, items):
    """Moves LONGEST_FIRST to the front, in its order; the other tests keep theirs."""
    rank = {nodeid: index for index, nodeid in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("@")[0], len(rank)))


@pytest.fixture
def optimized_programs():
    """XLA's optimisation (LLVM level 1) for the programs this test compiles, for tests that run the model over
    thousands of tokens: each program compiles slower and runs about twice as fast (the tiny recipe's train step
    on 2 x 4,096 tokens: 13.3 s at the suite's default, 7.1 s at level 1; 2-core CPU, 2026-12-02)."""
    before = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", False)
    yield
    jax.config.update("jax_disable_most_optimizations", before)


@pytest.fixture
def compilation_cache(tmp_path):
    """A persistent compilation cache for this test only, in its temporary folder, caching every program: a test
    that builds the same programs several times (a second engine, trainer or CLI command) compiles each once.
    JAX's settings and cache state are restored after."""
    from jax.experimental.compilation_cache import compilation_cache as cache

    names = (
        "jax_compilation_cache_dir",
        "jax_persistent_cache_min_compile_time_secs",
        "jax_persistent_cache_min_entry_size_bytes",
    )
    before = {name: getattr(jax.config, name) for name in names}
    cache.reset_cache()
    jax.config.update("jax_compilation_cache_dir", str(tmp_path / "xla-cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    yield tmp_path / "xla-cache"
    for name, value in before.items():
        jax.config.update(name, value)
    cache.reset_cache()


# ---------------------------------------------------------------- tiny HF checkpoints
TINY_VARIANTS = {
    # name: (hidden, intermediate, layers, heads, kv_heads, head_dim, tied, rope_theta)
    "tied_kv2": (64, 128, 2, 4, 2, 32, True, 1e6),
    "untied_kv1": (48, 96, 2, 4, 1, 16, False, 5e6),
    "tied_kv4_theta5e6": (64, 160, 3, 8, 2, 24, True, 5e6),
    "untied_mha": (32, 64, 2, 4, 4, 8, False, 1e6),
}


def write_tiny_qwen3(
    out_dir: Path,
    variant: str = "tied_kv2",
    vocab_size: int = 512,
    seed: int = 0,
    dtype: str = "float32",
    max_shard_size: str | None = None,
) -> Path:
    """Creates a random Qwen3ForCausalLM with transformers and saves it (safetensors) to out_dir; with
    `max_shard_size` (e.g. "100KB") as several files with a model.safetensors.index.json."""
    import torch
    import transformers

    hidden, inter, layers, heads, kv, head_dim, tied, theta = TINY_VARIANTS[variant]
    config = transformers.Qwen3Config(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        head_dim=head_dim,
        tie_word_embeddings=tied,
        rope_theta=theta,
        max_position_embeddings=32768,
        rms_norm_eps=1e-6,
    )
    torch.manual_seed(seed)
    model = transformers.Qwen3ForCausalLM(config)
    with torch.no_grad():  # make norms non-trivial so a mis-mapped norm shows up
        for name, param in model.named_parameters():
            if "norm" in name:
                param.copy_(1.0 + 0.1 * torch.randn_like(param))
    model = model.to(getattr(torch, dtype))
    model.save_pretrained(out_dir, **({"max_shard_size": max_shard_size} if max_shard_size else {}))
    return Path(out_dir)


@functools.lru_cache(maxsize=8)
def hf_model(path: str, dtype: str = "float32"):
    import torch
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype)).eval()


def hf_logits(
    path: Path, tokens: np.ndarray, attention_mask: np.ndarray | None = None, dtype: str = "float32"
) -> np.ndarray:
    import torch

    model = hf_model(str(path), dtype)
    with torch.no_grad():
        kwargs = {"input_ids": torch.tensor(tokens)}
        if attention_mask is not None:
            kwargs["attention_mask"] = torch.tensor(attention_mask)
        return model(**kwargs).logits.float().numpy()


def write_weightless_hf_dir(out_dir: Path) -> Path:
    """A folder that passes the command line's checks of an HF checkpoint without loading anything: the
    tiny preset's config.json and a model.safetensors holding no tensors (for tests of what comes after)."""
    import json
    import struct

    from envtune_jax.models.config import PRESETS, to_hf_dict

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(to_hf_dict(PRESETS["tiny"])))
    header = b'{"__metadata__": {"format": "pt"}}'
    (out_dir / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    return out_dir
