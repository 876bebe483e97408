"""KV bytes one decode step reads, counted from the cache layout an engine ran with (`envtune bench generate`).

Averaged over a run of N decode steps after a P-token prompt, each of the B slots holds P + N/2 tokens.
- Without sharing every slot holds its whole sequence: live tokens B·(P + N/2); allocated cache slots B·S
  (S: the cache capacity the run ended with).
- With a shared prompt per group of G slots (prefix regions): the prompt once per group, then each slot's
  own tokens: live (B/G)·P + B·N/2; allocated R·P_cap + B·S_own (R regions of P_cap slots, own caches
  of S_own).
Which of the two a step reads depends on the decode attention: the einsum ("reference") reads the cache as
allocated, whole; JAX's Pallas kernel ("pallas") stops at each row's length, so it reads the live tokens
(rounded up to its blocks). The live count is what the device limit of a step is computed from.
"""

from __future__ import annotations

import dataclasses

from envtune_jax.bench.prefix_accounting import kv_bytes_per_token


@dataclasses.dataclass(frozen=True)
class CacheLayout:
    """The capacities a run's cache ended with: S per slot, and with shared prompts R regions of P_cap."""

    slot_capacity: int  # S (own tokens only, with shared prompts)
    regions: int = 0  # R (0: no shared prompts)
    region_capacity: int = 0  # P_cap


def decode_reads(
    config,
    cache_bytes: int,
    batch: int,
    prompt_len: int,
    new_tokens: int,
    group: int | None,
    layout: CacheLayout,
    decode_attention: str,
) -> dict:
    """The counts of the module docstring for one run; `group`: G, or None without shared prompts."""
    per_token = kv_bytes_per_token(config, cache_bytes)
    own = new_tokens / 2
    if group is None:
        live = batch * (prompt_len + own)
        allocated = batch * layout.slot_capacity
    else:
        live = (batch // group) * prompt_len + batch * own
        allocated = layout.regions * layout.region_capacity + batch * layout.slot_capacity
    read = live if decode_attention == "pallas" else allocated
    return {
        "kv_bytes_per_token": per_token,
        "live_tokens_per_step": live,
        "allocated_tokens": allocated,
        "kv_bytes_live_per_step": live * per_token,
        "kv_bytes_allocated": allocated * per_token,
        "kv_bytes_read_per_step": read * per_token,
    }
