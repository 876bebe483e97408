"""`SharedPrefixConfig`: how the engine holds each GRPO group's prompt once (see prefix_engine.py).

Kept apart from the engine so that a recipe's `sampler:` section is read and checked without JAX.
"""

from __future__ import annotations

import dataclasses

from envtune_jax.models.config import PREFIX_ATTENTION


@dataclasses.dataclass(frozen=True)
class SharedPrefixConfig:
    lanes: int = 16  # M: slots per region (a GRPO group's samples: G)
    regions: int = 0  # R; 0: 2·ceil(B / M), so a new group's prompt finds a region while older groups finish
    attention: str = "two_level"  # one of PREFIX_ATTENTION

    def __post_init__(self):
        if self.lanes < 1 or self.regions < 0:
            raise ValueError(f"shared prefix needs lanes ≥ 1 and regions ≥ 0, got {self.lanes}, {self.regions}")
        if self.attention not in PREFIX_ATTENTION:
            raise ValueError(f"unknown prefix attention '{self.attention}'; choose from {PREFIX_ATTENTION}")

    def num_regions(self, batch: int) -> int:
        return self.regions or 2 * -(-batch // self.lanes)
