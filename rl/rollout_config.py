"""`RolloutConfig`: the token budgets of a multi-turn rollout (the `rollout:` section of a recipe).

Kept apart from the rollout driver (rl/rollout.py) so that a recipe loads and is checked without JAX.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from envtune_jax.config import require_at_least


@dataclasses.dataclass
class RolloutConfig:
    max_prompt_tokens: int = 8192  # the rendered first prompt; longer tasks are skipped with a warning
    max_response_tokens: int = 24576  # model + environment tokens after the prompt, whole episode
    max_context_tokens: int = 32768
    max_new_tokens_per_step: int = 1024
    # decode returns after this many tokens, so that episodes whose step has ended step their environment
    # and rejoin while the others go on generating (0: each round decodes until every live step has ended)
    decode_chunk: int = 128

    FIELD_USE: ClassVar[tuple] = ()  # every field is read whatever the settings (decode_chunk: see RunConfig)

    def __post_init__(self):
        require_at_least(
            self, 1, "max_prompt_tokens", "max_response_tokens", "max_context_tokens", "max_new_tokens_per_step"
        )
        if self.decode_chunk < 0:
            raise ValueError(f"decode_chunk must be ≥ 0 (0: decode whole steps), got {self.decode_chunk}")
