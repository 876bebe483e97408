"""`SamplerConfig`: the YAML-loadable settings of the sampler (engine shape + sampling parameters).

Load with `envtune_jax.config.load(SamplerConfig, path, overrides)`; `sampling_params()` and
`build_engine(model, mesh)` turn it into the objects the engine takes.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from envtune_jax.config import ConfigError, ReadOnlyWhen, check_field_use, require_at_least
from envtune_jax.models.generation.buckets import BucketConfig
from envtune_jax.models.generation.prefix_config import SharedPrefixConfig
from envtune_jax.models.generation.sampling_params import QWEN3_STOP_TOKEN_IDS, SamplingParams


@dataclasses.dataclass
class SamplerConfig:
    # sampling (the paper's rollouts: temperature 1.0, top-p 1; validation greedy)
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    greedy: bool = False
    max_new_tokens: int = 1024  # per assistant turn
    stop_token_ids: tuple[int, ...] = QWEN3_STOP_TOKEN_IDS
    # engine
    batch_size: int = 8
    max_cache_len: int = 8192
    cache_dtype: str = "bfloat16"
    min_cache_len: int = 64
    min_chunk_len: int = 16
    prefill_chunk: int = 512
    cache_half_steps: bool = True
    compact_rows: bool = True  # extends of a few slots run on those rows only (extend_plan.py)
    # each distinct prompt held once in a prefix region that its slots attend to (prefix_engine.py)
    shared_prefix: bool = False
    prefix_lanes: int = 16  # slots per region: the samples per prompt (G)
    prefix_regions: int = 0  # 0: 2 x ceil(batch_size / prefix_lanes)
    prefix_attention: str = "two_level"  # or "reference" (the plain concatenated einsum)

    FIELD_USE: ClassVar[tuple[ReadOnlyWhen, ...]] = (
        ReadOnlyWhen("top_k", "greedy decoding takes the argmax", lambda c: not c.greedy),
        ReadOnlyWhen("top_p", "greedy decoding takes the argmax", lambda c: not c.greedy),
        *(
            ReadOnlyWhen(name, "prompts are held per slot (shared_prefix is off)", lambda c: c.shared_prefix)
            for name in ("prefix_lanes", "prefix_regions", "prefix_attention")
        ),
    )

    def __post_init__(self) -> None:
        require_at_least(self, 1, "batch_size", "max_cache_len")
        if self.cache_dtype not in ("bfloat16", "float32"):
            raise ValueError(f"cache_dtype must be bfloat16 or float32, got {self.cache_dtype!r}")
        self.sampling_params()  # each raises ValueError naming the bad setting
        self.buckets()
        self.prefix_config()
        check_field_use(self)

    def sampling_params(self) -> SamplingParams:
        return SamplingParams(
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            greedy=self.greedy,
            max_new_tokens=self.max_new_tokens,
            stop_token_ids=tuple(self.stop_token_ids),
        )

    def buckets(self) -> BucketConfig:
        return BucketConfig(
            self.min_cache_len, self.min_chunk_len, self.prefill_chunk, self.cache_half_steps, self.compact_rows
        )

    def prefix_config(self):
        """The engine's SharedPrefixConfig, or None when shared prefixes are off."""
        if not self.shared_prefix:
            return None
        try:
            return SharedPrefixConfig(self.prefix_lanes, self.prefix_regions, self.prefix_attention)
        except ValueError as exc:
            raise ConfigError(f"sampler: {exc}") from exc

    def build_engine(self, model, mesh=None, weight_rules=None):
        from envtune_jax.models.generation.engine import GenerationEngine

        return GenerationEngine(
            model,
            batch_size=self.batch_size,
            max_cache_len=self.max_cache_len,
            mesh=mesh,
            cache_dtype=self.cache_dtype,
            buckets=self.buckets(),
            weight_rules=weight_rules,
            shared_prefix=self.prefix_config(),
        )
