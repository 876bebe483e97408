"""A model-backed evaluation policy: the official BFCL Qwen FC protocol on our generation engine.

Like the official harness, every step re-renders the whole conversation with the Qwen FC template
(tools in the system prompt, earlier steps as rendered tool calls) and generates greedily (the
harness's temperature 0.001) up to `max_new_tokens` (4096); reasoning before </think> is split off
as the official handler does. All live episodes of a step are generated as one batch.

Each live episode keeps an engine slot from step to step, and the slot's cache keeps the tokens it
holds (the last prompt and the generated step): a re-rendered prompt is compared token by token with
them and only what differs is prefilled (`GenerationEngine.replace_tail`), instead of the whole
conversation at every step. The evaluation driver keeps at most `max_live_episodes` (the engine's
slots) in play, so every live episode has a slot; with more live episodes than slots they evict each
other and each step prefills in full, as before. Cached keys and values belong to the weights that
computed them: after changing the model's weights, call `forget()`.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

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
        self._state = None  # the engine state, kept between steps
        self._episode_of_slot: list[str | None] = []  # per slot (sized at the first step)
        self._cached: list[list[int]] = []  # per slot: the token ids its cache holds
        self.prefilled_tokens = 0  # tokens prefilled so far (the re-rendered prompts' differing tails)
        self.prompt_tokens = 0  # tokens of the rendered prompts so far (what a fresh prefill per step costs)

    def forget(self) -> None:
        """Drops every cached conversation (the next step of each episode prefills its prompt in full)."""
        self._cached = [[] for _ in self._cached]

    @property
    def max_live_episodes(self) -> int:
        """Episodes the evaluation driver keeps in play at once: one per engine slot."""
        return self.engine.batch_size

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
        runnable = [(state.episode_id, p) for state, p, long in zip(states, prompts, too_long) if not long]
        generated: list[list[int]] = []
        for first in range(0, len(runnable), self.engine.batch_size):
            generated += self._generate(runnable[first:first + self.engine.batch_size])
        steps: list[PolicyStep | None] = []
        row = 0
        for long in too_long:
            if long:  # the conversation outgrew the context: the episode stops (scored as a force-quit)
                steps.append(None)
                continue
            ids = [t for t in generated[row] if t not in self.sampling.stop_token_ids]
            row += 1
            reasoning, visible = split_reasoning(self.tokenizer.decode(ids, skip_special_tokens=False))
            steps.append(PolicyStep(visible, reasoning))
        return steps

    def _generate(self, group: list[tuple[str, list[int]]]) -> list[list[int]]:
        """One greedy step for ≤ batch_size (episode id, prompt ids); the generated ids of each, in order."""
        if not self._cached:
            self._episode_of_slot = [None] * self.engine.batch_size
            self._cached = [[] for _ in range(self.engine.batch_size)]
        wanted = {episode for episode, _ in group}
        slot_of = {episode: s for s, episode in enumerate(self._episode_of_slot) if episode in wanted}
        free = iter(s for s, episode in enumerate(self._episode_of_slot) if episode not in wanted)
        tails = {}
        for episode, prompt in group:
            slot = slot_of.get(episode)
            if slot is None:  # a new episode (or one evicted): a slot whose episode is not in this step
                slot = slot_of[episode] = next(free)
                self._episode_of_slot[slot], self._cached[slot] = episode, []
            keep = min(_common_prefix(self._cached[slot], prompt), len(prompt) - 1)
            tails[slot] = (keep, prompt[keep:])
            self.prefilled_tokens += len(prompt) - keep
            self.prompt_tokens += len(prompt)
        if self._state is None:
            self._state = self.engine.new_state(max(len(p) for _, p in group))
        self._state = self.engine.replace_tail(self._state, tails)
        self._state, result = self.engine.decode(self._state, self.sampling, active=sorted(tails))
        out = []
        for episode, prompt in group:
            slot = slot_of[episode]
            new = result.tokens[slot, :result.num_tokens[slot]].tolist()
            self._cached[slot] = list(prompt) + new  # every sampled token, the stop token too, is in the cache
            out.append(new)
        return out


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two id sequences."""
    n = min(len(a), len(b))
    mismatch = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(mismatch[0]) if mismatch.size else n


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
