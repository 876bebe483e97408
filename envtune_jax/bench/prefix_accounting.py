"""Counted costs of a GRPO group with and without a shared prompt: KV bytes, decode batch, train tokens/FLOPs.

Shapes of one group: a prompt of P tokens, G samples, each with its own tokens (model + environment).
Without sharing every sample holds and reads [prompt; own]; with sharing the prompt is held and read
once per group (prefix region) and each sample holds and reads only its own tokens.
- KV bytes per token: 2 (keys, values) x layers x kv heads x head_dim x bytes per value
  (Qwen3-4B in bf16: 36 x 2 x 8 x 128 x 2 = 147,456 B).
- Decode step of a group: bytes of KV read. `live` counts the filled tokens (what the Pallas decode
  kernel reads: it stops at each sequence's length); `capacity` counts the allocated slots (what the
  einsum path reads: the whole cache as laid out).
- Largest decode batch: weights + KV of the slots (and of one region per G slots) ≤ usable memory.
- Train step of a group: tokens through the transformer, and FLOPs = 6 x layer params x tokens (weights'
  matmuls, forward + backward) + 12 x layers x q heads x head_dim x query-key pairs (attention:
  QK^T and PV, 2 FLOPs per multiply-add each, backward twice the forward) + 6 x vocab x hidden x sampled
  tokens (the output layer, only where a token was sampled; equal in both layouts). Pairs are those the
  mask keeps (causal: a sequence of n has n(n+1)/2): what a kernel that skips masked blocks computes.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class GroupShape:
    prompt: int  # P
    samples: int  # G
    own: int  # own tokens per sample (model + environment), as stated by the caller

    def tokens(self, shared: bool) -> int:
        """Tokens held / computed for the group."""
        return self.prompt + self.samples * self.own if shared else self.samples * (self.prompt + self.own)


def kv_bytes_per_token(config, cache_bytes: int = 2) -> int:
    return 2 * config.num_layers * config.num_kv_heads * config.head_dim * cache_bytes


def decode_step_kv_bytes(group: GroupShape, kv_per_token: int, shared: bool) -> int:
    """KV bytes one decode step of the group reads (every sample live, `own` tokens each so far)."""
    return group.tokens(shared) * kv_per_token


def group_kv_bytes(group: GroupShape, kv_per_token: int, shared: bool) -> int:
    """KV bytes the group holds with `own` = each sample's own-token capacity."""
    return group.tokens(shared) * kv_per_token


def largest_decode_batch(
    group: GroupShape,
    kv_per_token: int,
    weight_bytes: int,
    memory_bytes: float,
    shared: bool,
    whole_groups: bool = True,
    reserved_bytes: float = 0,
) -> int:
    """Most slots whose weights + KV fit in memory_bytes - reserved_bytes: slots of P + own tokens each, or
    (shared) slots of `own` tokens plus one prompt region per G slots (whole groups only when `whole_groups`)."""
    room = memory_bytes - weight_bytes - reserved_bytes
    if room <= 0:
        return 0
    if not shared:
        return int(room // ((group.prompt + group.own) * kv_per_token))
    groups = int(room // (group.tokens(True) * kv_per_token))
    if whole_groups:
        return groups * group.samples
    left = room - groups * group.tokens(True) * kv_per_token - group.prompt * kv_per_token
    return groups * group.samples + max(0, int(left // (group.own * kv_per_token)))


def attention_pairs(group: GroupShape, shared: bool) -> int:
    """Query-key pairs the causal / shared-prefix mask keeps for the group."""
    causal = lambda n: n * (n + 1) // 2  # noqa: E731
    if not shared:
        return group.samples * causal(group.prompt + group.own)
    return causal(group.prompt) + group.samples * (group.own * group.prompt + causal(group.own))


def train_flops(group: GroupShape, config, sampled_per_sample: int, shared: bool) -> dict:
    """FLOPs of one forward + backward over the group (see the module docstring), by part and in total."""
    weights = 6 * config.layer_params * group.tokens(shared)
    attention = 12 * config.num_layers * config.num_heads * config.head_dim * attention_pairs(group, shared)
    output = 6 * config.vocab_size * config.hidden_size * group.samples * sampled_per_sample
    return {"weights": weights, "attention": attention, "output_layer": output, "total": weights + attention + output}


def ratio(unshared: float, shared: float) -> float:
    """What sharing saves: unshared / shared (for a cost; for a capacity such as a batch, pass them swapped)."""
    return unshared / shared if shared else float("inf")
