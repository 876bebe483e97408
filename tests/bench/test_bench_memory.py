"""`envtune bench memory` (envtune_jax/bench/memory.py): XLA's buffer figures for the decode loop and the
train step agree with the arrays they must hold, donation shows as aliasing, and the fit search finds the
boundary with a logarithmic number of compilations."""

from __future__ import annotations

import contextlib
import io
import json

import pytest

from envtune_jax.bench.memory import decode_memory, largest_fitting_batch, train_memory
from envtune_jax.cli.main import main
from envtune_jax.models.config import preset
from envtune_jax.models.generation.sampling import MAX_STOP_TOKENS

BATCH, CONTEXT = 4, 64


def decode_argument_bytes(cfg, batch: int, context: int, cache_itemsize: int) -> int:
    """Every input of decode_loop: weights, the generation state (KV cache, per-position token ids,
    log-probs and sampled flags, per-slot hidden state, key, counters, flags) and the call's arguments."""
    weights = cfg.num_params * 2  # bf16
    kv = cfg.num_layers * 2 * batch * context * cfg.num_kv_heads * cfg.head_dim * cache_itemsize
    per_position = batch * context * (4 + 4 + 1)  # tokens int32, logprobs fp32, sampled bool
    per_slot = batch * (cfg.hidden_size * 2 + 8 + 4 + 4 + 1 + 1)  # hidden bf16, key, length, turn start, flags
    # active, budgets, stop ids (padded to MAX_STOP_TOKENS, as the engine passes them), temperature, max
    # steps (top-p is unused without top-p sampling, and jit drops unused arguments)
    call = batch * (1 + 4) + MAX_STOP_TOKENS * 4 + 2 * 4
    return weights + kv + per_position + per_slot + call


def test_decode_loop_holds_the_weights_and_the_state_and_aliases_the_donated_state():
    cfg = preset("tiny", param_dtype="bfloat16", dtype="bfloat16")
    got = decode_memory(cfg, BATCH, CONTEXT, "bfloat16")
    assert got["argument"] == decode_argument_bytes(cfg, BATCH, CONTEXT, 2)
    kv = cfg.num_layers * 2 * BATCH * CONTEXT * cfg.num_kv_heads * cfg.head_dim * 2
    assert got["alias"] >= kv and got["output"] >= got["alias"]  # the state comes back in its own buffers
    assert got["peak"] == got["argument"] + got["output"] - got["alias"] + got["temp"]
    double = decode_memory(cfg, BATCH, 2 * CONTEXT, "bfloat16")
    assert double["argument"] - got["argument"] == kv + BATCH * CONTEXT * 9  # KV + per-position state


def test_train_step_holds_weights_and_both_adam_moments():
    cfg = preset("tiny", param_dtype="float32", dtype="float32", remat="full")
    got = train_memory(cfg, BATCH, CONTEXT, micro_batch=2, kl_coef=0.0)
    params = cfg.num_params * 4
    batch_bytes = BATCH * CONTEXT * 4 + 3 * BATCH * (CONTEXT - 1) * 4 + BATCH * 4
    scalars = got["argument"] - 3 * params - batch_bytes  # weights, m, v (fp32), the batch, then only counters
    assert 0 < scalars <= 64, scalars  # the step and the optimizer's int32 counts
    assert got["alias"] >= 3 * params  # the train state is donated
    with_ref = train_memory(cfg, BATCH, CONTEXT, micro_batch=2, kl_coef=0.1)
    assert with_ref["argument"] - got["argument"] == params  # the frozen reference copy


def test_fit_search_finds_the_boundary_in_logarithmic_compilations():
    calls = []

    def measure(b):
        calls.append(b)
        return {"peak": 100 + 10 * b}

    batch, analysis = largest_fitting_batch(measure, limit_bytes=1000, max_batch=4096)
    assert batch == 90 and analysis["peak"] == 1000
    assert len(calls) <= 16
    assert largest_fitting_batch(lambda b: {"peak": 2000}, 1000, 64)[0] == 0
    assert largest_fitting_batch(lambda b: {"peak": b}, 1e9, 48)[0] == 48  # capped by max_batch


def test_cli_fit_prints_a_batch_at_the_limit():
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        # float32: on a CPU, bf16 matmuls are emulated with float32 copies of the weights in the temporaries
        assert (
            main(
                [
                    "bench",
                    "memory",
                    "--preset",
                    "tiny",
                    "--program",
                    "decode",
                    "--context",
                    str(CONTEXT),
                    "--dtype",
                    "float32",
                    "--cache-dtype",
                    "float32",
                    "--fit",
                    "--memory-gb",
                    "0.08",
                    "--fraction",
                    "1.0",
                    "--max-batch",
                    "64",
                ]
            )
            == 0
        )
    record = json.loads(out.getvalue())
    assert record["fit"] and record["limit_bytes"] == pytest.approx(8e7)
    # the tiny model's loop holds ~40 MB of weights + ~3.7 MB per slot (float32 [slot, vocab] temporaries)
    assert 2 <= record["largest_batch"] < 64 and record["peak_bytes"] <= record["limit_bytes"]
    assert record["tokens"] == record["largest_batch"] * CONTEXT
    cfg = preset("tiny", param_dtype="float32", dtype="float32")
    assert decode_memory(cfg, record["largest_batch"] + 1, CONTEXT, "float32")["peak"] > record["limit_bytes"]
