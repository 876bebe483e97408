"""Format warm-up by supervised steps on demonstrations whose *content* is uninformative.

A randomly initialised model almost never writes a parseable tool call, so GRPO would see only zero
rewards. The warm-up teaches the call format on demonstrations that answer every request with a
random tool and value (independent of what the user asked), so the model learns to write calls but
not which call is right: its reward stays near chance, and RL must learn the rest.
"""
from __future__ import annotations

import random
from typing import Sequence

import numpy as np

from environments.synthetic import SyntheticConfig, SyntheticEpisode, tool_docs
from envtune_jax.chat.chat_config import ChatConfig
from envtune_jax.chat.conversation import TokenConversation
from envtune_jax.chat.special_tokens import IM_END_ID
from envtune_jax.chat.tokenizer import encode_text
from rl.batch import TrainBatch, pack_batch


def synthetic_format_demos(episodes: Sequence[SyntheticEpisode], tokenizer, chat: ChatConfig,
                           config: SyntheticConfig, seed: int = 0) -> list[TokenConversation]:
    """One demonstration per episode: each turn answered by a random '<tool> <value>' call, then an
    empty reply ending the turn. The episodes are stepped for real, so demonstrations follow the protocol."""
    rng = random.Random(seed)
    devices = [(name, list(values)) for name, values in config.devices]
    demos = []
    for episode in episodes:
        conversation = TokenConversation(tokenizer, chat)
        conversation.start(episode.reset(), tool_docs(config))
        while not episode.done:
            name, values = devices[rng.randrange(len(devices))]
            call_text = f"{name} {rng.choice(values)}"
            for text in (call_text, ""):
                conversation.append_sampled(encode_text(tokenizer, text) + [IM_END_ID])
                result = episode.step(text, *_compact(text, [d for d, _ in devices]))
                if episode.done:
                    break
                conversation.append_environment(result.messages)
        demos.append(conversation)
    return demos


def _compact(text: str, names: list[str]):
    from environments.synthetic import parse_compact_calls
    return parse_compact_calls(text, names)


def demos_batch(demos: Sequence[TokenConversation]) -> TrainBatch:
    arrays = [demo.arrays() for demo in demos]
    zeros = [np.zeros(len(ids), np.float32) for ids, _ in arrays]
    return pack_batch([ids for ids, _ in arrays], [mask for _, mask in arrays], zeros, np.zeros(len(arrays), np.float32))
