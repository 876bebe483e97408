"""A model-backed evaluation policy: the official BFCL Qwen FC protocol on our generation engine.

Like the official harness, every step re-renders the whole conversation with the Qwen FC template
(tools in the system prompt, earlier steps as rendered tool calls) and generates greedily (the
harness's temperature 0.001) up to `max_new_tokens` (4096); reasoning before </think> is split off
as the official handler does. All live episodes of a step are generated as one batch.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Sequence

from environments.policies import PolicyState, PolicyStep
from environments.protocol import split_reasoning
from envtune_jax.chat.render import render_messages
from envtune_jax.chat.tokenizer import encode_text, stop_token_ids
from models.generation.sampling import SamplingParams


class ModelPolicy:
    name = "model"

    def __init__(self, engine, tokenizer, max_new_tokens: int = 4096, style: str = "qwen_fc"):
        self.engine = engine
        self.tokenizer = tokenizer
        self.style = style
        self.sampling = SamplingParams(greedy=True, max_new_tokens=max_new_tokens, stop_token_ids=stop_token_ids(tokenizer))
        self._warned = False

    def prompt_ids(self, state: PolicyState) -> list[int]:
        return encode_text(self.tokenizer, render_messages(state.messages, state.tools, self.style, True))

    def act(self, states: Sequence[PolicyState]) -> list[PolicyStep | None]:
        if not states:
            return []
        prompts = [self.prompt_ids(state) for state in states]
        limit = self.engine.max_cache_len - 1
        too_long = [len(p) > limit for p in prompts]
        if any(too_long) and not self._warned:
            self._warned = True
            print(f"warning: a conversation outgrew the {self.engine.max_cache_len}-token context "
                  f"(max_cache_len, capped by the model's max_position_embeddings); it counts as a force-quit",
                  file=sys.stderr)
        runnable = [p for p, long in zip(prompts, too_long) if not long]
        result = self.engine.generate(runnable, self.sampling) if runnable else None
        steps: list[PolicyStep | None] = []
        row = 0
        for long in too_long:
            if long:  # the conversation outgrew the context: the episode stops (scored as a force-quit)
                steps.append(None)
                continue
            ids = [t for t in result.tokens[row, :result.num_tokens[row]].tolist() if t not in self.sampling.stop_token_ids]
            row += 1
            reasoning, visible = split_reasoning(self.tokenizer.decode(ids, skip_special_tokens=False))
            steps.append(PolicyStep(visible, reasoning))
        return steps


def build_model_policy(*, ckpt: str | None = None, hf_dir: str | None = None, batch_size: int = 16,
                       max_cache_len: int = 32768, max_new_tokens: int = 4096, dtype: str | None = None,
                       mesh_spec: str | None = None, attention_impl: str = "reference",
                       decode_attention: str = "reference", **_: Any) -> ModelPolicy:
    """Loads the model (HF dir or envtune checkpoint) and wraps it in a ModelPolicy.

    attention_impl serves prompt and tool-response chunks of ≥ 64 tokens (`cudnn` on GPU keeps long
    contexts from materialising [B, N, T, S] scores); decode_attention the one-token steps."""
    from envtune_jax import checkpointing, hf_io
    from envtune_jax.chat.tokenizer import check_tokenizer_fits_model, default_tokenizer, load_tokenizer
    from envtune_jax.cli.common import parse_mesh
    from models.generation.engine import GenerationEngine

    mesh = parse_mesh(mesh_spec)
    if hf_dir is not None:
        model = hf_io.load_pretrained(hf_dir, dtype=dtype or "bfloat16", mesh=mesh, attention_impl=attention_impl,
                                      decode_attention=decode_attention)
        tokenizer_dir = hf_dir
    elif ckpt is not None:
        model = checkpointing.load_model(ckpt, mesh=mesh, dtype=dtype, attention_impl=attention_impl,
                                         decode_attention=decode_attention)
        tokenizer_dir = checkpointing.tokenizer_dir(ckpt)
    else:
        raise ValueError("build_model_policy needs ckpt or hf_dir")
    has_tokenizer = tokenizer_dir is not None and (Path(tokenizer_dir) / "tokenizer.json").is_file()
    if not has_tokenizer:
        print(f"note: no tokenizer.json with the model; using the embedded Qwen3 tokenizer", file=sys.stderr)
    tokenizer = load_tokenizer(tokenizer_dir) if has_tokenizer else default_tokenizer()
    check_tokenizer_fits_model(tokenizer, model.config.vocab_size)
    max_cache_len = min(max_cache_len, model.config.max_position_embeddings)
    engine = GenerationEngine(model, batch_size=batch_size, max_cache_len=max_cache_len, mesh=mesh)
    return ModelPolicy(engine, tokenizer, max_new_tokens=max_new_tokens)
