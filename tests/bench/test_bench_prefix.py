"""What sharing a group's prompt saves: the counted figures of `envtune bench prefix` at BFCL shapes (the issue's
own arithmetic, and the targets), XLA's buffers of the shared-prefix decode loop (`bench memory --shared-prefix`),
and the side-by-side train-step timing path on small shapes."""

from __future__ import annotations

import contextlib
import io
import json

from envtune_jax.bench import prefix_accounting as acc
from envtune_jax.bench.memory import decode_memory
from envtune_jax.cli.main import main
from envtune_jax.models.config import preset


def run_cli(argv) -> dict:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(argv) == 0
    return json.loads(out.getvalue())


def test_counted_figures_at_bfcl_shapes_meet_the_targets():
    record = run_cli(["bench", "prefix"])
    assert record["kv_bytes_per_token"] == 147_456  # Qwen3-4B, bf16
    step = record["decode_step_kv_bytes_per_group"]  # 16 x 6,750 tokens vs 6,000 + 16 x 750
    assert step["unshared"] == 16 * 6750 * 147_456 and step["shared"] == 18_000 * 147_456
    assert step["ratio"] >= 5
    assert record["kv_bytes_per_group"]["ratio"] >= 3  # own tokens up to 2k
    batch = record["largest_decode_batch"]
    assert batch["ratio"] >= 3 and batch["shared"] % 16 == 0
    assert record["train_tokens_per_group"] == {"unshared": 120_000, "shared": 30_000, "ratio": 4.0}
    assert record["train_flops_per_group"]["ratio"] >= 3
    long = record["one_capacity_long_episode"]  # one long episode raises every slot's capacity
    assert long["largest_decode_batch"]["shared"] < batch["shared"] / 5
    assert long["largest_decode_batch_per_slot_capacities"]["ratio"] >= 3


def test_attention_pairs_and_tokens_by_hand():
    group = acc.GroupShape(prompt=4, samples=2, own=3)
    assert group.tokens(False) == 14 and group.tokens(True) == 10
    assert acc.attention_pairs(group, False) == 2 * (7 * 8 // 2)
    assert acc.attention_pairs(group, True) == 10 + 2 * (3 * 4 + 6)  # prompt causal, own vs prompt, own causal
    cfg = preset("tiny")
    flops = acc.train_flops(group, cfg, sampled_per_sample=2, shared=True)
    assert flops["output_layer"] == 6 * cfg.vocab_size * cfg.hidden_size * 4
    assert flops["total"] == flops["weights"] + flops["attention"] + flops["output_layer"]
    kv = acc.kv_bytes_per_token(cfg, 2)
    assert acc.largest_decode_batch(group, kv, 0, 10 * 10 * kv, shared=True) == 20
    assert acc.largest_decode_batch(group, kv, 0, 10 * 10 * kv, shared=False) == 14


def test_shared_prefix_decode_loop_holds_each_prompt_once():
    """XLA's arguments of the shared decode loop: B x (context - P) own slots and B / G regions of P in place
    of B x context slots (plus the regions' prompt ids, last hidden states and the slots' lanes)."""
    cfg = preset("tiny", param_dtype="float32", dtype="float32")
    batch, context, prompt, group = 8, 128, 96, 4
    plain = decode_memory(cfg, batch, context, "float32")
    shared = decode_memory(cfg, batch, context, "float32", prompt, group)
    regions = batch // group
    per_token = cfg.num_layers * 2 * cfg.num_kv_heads * cfg.head_dim * 4
    kv_saved = (batch * context - batch * (context - prompt) - regions * prompt) * per_token
    per_position_saved = batch * prompt * 9  # token ids, log-probs, sampled flags of the own slots
    prefix_extras = regions * 4 + regions * prompt * 4 + regions * cfg.hidden_size * 4 + batch * 4
    assert plain["argument"] - shared["argument"] == kv_saved + per_position_saved - prefix_extras
    assert shared["alias"] >= regions * prompt * per_token  # the regions are donated with the state


def test_cli_reports_both_and_times_the_train_step_side_by_side():
    record = run_cli(
        [
            "bench",
            "memory",
            "--preset",
            "tiny",
            "--program",
            "decode",
            "--batch",
            "4",
            "--context",
            "64",
            "--dtype",
            "float32",
            "--cache-dtype",
            "float32",
            "--shared-prefix",
            "--prompt",
            "48",
            "--group",
            "4",
        ]
    )
    assert record["shared_prefix"]["argument_bytes"] < record["argument_bytes"]
    timed = run_cli(
        ["bench", "prefix", "--prompt", "40", "--group", "3", "--train-own", "8", "--time-train", "--steps", "1"]
    )["train_step_tiny_cpu"]
    assert timed["unshared"]["rows"] == 3 and timed["shared"]["rows"] == 1
    assert timed["unshared"]["model_tokens"] == timed["shared"]["model_tokens"] == 3 * 8
    assert timed["speedup"] > 0 and timed["speedup_cpu_time"] > 0
    assert main(["bench", "memory", "--preset", "tiny", "--program", "train", "--shared-prefix", "--prompt", "8"]) == 2


def test_prompt_tree_counts_each_distinct_prefix_once():
    from types import SimpleNamespace

    from envtune_jax.bench.prompts import batch_figures, trie_tokens

    assert trie_tokens([[1, 2, 3], [1, 2, 4, 5], [1, 2, 3], [7]]) == 3 + 2 + 1  # 1-2-3, 4-5, 7
    ids = {"a": [1, 2, 3, 4], "b": [1, 2, 3, 9, 9], "c": [5, 6]}
    picked = [
        SimpleNamespace(id="a", involved_classes=["X"]),
        SimpleNamespace(id="b", involved_classes=["X"]),
        SimpleNamespace(id="c", involved_classes=["Y"]),
    ]
    got = batch_figures(picked, ids, samples=4, own=10)
    assert (got["unshared"], got["group"], got["tree"], got["classes_tree"]) == (44, 11, 8, 8)
    assert got["common_prefix_same_classes"] == [3]
    assert got["tree_saves_of_held_tokens"] == 3 / (11 + 4 * 3 * 10)


def test_real_bfcl_prompts_with_the_same_classes_share_their_tool_block():
    """Rendered and tokenised as rollouts start them: two tasks with the same involved classes agree on
    thousands of leading tokens (the system block with the tool documentation), and differ after it."""
    from envtune_jax.bench.prompts import common_prefix, prompt_ids
    from envtune_jax.chat.tokenizer import default_tokenizer
    from envtune_jax.rl.curriculum import StageConfig
    from envtune_jax.rl.stage_data import load_subset

    entries = load_subset("stage1_easy", source="package")
    by_classes = {}
    for entry in entries:
        by_classes.setdefault(tuple(sorted(entry.involved_classes)), []).append(entry)
    same = next(group for group in by_classes.values() if len(group) >= 2)[:2]
    other = next(group[0] for key, group in by_classes.items() if key != tuple(sorted(same[0].involved_classes)))
    ids = prompt_ids(same + [other], StageConfig(), default_tokenizer())
    a, b, c = (ids[e.id] for e in (*same, other))
    assert common_prefix(a, b) > 1000 and a != b
    assert common_prefix(a, c) < common_prefix(a, b)
