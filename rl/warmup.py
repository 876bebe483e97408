"""Supervised warm-up before GRPO on the synthetic task: a stand-in for pretraining that gives a tiny
random model the call format and a *weak* preference for the requested call.

A randomly initialised model almost never writes a parseable call, so GRPO would see only zero rewards.
The warm-up trains on demonstrations that are only partly right: each turn calls the requested device
(with probability `device_accuracy`) but with a uniformly random value of it (the requested value only
with probability `value_accuracy`), then an empty reply. The model learns the format, to read which
device the user names, and nothing about which value to pick: with 4 values per device its first GRPO
rollouts are right on about a quarter of the turns, like a pretrained model that knows the tools but
not the task. GRPO has to learn the rest: read the requested value. (Demonstrations that never name
the requested device teach no dependence on the request at all; a tiny random model then has to
discover attention to the request from a one-bit reward and instead collapses onto one call, see the
README.)

Every demonstration is stepped through a real episode, so it follows the protocol exactly.
"""
from __future__ import annotations

import random
from typing import Callable, Sequence

import numpy as np

from environments.synthetic import SyntheticEpisode, parse_compact_calls
from envtune_jax.chat.chat_config import ChatConfig
from envtune_jax.chat.conversation import TokenConversation
from envtune_jax.chat.special_tokens import IM_END_ID
from envtune_jax.chat.tokenizer import encode_text
from rl.batch import TrainBatch, pack_batch


def demonstration(episode: SyntheticEpisode, tokenizer, chat: ChatConfig,
                  call_for_turn: Callable[[int], str]) -> TokenConversation:
    """The episode played with one call per turn (`call_for_turn(turn)`), each followed by an empty reply
    (a call text of "" is a reply without a call, which ends the turn by itself)."""
    names = sorted(episode.offered_tool_names())
    conversation = TokenConversation(tokenizer, chat)
    conversation.start(episode.reset(), episode.tools())
    turn = 0
    while not episode.done:
        call_text = call_for_turn(turn)
        for text in ((call_text, "") if call_text else ("",)):
            conversation.append_sampled(encode_text(tokenizer, text) + [IM_END_ID])
            result = episode.step(text, *parse_compact_calls(text, names))
            if episode.done:
                break
            conversation.append_environment(result.messages)
        turn += 1
    return conversation


def weak_prior_demos(episodes: Sequence[SyntheticEpisode], tokenizer, chat: ChatConfig, device_accuracy: float,
                     value_accuracy: float, rng: random.Random) -> list[TokenConversation]:
    """One demonstration per episode. Each turn calls the requested device with probability
    `device_accuracy` (otherwise a uniformly random device), and sets it to the requested value with
    probability `value_accuracy` when the device is right (otherwise a uniformly random value of the
    called device). Turns that request nothing get an empty reply."""
    for name, value in (("device_accuracy", device_accuracy), ("value_accuracy", value_accuracy)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must lie in [0, 1], got {value}")
    demos = []
    for episode in episodes:
        devices = dict(episode.task_config.devices)

        def call(turn: int, task=episode.task) -> str:
            requested = task.turns[turn]
            if requested is None:
                return ""
            right_device = rng.random() < device_accuracy
            name = requested[0] if right_device else rng.choice(sorted(devices))
            right_value = right_device and rng.random() < value_accuracy
            return f"{name} {requested[1] if right_value else rng.choice(devices[name])}"

        demos.append(demonstration(episode, tokenizer, chat, call))
    return demos


def demos_batch(demos: Sequence[TokenConversation]) -> TrainBatch:
    """Packs demonstrations for `Trainer.supervised_step` (loss on the demonstrated assistant tokens)."""
    arrays = [demo.arrays() for demo in demos]
    zeros = [np.zeros(len(ids), np.float32) for ids, _ in arrays]
    return pack_batch([ids for ids, _ in arrays], [mask for _, mask in arrays], zeros, np.zeros(len(arrays), np.float32))
