"""A model-backed evaluation policy: the official BFCL Qwen FC protocol on our generation engine.

Like the official harness, every step re-renders the whole conversation with the Qwen FC template
(tools in the system prompt, earlier steps as rendered tool calls) and generates greedily (the
harness's temperature 0.001) up to `max_new_tokens` (4096); the step's whole text goes to the
evaluation driver, which splits off the reasoning and keeps the history as the official handler does.
The live episodes' steps are generated as one batch, streamed: each engine call decodes at most
`decode_chunk` tokens of every live step; an episode whose step ended leaves
with it (its environment steps, its next prompt is prefilled, or a new episode takes its slot) while the
others answer `STEP_PENDING` and go on at the next call, so a round does not wait for its longest step.
Greedy decoding draws each token from its position alone: chunking changes no step.

Each live episode keeps an engine slot from step to step, and the slot's cache keeps the tokens it
holds (the last prompt and the generated step): a re-rendered prompt is compared token by token with
them and only what differs is prefilled (`GenerationEngine.replace_tail`), instead of the whole
conversation at every step. The evaluation driver keeps at most `max_live_episodes` (the engine's
slots) in play, so every live episode has a slot; with more live episodes than slots they evict each
other and each step prefills in full, as before. Cached keys and values belong to the weights that
computed them: after changing the model's weights, call `forget()`.
"""
from __future__ import annotations

import dataclasses
import sys
from typing import Any, Sequence

import numpy as np

from environments.policies import STEP_PENDING, PolicyState, PolicyStep, StepPending
from envtune_jax.chat.render import render_messages
from envtune_jax.chat.tokenizer import encode_text, stop_token_ids
from models.generation.sampling import SamplingParams


@dataclasses.dataclass
class _StepInProgress:
    """An episode's step that a decode call left unfinished: it goes on in `slot` at the next `act`."""

    slot: int
    turn: int
    step: int
    start: int  # where the step's tokens begin in the slot's cached ids


class ModelPolicy:
    name = "model"

    def __init__(self, engine, tokenizer, max_new_tokens: int = 4096, style: str = "qwen_fc", decode_chunk: int = 128):
        if decode_chunk < 0:
            raise ValueError(f"decode_chunk must be ≥ 0 (0: decode whole steps), got {decode_chunk}")
        self.engine = engine
        self.tokenizer = tokenizer
        self.style = style
        self.decode_chunk = decode_chunk
        self.sampling = SamplingParams(greedy=True, max_new_tokens=max_new_tokens, stop_token_ids=stop_token_ids(tokenizer))
        self._warned = False
        self._state = None  # the engine state, kept between steps
        self._episode_of_slot: list[str | None] = []  # per slot (sized at the first step)
        self._cached: list[list[int]] = []  # per slot: the token ids its cache holds
        self._in_progress: dict[str, _StepInProgress] = {}  # episode -> its unfinished step
        self.prefilled_tokens = 0  # tokens prefilled so far (the re-rendered prompts' differing tails)
        self.prompt_tokens = 0  # tokens of the rendered prompts so far (what a fresh prefill per step costs)
        self.decode_calls = 0
        self.slot_steps = 0  # slots x decode steps run
        self.live_slot_steps = 0  # ... of which a slot sampled a token of a live step

    def forget(self) -> None:
        """Drops every cached conversation (the next step of each episode prefills its prompt in full, and an
        unfinished step starts again)."""
        self._cached = [[] for _ in self._cached]
        self._in_progress.clear()

    @property
    def max_live_episodes(self) -> int:
        """Episodes the evaluation driver keeps in play at once: one per engine slot."""
        return self.engine.batch_size

    @property
    def slot_occupancy(self) -> float:
        """Share of the decode steps' slots that sampled a token of a live step."""
        return self.live_slot_steps / self.slot_steps if self.slot_steps else 0.0

    def prompt_ids(self, state: PolicyState) -> list[int]:
        return encode_text(self.tokenizer, render_messages(state.messages, state.tools, self.style, True))

    def act(self, states: Sequence[PolicyState]) -> list[PolicyStep | StepPending | None]:
        if not states:
            return []
        if not self._cached:
            self._episode_of_slot = [None] * self.engine.batch_size
            self._cached = [[] for _ in range(self.engine.batch_size)]
        # Streaming: each call decodes ≤ decode_chunk tokens; an unfinished step answers STEP_PENDING and goes
        # on in its slot next time, while episodes whose step ended step their environments and rejoin. Needs
        # every episode in a slot, and compacted rows (else each rejoining tail costs an extend of all B rows).
        streaming = self.decode_chunk > 0 and self.engine.compacts_rows and len(states) <= self.engine.batch_size
        if not streaming:  # whole steps, groups of B; an unfinished step starts again (greedy: the same tokens)
            self._in_progress.clear()
        limit = self.engine.max_cache_len - 1
        steps: list[PolicyStep | StepPending | None] = [None] * len(states)
        work: list[tuple[int, PolicyState, list[int] | None]] = []  # (index, state, prompt; None: goes on)
        for k, state in enumerate(states):
            progress = self._in_progress.get(state.episode_id)
            if progress is not None and (progress.turn, progress.step) == (state.turn, state.step):
                work.append((k, state, None))
                continue
            self._in_progress.pop(state.episode_id, None)
            prompt = self.prompt_ids(state)
            if len(prompt) > limit:  # the conversation outgrew the context: the episode stops (a force-quit)
                self._warn_too_long()
                continue
            work.append((k, state, prompt))
        max_steps = self.decode_chunk if streaming else None
        for first in range(0, len(work), self.engine.batch_size):
            group = work[first:first + self.engine.batch_size]
            generated = self._generate([(state, prompt) for _, state, prompt in group], max_steps)
            for (k, _, _), ids in zip(group, generated):
                steps[k] = STEP_PENDING if ids is None else self._policy_step(ids)
        return steps

    def _warn_too_long(self) -> None:
        if not self._warned:
            self._warned = True
            print(f"warning: a conversation outgrew the {self.engine.max_cache_len}-token context "
                  f"(max_cache_len, capped by the model's max_position_embeddings); it counts as a force-quit",
                  file=sys.stderr)

    def _policy_step(self, ids: list[int]) -> PolicyStep:
        # The official harness reads the server's completion text, which leaves out special tokens (vLLM's
        # default skip_special_tokens); <tool_call> and <think> are not special and stay.
        ids = [t for t in ids if t not in self.sampling.stop_token_ids]
        return PolicyStep(self.tokenizer.decode(ids, skip_special_tokens=True))

    def _generate(self, group: list[tuple[PolicyState, list[int] | None]], max_steps: int | None) -> list[list[int] | None]:
        """Decodes ≤ max_steps tokens (None: to the end) of the step of each of ≤ batch_size episodes: a new step
        (state, prompt ids) or one in progress (state, None). Per episode, the step's ids, or None if unfinished."""
        wanted = {state.episode_id for state, _ in group}
        slot_of = {episode: s for s, episode in enumerate(self._episode_of_slot) if episode in wanted}
        free = iter(s for s, episode in enumerate(self._episode_of_slot) if episode not in wanted)
        tails = {}
        for state, prompt in group:
            if prompt is None:  # its step goes on where the last call left it
                continue
            slot = slot_of.get(state.episode_id)
            if slot is None:  # a new episode (or one evicted): a slot whose episode is not in this step
                slot = slot_of[state.episode_id] = next(free)
                self._in_progress.pop(self._episode_of_slot[slot], None)
                self._episode_of_slot[slot], self._cached[slot] = state.episode_id, []
            keep = min(_common_prefix(self._cached[slot], prompt), len(prompt) - 1)
            tails[slot] = (keep, prompt[keep:])
            self.prefilled_tokens += len(prompt) - keep
            self.prompt_tokens += len(prompt)
            self._cached[slot] = list(prompt)
            self._in_progress[state.episode_id] = _StepInProgress(slot, state.turn, state.step, len(prompt))
        if self._state is None:
            self._state = self.engine.new_state(max(len(p) for _, p in group if p is not None))
        if tails:
            self._state = self.engine.replace_tail(self._state, tails)
        active = sorted(slot_of.values())
        self._state, result = self.engine.decode(self._state, self.sampling, active=active, max_steps=max_steps)
        counts = result.num_tokens[active]
        self.decode_calls += 1
        self.slot_steps += self.engine.batch_size * int(counts.max(initial=0))
        self.live_slot_steps += int(counts.sum())
        out: list[list[int] | None] = []
        for state, _ in group:
            slot = slot_of[state.episode_id]
            self._cached[slot] += result.tokens[slot, :result.num_tokens[slot]].tolist()  # the stop token too
            if not result.finished[slot]:
                out.append(None)
                continue
            out.append(self._cached[slot][self._in_progress.pop(state.episode_id).start:])
        return out


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two id sequences."""
    n = min(len(a), len(b))
    mismatch = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(mismatch[0]) if mismatch.size else n


def build_model_policy(*, ckpt: str | None = None, hf_dir: str | None = None, batch_size: int = 16,
                       max_cache_len: int = 32768, max_new_tokens: int = 4096, dtype: str | None = None,
                       mesh_spec: str | None = None, attention_impl: str = "reference",
                       decode_attention: str = "reference", decode_chunk: int = 128, **_: Any) -> ModelPolicy:
    """Loads the model (HF dir or envtune checkpoint) and wraps it in a ModelPolicy.

    attention_impl serves prompt and tool-response chunks of ≥ 64 tokens (`cudnn` on GPU keeps long
    contexts from materialising [B, N, T, S] scores); decode_attention the one-token steps; decode_chunk the
    tokens per engine call of a streamed step (0: whole steps)."""
    from envtune_jax.cli.common import parse_mesh
    from models.generation.engine import GenerationEngine
    from rl.model_loader import load_model

    mesh = parse_mesh(mesh_spec)
    if hf_dir is None and ckpt is None:
        raise ValueError("build_model_policy needs ckpt or hf_dir")
    loaded = load_model(use="inference", hf=hf_dir, ckpt=ckpt, param_dtype=dtype, mesh=mesh,
                        attention_impl=attention_impl, decode_attention=decode_attention)
    model, tokenizer = loaded.model, loaded.tokenizer
    max_cache_len = min(max_cache_len, model.config.max_position_embeddings)
    engine = GenerationEngine(model, batch_size=batch_size, max_cache_len=max_cache_len, mesh=mesh)
    return ModelPolicy(engine, tokenizer, max_new_tokens=max_new_tokens, decode_chunk=decode_chunk)
