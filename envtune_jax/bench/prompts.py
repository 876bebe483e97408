"""`envtune bench prompts`: how much of a training batch's prompt tokens two tasks share, on the real BFCL data.

For a stage (configs/stages/*.yaml), every entry of its data subset (the installed bfcl-eval data) is
rendered and tokenised as a rollout starts it (envtune_jax.chat.conversation.TokenConversation with the
stage's chat settings and the Qwen3 tokenizer), and the stage's batches are drawn as training draws
them (`--batches` steps of prompts_per_step prompts, the run's seed). Per batch of P prompts x G samples:
- unshared: G x the prompts' tokens (every sample holds its prompt);
- group: each prompt once (the engine's and the trainer's shared prefixes);
- tree: each distinct prefix once over the whole batch (a prefix tree: system block with the tool
  documentation → task prompt → samples), i.e. the batch's prompts in a trie;
- classes: the same, counted among prompts whose involved classes match (their system blocks agree),
  and the length of the common prefix of such prompts (how much the system block is).
A three-level tree saves (group − tree) tokens over group sharing; the record relates that to the tokens
a batch holds with group sharing once each sample has its own tokens (`--own`, per sample), which is
what a decode batch holds and a train step computes. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import collections
import statistics


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stage", default="configs/stages/stage3_hard.yaml", help="a stage YAML")
    parser.add_argument("--batches", type=int, default=8, help="training batches drawn (steps from the start)")
    parser.add_argument("--seed", type=int, default=0, help="the run's seed (its draw order)")
    parser.add_argument("--own", type=int, default=1500, help="own tokens per sample, to relate savings to")


def trie_tokens(sequences) -> int:
    """Tokens in a prefix tree of the sequences: each distinct prefix once (Σ lengths − Σ adjacent common
    prefixes of the sorted distinct sequences)."""
    ordered = sorted({tuple(s) for s in sequences})
    total = sum(len(s) for s in ordered)
    for previous, current in zip(ordered, ordered[1:]):
        total -= common_prefix(previous, current)
    return total


def common_prefix(a, b) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def prompt_ids(entries, stage, tokenizer) -> dict[str, list[int]]:
    from envtune_jax.chat.conversation import TokenConversation
    from envtune_jax.environments.bfcl_env import BfclEpisode

    out = {}
    for entry in entries:
        episode = BfclEpisode(entry, stage.environment)
        conversation = TokenConversation(tokenizer, stage.chat)
        conversation.start(episode.reset(), episode.tools())
        out[entry.id] = list(conversation.ids)
    return out


def batch_figures(picked, ids, samples: int, own: int) -> dict:
    prompts = [ids[e.id] for e in picked]
    unshared = samples * sum(map(len, prompts))
    group = sum(map(len, prompts))
    tree = trie_tokens(prompts)
    by_classes = collections.defaultdict(list)
    for entry, prompt in zip(picked, prompts):
        by_classes[tuple(sorted(entry.involved_classes))].append(prompt)
    classes_tree = group - sum(sum(map(len, ps)) - trie_tokens(ps) for ps in by_classes.values())
    system_blocks = [min(common_prefix(ps[0], p) for p in ps[1:]) for ps in by_classes.values() if len(ps) > 1]
    held = group + samples * len(prompts) * own  # group sharing, with the samples' own tokens
    return {
        "prompts": len(prompts),
        "distinct_prompts": len({tuple(p) for p in prompts}),
        "class_sets": len(by_classes),
        "unshared": unshared,
        "group": group,
        "tree": tree,
        "classes_tree": classes_tree,
        "common_prefix_same_classes": system_blocks,
        "tree_saves_of_prompt_tokens": (group - tree) / group,
        "tree_saves_of_held_tokens": (group - tree) / held,
    }


def run(args) -> dict:
    from envtune_jax.chat.tokenizer import default_tokenizer
    from envtune_jax.cli.common import print_json
    from envtune_jax.config import ConfigError, load
    from envtune_jax.rl.curriculum import StageConfig
    from envtune_jax.rl.stage_data import draw, load_subset

    if args.batches < 1 or args.own < 0:
        raise ConfigError(f"--batches must be ≥ 1 and --own ≥ 0, got {args.batches}, {args.own}")
    stage = load(StageConfig, args.stage)
    entries = load_subset(stage.data, source="package")
    ids = prompt_ids(entries, stage, default_tokenizer())
    lengths = sorted(len(v) for v in ids.values())
    batches = [
        batch_figures(
            draw(entries, step * stage.prompts_per_step, stage.prompts_per_step, args.seed),
            ids,
            stage.samples_per_prompt,
            args.own,
        )
        for step in range(args.batches)
    ]

    def mean(key):
        return statistics.mean(b[key] for b in batches)

    blocks = [n for b in batches for n in b["common_prefix_same_classes"]]
    record = {
        "benchmark": "prompts",
        "stage": stage.name,
        "data": stage.data,
        "entries": len(entries),
        "prompts_per_step": stage.prompts_per_step,
        "samples_per_prompt": stage.samples_per_prompt,
        "own_tokens_per_sample": args.own,
        "batches": args.batches,
        "prompt_tokens": {
            "median": statistics.median(lengths),
            "p90": lengths[int(0.9 * (len(lengths) - 1))],
            "max": lengths[-1],
            "min": lengths[0],
        },
        "per_batch_mean": {
            key: mean(key)
            for key in ("prompts", "distinct_prompts", "class_sets", "unshared", "group", "tree", "classes_tree")
        },
        "group_saves_of_prompt_tokens": 1 - mean("group") / mean("unshared"),
        "tree_saves_of_prompt_tokens_beyond_group": mean("tree_saves_of_prompt_tokens"),
        "tree_saves_of_held_tokens_beyond_group": mean("tree_saves_of_held_tokens"),
        "common_prefix_same_classes": {
            "pairs_of_batches": len(blocks),
            "median": statistics.median(blocks) if blocks else 0,
            "min": min(blocks, default=0),
            "max": max(blocks, default=0),
        },
        "per_batch": [{k: v for k, v in b.items() if k != "common_prefix_same_classes"} for b in batches],
    }
    print_json(record)
    return record
