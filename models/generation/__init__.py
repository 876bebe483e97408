"""Sharded, jit-compiled generation for Qwen3: prefill, multi-turn extend, while-loop decode, sampling.

    engine = GenerationEngine(model, batch_size=8, max_cache_len=4096, mesh=mesh)
    state = engine.start(prompt_token_lists, rng=0)
    state, result = engine.decode(state, SamplingParams(temperature=1.0, max_new_tokens=512))
    state = engine.extend(state, {0: tool_response_tokens})      # next turn, no re-prefill
    state, result = engine.decode(state, params, active=[0])
    record = engine.history(state)     # tokens, sampler log-probs, sampled mask, lengths

See docs/generation.md for the design.
"""
from models.generation.buckets import BucketConfig, BucketError
from models.generation.config import SamplerConfig
from models.generation.engine import GenerationEngine
from models.generation.requests import CacheFullError, GenerationInputError
from models.generation.reference import reference_greedy, reference_logprobs
from models.generation.results import DecodeResult, History
from models.generation.sampling import QWEN3_STOP_TOKEN_IDS, SamplingParams, filtered_probs_reference, sample_tokens
from models.generation.state import GenerationState

__all__ = [
    "BucketConfig", "BucketError", "CacheFullError", "DecodeResult", "GenerationEngine", "GenerationInputError",
    "GenerationState", "History", "QWEN3_STOP_TOKEN_IDS", "SamplerConfig", "SamplingParams",
    "filtered_probs_reference", "reference_greedy", "reference_logprobs", "sample_tokens",
]
