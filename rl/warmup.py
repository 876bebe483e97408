"""Supervised warm-up before GRPO on the synthetic task: a stand-in for pretraining that gives a tiny
random model the call format and a *weak* prior, the way an instruct model arrives at environment tuning
knowing its tools but not the environment's exact call syntax.

A randomly initialised model almost never writes a parseable call, so GRPO would see only zero rewards.
The warm-up trains on demonstrations that are only partly right (`weak_prior_demos`): each attempt calls
the requested device (probability `device_accuracy`) with the requested value (`value_accuracy`), but is
spelt as the parser accepts it (`light red`) only with probability `syntax_accuracy`; otherwise it is a
format error such as `light red please` (`MISSPELT_CALLS`). With format feedback on, a misspelt attempt
is answered and the model tries again (`max_attempts`), then replies empty. The synthetic run's defaults
(configs/synthetic/learning_run.yaml: right device and value, 1 call in 20 well spelt) start GRPO at a low
reward: what GRPO has to learn is the environment's syntax, which is stage 1-2 of the paper in miniature.
(Demonstrations with a random *value* leave GRPO to learn reading the request from a one-bit reward, which
this tiny model did not do in the attempts docs/training.md reports.)

Every demonstration is stepped through a real episode, so it follows the protocol exactly.
"""

from __future__ import annotations

import random
from typing import Callable, Sequence

import numpy as np

from envtune_jax.chat.chat_config import ChatConfig
from envtune_jax.chat.conversation import TokenConversation
from envtune_jax.chat.tokenizer import encode_text
from envtune_jax.environments.synthetic import SyntheticEpisode, parse_compact_calls
from envtune_jax.rl.batch import TrainBatch, pack_batch

# Spellings of a call that the compact parser rejects as format errors (first word a tool name, not
# two words): a model that writes them gets format feedback (when augmentation is on) or loses the turn.
# The extra word comes after the value, so tool and value sit where they do in a well-formed call.
MISSPELT_CALLS = ("{tool} {value} please", "{tool} {value} now")


def demonstration(
    episode: SyntheticEpisode, tokenizer, chat: ChatConfig, call_for_turn: Callable[[int], str], max_attempts: int = 2
) -> TokenConversation:
    """The episode played turn by turn: an attempt `call_for_turn(turn)`; when the environment answers
    a misspelt call with format feedback (the turn goes on), another attempt, up to `max_attempts`;
    after a call that ran, or when attempts are used up, an empty reply, which ends the turn. A call
    text of "" is a reply without a call (ends the turn by itself)."""
    names = sorted(episode.offered_tool_names())
    conversation = TokenConversation(tokenizer, chat)
    conversation.start(episode.reset(), episode.tools())
    turn = 0
    while not episode.done:
        attempts, turn_ended = 0, False
        while not (turn_ended or episode.done):
            text = call_for_turn(turn) if attempts < max_attempts else ""
            attempts += 1
            calls, format_errors = parse_compact_calls(text, names)
            conversation.append_sampled(encode_text(tokenizer, text) + [conversation.im_end_id])
            result = episode.step(text, calls, format_errors)
            if episode.done:
                break
            conversation.append_environment(result.messages)
            turn_ended = result.turn_ended
            if calls:
                attempts = max_attempts  # the call ran: the next step is the closing empty reply
        turn += 1
    return conversation


def weak_prior_demos(
    episodes: Sequence[SyntheticEpisode],
    tokenizer,
    chat: ChatConfig,
    device_accuracy: float,
    value_accuracy: float,
    rng: random.Random,
    syntax_accuracy: float = 1.0,
    max_attempts: int = 2,
) -> list[TokenConversation]:
    """One demonstration per episode. Each attempt calls the requested device with probability
    `device_accuracy` (otherwise a uniformly random device), sets it to the requested value with
    probability `value_accuracy` when the device is right (otherwise a uniformly random value of the
    called device), and spells the call as the parser accepts it (`light red`) with probability
    `syntax_accuracy`, otherwise in one of `MISSPELT_CALLS` (a format error). Turns that request
    nothing get an empty reply. See `demonstration` for retries after format feedback."""
    for name, value in (
        ("device_accuracy", device_accuracy),
        ("value_accuracy", value_accuracy),
        ("syntax_accuracy", syntax_accuracy),
    ):
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
            value = requested[1] if right_value else rng.choice(devices[name])
            spelling = "{tool} {value}" if rng.random() < syntax_accuracy else rng.choice(MISSPELT_CALLS)
            return spelling.format(tool=name, value=value)

        demos.append(demonstration(episode, tokenizer, chat, call, max_attempts))
    return demos


def demos_batch(demos: Sequence[TokenConversation]) -> TrainBatch:
    """Packs demonstrations for `Trainer.supervised_step` (loss on the demonstrated assistant tokens)."""
    arrays = [demo.arrays() for demo in demos]
    zeros = [np.zeros(len(ids), np.float32) for ids, _ in arrays]
    return pack_batch(
        [ids for ids, _ in arrays], [mask for _, mask in arrays], zeros, np.zeros(len(arrays), np.float32)
    )
