"""A model as an evaluation player: the official BFCL Qwen FC protocol on the episode runner.

Like the official harness, every step re-renders the whole conversation with the Qwen FC template (tools in
the system prompt, earlier steps as the official harness keeps them) and generates greedily (the harness's
temperature 0.001) up to `max_new_tokens` (4096); the step's whole text goes back to the evaluation's
episodes (`envtune_jax.environments.evaluation.EvaluationEpisodes`), which keep the history as the official handler
does.

This module is the re-render protocol of the episode runner (rl/episode_runner.py): each request is the
official prompt, rendered and tokenized afresh from the kept conversation. The runner plays the live
episodes' steps as one batch over the engine's slots, streamed (at most `decode_chunk` tokens of every live
step per engine call; an episode whose step ended steps its environment while the others go on), keeps each
episode in its slot, and compares each rendered prompt with what the slot's cache holds: only the differing
tail is prefilled (`replace_tail`). Greedy tokens depend on their position alone, so neither chunking nor
kept caches change a step. Each evaluation starts from an empty engine state: cached keys and values never
outlive the weights that computed them.
"""

from __future__ import annotations

import sys
from typing import Callable

from envtune_jax.chat.render import render_messages
from envtune_jax.chat.tokenizer import encode_text, stop_token_ids
from envtune_jax.environments.evaluation import EvaluationEpisodes
from envtune_jax.environments.policies import PolicyStep
from envtune_jax.models.generation.sampling import SamplingParams
from envtune_jax.rl.episode_runner import EpisodeRunner, RunnerStats, SamplerRow, StepRequest


class RenderedEpisodes:
    """The re-render protocol: every request is the episode's official prompt, rendered from its history."""

    def __init__(self, policy: "ModelPolicy", episodes: EvaluationEpisodes):
        self.policy, self.episodes = policy, episodes

    def begin(self, i: int) -> StepRequest | None:
        return self._prompt(i) if self.episodes.start(i) else None

    def step_ended(self, i: int, step_ids: list[int]) -> StepRequest | None:
        return self._prompt(i) if self.episodes.take(i, self.policy._policy_step(step_ids)) else None

    def finish(self, i: int, sampler_row: Callable[[], SamplerRow] | None) -> None:
        """(The episode's record was kept when it ended.)"""

    def _prompt(self, i: int) -> StepRequest | None:
        ids = self.policy.prompt_ids(self.episodes.state(i))
        if len(ids) > self.policy.engine.max_cache_len - 1:  # the conversation outgrew the context: a force-quit
            self.policy._warn_too_long()
            self.episodes.take(i, None)
            return None
        return StepRequest(ids, self.policy.sampling.max_new_tokens)


class ModelPolicy:
    """Plays evaluation episodes with a generation engine (an `envtune_jax.environments.evaluation.EpisodePlayer`).

    `reuse_cache=False` prefills every prompt in full (the plain path that kept conversations are tested
    against). `stats` (decode calls, slot occupancy, prompt and prefilled tokens) accumulates over
    evaluations."""

    name = "model"

    def __init__(
        self,
        engine,
        tokenizer,
        max_new_tokens: int = 4096,
        style: str = "qwen_fc",
        decode_chunk: int = 128,
        reuse_cache: bool = True,
    ):
        self.engine, self.tokenizer, self.style = engine, tokenizer, style
        self.decode_chunk, self.reuse_cache = decode_chunk, reuse_cache
        self.sampling = SamplingParams(
            greedy=True, max_new_tokens=max_new_tokens, stop_token_ids=stop_token_ids(tokenizer)
        )
        self.stats = RunnerStats()
        self._warned = False

    def play(self, episodes: EvaluationEpisodes) -> None:
        def on_phase(phase: str, done: int | None = None, total: int | None = None) -> None:
            if phase == "rollout" and episodes.live:  # a round has ended: where the episodes in play stand
                episodes.report()

        runner = EpisodeRunner(self.engine, self.sampling, self.decode_chunk, reuse_cache=self.reuse_cache)
        runner.run(RenderedEpisodes(self, episodes), len(episodes), stats=self.stats, on_phase=on_phase)

    def prompt_ids(self, state) -> list[int]:
        return encode_text(self.tokenizer, render_messages(state.messages, state.tools, self.style, True))

    def _warn_too_long(self) -> None:
        if not self._warned:
            self._warned = True
            print(
                f"warning: a conversation outgrew the {self.engine.max_cache_len}-token context "
                f"(max_cache_len, capped by the model's max_position_embeddings); it counts as a force-quit",
                file=sys.stderr,
            )

    def _policy_step(self, ids: list[int]) -> PolicyStep:
        # The official harness reads the server's completion text, which leaves out special tokens (vLLM's
        # default skip_special_tokens); <tool_call> and <think> are not special and stay.
        ids = [t for t in ids if t not in self.sampling.stop_token_ids]
        return PolicyStep(self.tokenizer.decode(ids, skip_special_tokens=True))


def build_model_policy(
    *,
    ckpt: str | None = None,
    hf_dir: str | None = None,
    batch_size: int = 16,
    max_cache_len: int = 32768,
    max_new_tokens: int = 4096,
    dtype: str | None = None,
    mesh=None,
    attention_impl: str = "reference",
    decode_attention: str = "reference",
    decode_chunk: int = 128,
) -> ModelPolicy:
    """Loads the model (HF dir or envtune checkpoint) and wraps it in a ModelPolicy.

    attention_impl serves prompt and tool-response chunks of ≥ 64 tokens (`cudnn` on GPU keeps long
    contexts from materialising [B, N, T, S] scores); decode_attention the one-token steps; decode_chunk the
    tokens per engine call of a streamed step (0: whole steps)."""
    from envtune_jax.models.generation.engine import GenerationEngine
    from envtune_jax.rl.model_loader import load_model

    if hf_dir is None and ckpt is None:
        raise ValueError("build_model_policy needs ckpt or hf_dir")
    loaded = load_model(
        use="inference",
        hf=hf_dir,
        ckpt=ckpt,
        param_dtype=dtype,
        mesh=mesh,
        attention_impl=attention_impl,
        decode_attention=decode_attention,
    )
    model, tokenizer = loaded.model, loaded.tokenizer
    max_cache_len = min(max_cache_len, model.config.max_position_embeddings)
    engine = GenerationEngine(model, batch_size=batch_size, max_cache_len=max_cache_len, mesh=mesh)
    return ModelPolicy(engine, tokenizer, max_new_tokens=max_new_tokens, decode_chunk=decode_chunk)
