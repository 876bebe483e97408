"""`SamplingParams`: how the sampler picks tokens (greedy, temperature, top-k, top-p, budgets, stop ids).

A plain dataclass (NumPy only), kept apart from the jit-compiled sampling functions (sampling.py) so that
settings are checked without importing JAX.
"""

from __future__ import annotations

import dataclasses

import numpy as np

# Qwen3's <|im_end|> and <|endoftext|> (ids fixed by the tokenizer; see envtune_jax.chat.special_tokens).
QWEN3_STOP_TOKEN_IDS = (151645, 151643)
MAX_STOP_TOKENS = 8  # stop ids travel as a fixed-size array so changing them never recompiles


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens. top_k = 0 and top_p = 1.0 switch those filters off.

    max_new_tokens: per turn, an int for every sequence or one int per sequence (batch slot).
    temperature also scales the reported log-probs when greedy (argmax ignores it).
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    greedy: bool = False
    max_new_tokens: int | tuple[int, ...] = 256
    stop_token_ids: tuple[int, ...] = QWEN3_STOP_TOKEN_IDS

    def __post_init__(self):
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature} (use greedy=True for argmax)")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be ≥ 0 (0 = off), got {self.top_k}")
        budgets = (self.max_new_tokens,) if isinstance(self.max_new_tokens, int) else self.max_new_tokens
        if any(int(n) < 0 for n in budgets):
            raise ValueError(f"max_new_tokens must be ≥ 0, got {self.max_new_tokens}")
        if not isinstance(self.max_new_tokens, int):
            object.__setattr__(self, "max_new_tokens", tuple(int(n) for n in self.max_new_tokens))
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))
        if len(self.stop_token_ids) > MAX_STOP_TOKENS:
            raise ValueError(f"at most {MAX_STOP_TOKENS} stop tokens, got {len(self.stop_token_ids)}")

    def static_key(self, vocab_size: int) -> tuple[bool, int, bool]:
        """What changes the compiled program: (greedy, effective top_k, top-p on)."""
        top_k = 0 if self.greedy or self.top_k >= vocab_size else self.top_k
        return self.greedy, top_k, (not self.greedy) and self.top_p < 1.0

    def budgets(self, batch_size: int) -> np.ndarray:
        """max_new_tokens as an int32 [B] array."""
        if isinstance(self.max_new_tokens, int):
            return np.full((batch_size,), self.max_new_tokens, np.int32)
        if len(self.max_new_tokens) != batch_size:
            raise ValueError(f"max_new_tokens lists {len(self.max_new_tokens)} budgets for {batch_size} slots")
        return np.asarray(self.max_new_tokens, np.int32)

    def stop_ids_array(self) -> np.ndarray:
        """Stop ids padded with -1 to [MAX_STOP_TOKENS] (int32)."""
        out = np.full((MAX_STOP_TOKENS,), -1, np.int32)
        out[: len(self.stop_token_ids)] = self.stop_token_ids
        return out
