"""TokenConversation: appended segments equal the full tokenisation; sampled ids are never rewritten."""

import random

import numpy as np
import pytest

from envtune_jax.chat.bfcl_prompt import bfcl_tool_docs_for_prompt
from envtune_jax.chat.chat_config import ChatConfig
from envtune_jax.chat.conversation import ConversationError, TokenConversation
from envtune_jax.chat.render import render_assistant_body, render_messages
from envtune_jax.chat.special_tokens import IM_END, IM_END_ID
from envtune_jax.chat.tokenizer import compact_qwen_tokenizer, default_tokenizer, encode_text
from tests.chat.conftest import CATEGORIES, entry_docs, ground_truth, raw_entries, synthetic_history


@pytest.fixture(scope="module")
def tokenizer():
    return default_tokenizer()


def _sample_ids(tokenizer, message, style):
    """What a model that writes the canonical text would have sampled (ending with <|im_end|>)."""
    return encode_text(tokenizer, render_assistant_body(message, style) + IM_END)


@pytest.mark.parametrize("style", ["qwen_fc", "paper"])
def test_segments_equal_full_tokenisation_on_bfcl_episodes(tokenizer, style):
    rng = random.Random(7)
    episodes = 0
    for category in CATEGORIES:
        for entry in raw_entries(category)[::20]:
            tools = bfcl_tool_docs_for_prompt(entry_docs(entry)[0])
            events = synthetic_history(entry, ground_truth(category)[entry["id"]], rng, quirks=False, style=style)
            conversation = TokenConversation(tokenizer, ChatConfig(style=style))
            history = list(events[0][1])
            conversation.start(history, tools)
            sampled_spans = []
            for kind, messages in events[1:]:
                history.extend(messages)
                if kind == "assistant":
                    segment = conversation.append_sampled(_sample_ids(tokenizer, messages[0], style))
                    sampled_spans.append((segment.start, segment.end))
                    continue
                conversation.append_environment(messages)
                assert conversation.ids == encode_text(tokenizer, render_messages(history, tools, style)), entry["id"]
            expected_mask = np.zeros(len(conversation), np.int32)
            for start, end in sampled_spans:
                expected_mask[start:end] = 1
            ids_t, mask_t = conversation.arrays()
            assert ids_t.dtype == np.int32 and ids_t.shape == mask_t.shape == (len(conversation),)
            np.testing.assert_array_equal(mask_t, expected_mask)
            assert all(conversation.ids[end - 1] == IM_END_ID for _, end in sampled_spans)
            assert conversation.turn == len(entry["question"]) - 1
            episodes += 1
    assert episodes == 40


def test_non_canonical_samples_are_kept_exactly(tokenizer):
    conversation = TokenConversation(tokenizer)
    conversation.start([{"role": "user", "content": "Say hello"}])
    text = "Hello world, all good."
    canonical = encode_text(tokenizer, text)
    one_token_per_char = [encode_text(tokenizer, char)[0] for char in text]
    assert one_token_per_char != canonical  # same text, different ids
    sampled = conversation.append_sampled(one_token_per_char + [IM_END_ID])
    conversation.append_environment([{"role": "user", "content": "Again"}])
    ids, mask = conversation.ids, conversation.loss_mask
    assert ids[sampled.start : sampled.end] == one_token_per_char + [IM_END_ID]
    assert mask == [0] * sampled.start + [1] * (sampled.end - sampled.start) + [0] * (len(ids) - sampled.end)
    assert conversation.sampled_text(sampled) == text
    history = [
        {"role": "user", "content": "Say hello"},
        {"role": "assistant", "content": text},
        {"role": "user", "content": "Again"},
    ]
    retokenised = encode_text(tokenizer, render_messages(history))
    assert retokenised != ids and len(retokenised) < len(ids)  # re-tokenising would have drifted
    assert tokenizer.decode(retokenised, skip_special_tokens=False) == conversation.text()


def test_unterminated_sample_is_closed_by_the_environment(tokenizer):
    conversation = TokenConversation(tokenizer)
    conversation.start([{"role": "user", "content": "q"}])
    truncated = encode_text(tokenizer, "I was cut off mid")
    sampled = conversation.append_sampled(truncated)
    assert sampled.unterminated
    environment = conversation.append_environment([{"role": "tool", "content": "r"}])
    assert conversation.ids[environment.start] == IM_END_ID and conversation.loss_mask[environment.start] == 0
    assert conversation.text().endswith(
        "cut off mid<|im_end|>\n<|im_start|>user\n<tool_response>\nr\n"
        "</tool_response><|im_end|>\n<|im_start|>assistant\n"
    )


def test_end_of_message_id_is_the_tokenizers_own():
    compact = compact_qwen_tokenizer(1000)  # <|im_end|> is id 1002 here, not Qwen3's 151645
    conversation = TokenConversation(compact)
    assert conversation.im_end_id == 1002
    conversation.start([{"role": "user", "content": "q"}])
    assert not conversation.append_sampled(encode_text(compact, "ok") + [1002]).unterminated
    conversation.append_environment([{"role": "user", "content": "q2"}])
    with pytest.raises(ConversationError, match="cut the sample"):
        conversation.append_sampled([1002, 5])
    assert conversation.text().endswith("ok<|im_end|>\n<|im_start|>user\nq2<|im_end|>\n<|im_start|>assistant\n")


def test_turn_and_step_boundaries(tokenizer):
    conversation = TokenConversation(tokenizer)
    conversation.start([{"role": "user", "content": "q1"}])
    call = encode_text(tokenizer, '<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call><|im_end|>')
    conversation.append_sampled(call)
    assert [c.name for c in conversation.parse_last_step({"f"}).calls] == ["f"]
    conversation.append_environment([{"role": "tool", "content": "r"}])
    conversation.append_sampled(encode_text(tokenizer, "done<|im_end|>"))
    conversation.append_environment([{"role": "user", "content": "q2"}])
    conversation.append_sampled(encode_text(tokenizer, "ok<|im_end|>"))
    assert conversation.parse_last_step({"f"}).answer_text == "ok"
    kinds = [(s.kind, s.turn, s.step) for s in conversation.boundaries]
    assert kinds == [
        ("prompt", 0, 0),
        ("assistant", 0, 0),
        ("environment", 0, 1),
        ("assistant", 0, 1),
        ("environment", 1, 0),
        ("assistant", 1, 0),
    ]
    assert [b.start for b in conversation.boundaries[1:]] == [b.end for b in conversation.boundaries[:-1]]


def test_out_of_order_and_bad_tokens_raise(tokenizer):
    conversation = TokenConversation(tokenizer)
    with pytest.raises(ConversationError, match="must follow"):
        conversation.append_sampled([1, IM_END_ID])
    conversation.start([{"role": "user", "content": "q"}])
    with pytest.raises(ConversationError, match="must follow append_sampled"):
        conversation.append_environment([{"role": "user", "content": "x"}])
    with pytest.raises(ConversationError, match="cut the sample"):
        conversation.append_sampled([1, IM_END_ID, 2])
    with pytest.raises(ConversationError, match="must lie in"):
        conversation.append_sampled([10**7])
    with pytest.raises(ConversationError, match="no tokens"):
        conversation.append_sampled([])
    with pytest.raises(ConversationError, match="already"):
        conversation.start([{"role": "user", "content": "q"}])
