"""The two paths an assistant text takes through the project, driven with given texts instead of a model.

Training (as `envtune_jax.rl.rollout` steps an episode): the text's tokens are appended as sampled (cut at a stop
token, as the sampler stops there), the chat parser reads them back, the environment steps (hints,
rewards), and its reply is rendered and appended as tokens.
Evaluation (as `envtune_jax.environments.evaluation.run_episodes` with the model policy): the official decoding rule,
the environment step, the official history message, and before every step the whole conversation
re-rendered in the official format and tokenized, as the model policy does.
Also: the official verdict of a recording (QwenFCHandler.decode_execute + multi_turn_checker), for
texts whose call names and argument keys are safe to hand to the official executor's eval.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Sequence

from envtune_jax.chat.chat_config import ChatConfig
from envtune_jax.chat.conversation import TokenConversation
from envtune_jax.chat.render import render_messages
from envtune_jax.chat.special_tokens import STOP_TOKEN_IDS
from envtune_jax.chat.tokenizer import default_tokenizer, encode_text
from envtune_jax.environments.base import StepResult, ToolEnvironment
from envtune_jax.environments.evaluation import EpisodeRecord, run_episodes
from envtune_jax.environments.policies import PolicyStep
from envtune_jax.rl.rollout import read_last_step


def sampled_ids(text: str) -> list[int]:
    """The ids a sampler would have produced for `text`: cut after the first stop token, else closed by one."""
    ids = encode_text(default_tokenizer(), text)
    for position, token in enumerate(ids):
        if token in STOP_TOKEN_IDS:
            return ids[: position + 1]
    return ids + [STOP_TOKEN_IDS[0]]


def play_training(env: ToolEnvironment, turns: Sequence[Sequence[str]]) -> tuple[list[StepResult], TokenConversation]:
    """Plays `turns` (per turn, the step texts; an empty text ends a turn) through the training path."""
    conversation = TokenConversation(default_tokenizer(), ChatConfig())
    conversation.start(env.reset(), env.tools())
    results = []
    for texts in turns:
        for text in [*texts, ""]:
            conversation.append_sampled(sampled_ids(text))
            calls, errors, parsed_text = read_last_step(env, conversation)
            result = env.step(parsed_text, calls, errors)
            results.append(result)
            if env.done:
                return results, conversation
            conversation.append_environment(result.messages)
            if result.turn_ended:
                break
    return results, conversation


class ScriptedModelPolicy:
    """Plays recorded step texts, rendering and tokenizing each prompt as the model policy does first."""

    name = "scripted-model"

    def __init__(self, recorded: dict[str, Sequence[Sequence[str]]]):
        self.recorded = recorded
        self.prompt_tokens: list[int] = []

    def act(self, states):
        steps = []
        for state in states:
            ids = encode_text(default_tokenizer(), render_messages(state.messages, state.tools, "qwen_fc", True))
            self.prompt_tokens.append(len(ids))
            turns = self.recorded[state.episode_id]
            turn = turns[state.turn] if state.turn < len(turns) else []
            steps.append(PolicyStep(turn[state.step] if state.step < len(turn) else ""))
        return steps


def play_evaluation(
    envs: Sequence[ToolEnvironment], recorded: dict[str, Sequence[Sequence[str]]]
) -> list[EpisodeRecord]:
    """Plays the recordings through the evaluation loop (conversation kept, re-rendered, tokenized)."""
    return run_episodes(list(envs), ScriptedModelPolicy(recorded), keep_history=True)


_official_runs = itertools.count()


def official_verdict(entry, recording: Sequence[Sequence[str]]) -> bool:
    """The official pipeline's verdict on a recording (per turn, the step texts as played)."""
    from bfcl_eval.eval_checker.multi_turn_eval.multi_turn_checker import multi_turn_checker
    from bfcl_eval.eval_checker.multi_turn_eval.multi_turn_utils import is_empty_execute_response
    from bfcl_eval.model_handler.local_inference.qwen_fc import QwenFCHandler

    handler = object.__new__(QwenFCHandler)  # decode_execute needs no handler state
    if len(recording) != len(entry.ground_truth):
        return False
    decoded = []
    for turn in recording:
        steps = []
        for text in turn:
            try:
                calls = handler.decode_execute(text, has_tool_call_tag=False)
            except Exception:
                continue
            if not is_empty_execute_response(calls):
                steps.append(calls)
        decoded.append(steps)
    result = multi_turn_checker(
        decoded, entry.ground_truth, dataclasses.asdict(entry), entry.category, f"untrusted{next(_official_runs)}"
    )
    return result["valid"]


def official_results(entry, call_sources: Sequence[str]) -> list[str]:
    """The official executor's result strings for trusted call strings, on fresh instances of `entry`."""
    from bfcl_eval.eval_checker.multi_turn_eval.multi_turn_utils import execute_multi_turn_func_call

    results, _ = execute_multi_turn_func_call(
        list(call_sources),
        entry.initial_config,
        entry.involved_classes,
        f"untrusted{next(_official_runs)}",
        entry.id,
        long_context=entry.long_context,
    )
    return results
