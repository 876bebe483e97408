"""Rendering: byte-identical to the official BFCL QwenFCHandler._format_prompt; the paper style's layout."""

import random

import pytest

from envtune_jax.chat.bfcl_prompt import (
    HOLDOUT_TURN_SENTENCE,
    bfcl_history_assistant_message,
    bfcl_holdout_turn_message,
    bfcl_tool_docs_for_prompt,
)
from envtune_jax.chat.messages import MessageError
from envtune_jax.chat.prompts import PAPER_STAGE34_RULES, QWEN_FC_STAGE34_INSTRUCTIONS
from envtune_jax.chat.render import (
    render_assistant_body,
    render_environment_segment,
    render_messages,
)
from tests.chat.conftest import CATEGORIES, entry_docs, ground_truth, raw_entries, synthetic_history


@pytest.fixture(scope="module")
def reference_format_prompt():
    """The official renderer. Importing the handler needs the test extra (tree_sitter 0.21.3 and its
    grammars, tenacity, overrides, openai); BFCL_PROJECT_ROOT (set in conftest) keeps its folders out of
    site-packages."""
    pytest.importorskip("bfcl_eval", reason="bfcl-eval is not installed (make setup installs it --no-deps)")
    try:
        from bfcl_eval.model_handler.local_inference.qwen_fc import QwenFCHandler
    except ImportError as exc:
        pytest.skip(f"the official QwenFCHandler cannot be imported ({exc}); `pip install -e .[test]` provides it")
    return lambda messages, tools: QwenFCHandler._format_prompt(None, messages, tools)


@pytest.fixture(scope="module")
def official_entries():
    """Entries as the official loader prepares them (tools with the Python note, hold-out docs)."""
    pytest.importorskip("bfcl_eval", reason="bfcl-eval is not installed")
    from bfcl_eval.utils import load_dataset_entry

    return {category: load_dataset_entry(f"multi_turn_{category}") for category in CATEGORIES}


@pytest.mark.parametrize("category", CATEGORIES)
def test_first_prompts_equal_the_official_rendering(category, reference_format_prompt, official_entries):
    official = official_entries[category]
    assert len(official) == len(raw_entries(category)) == 200
    for raw, prepared in zip(raw_entries(category), official):
        offered, _ = entry_docs(raw)
        tools = bfcl_tool_docs_for_prompt(offered)
        assert tools == prepared["function"], raw["id"]
        expected = reference_format_prompt(prepared["question"][0], prepared["function"])
        assert render_messages(raw["question"][0], tools, "qwen_fc") == expected, raw["id"]


def test_holdout_messages_equal_the_official_harness(official_entries):
    checked = 0
    for raw, prepared in zip(raw_entries("miss_func"), official_entries["miss_func"]):
        _, held_out = entry_docs(raw)
        for turn, docs in held_out.items():
            official_text = "{functions}\n".format(functions=prepared["missed_function"][str(turn)])
            assert bfcl_holdout_turn_message(docs)["content"] == official_text + HOLDOUT_TURN_SENTENCE
            assert raw["question"][turn] == []
            checked += 1
    assert checked == 200


@pytest.mark.parametrize("category", CATEGORIES)
def test_multi_step_histories_equal_the_official_rendering(category, reference_format_prompt):
    rng = random.Random(category)
    compared = 0
    for entry in raw_entries(category):
        tools = bfcl_tool_docs_for_prompt(entry_docs(entry)[0])
        history: list[dict] = []
        for _, messages in synthetic_history(entry, ground_truth(category)[entry["id"]], rng, quirks=True):
            history.extend(messages)
            if rng.random() < 0.35 or history[-1]["role"] == "assistant":
                expected = reference_format_prompt(history, tools)
                assert render_messages(history, tools, "qwen_fc") == expected, (entry["id"], len(history))
                compared += 1
    assert compared > 1000


def test_official_rules_on_small_cases(reference_format_prompt):
    tools = [{"name": "f", "description": "d", "parameters": {"type": "dict", "properties": {}}}]
    call = {"name": "f", "arguments": {"x": "é"}}
    cases = [
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "", "tool_calls": [call, call]}],
        [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "ok", "tool_calls": [call, call]},
            {"role": "tool", "content": "1"},
            {"role": "tool", "content": "2"},
            {"role": "system", "content": "note"},
        ],
        [
            {"role": "user", "content": "<tool_response>\nx\n</tool_response>"},
            {"role": "assistant", "content": "a", "reasoning_content": "r"},
            {"role": "user", "content": "q"},
        ],
    ]
    for messages in cases:
        for tool_list in (tools, []):
            assert render_messages(messages, tool_list) == reference_format_prompt(messages, tool_list)
    duplicated = render_messages(cases[1], tools)
    assert "</tool_call><tool_call>" in duplicated  # the reference's equality-based separator, reproduced


def test_environment_segment_is_the_tail_of_the_full_rendering():
    history = [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "", "tool_calls": [{"name": "f", "arguments": {}}]},
    ]
    environment = [
        {"role": "tool", "content": "r1"},
        {"role": "tool", "content": "r2"},
        {"role": "user", "content": "next"},
    ]
    for style in ("qwen_fc", "paper"):
        full = render_messages(history + environment, [], style)
        segment = render_environment_segment(environment, style)
        assert (
            segment == "\n<|im_start|>user\n<tool_response>\nr1\n</tool_response>\n<tool_response>\nr2\n"
            "</tool_response><|im_end|>\n<|im_start|>user\nnext<|im_end|>\n<|im_start|>assistant\n"
        )
        assert full.endswith("<|im_end|>" + segment)
    with pytest.raises(MessageError, match="assistant"):
        render_environment_segment([{"role": "assistant", "content": "x"}])


def test_paper_style_layout_and_variants():
    tools = [{"name": "ls", "description": "list", "parameters": {"type": "dict", "properties": {}}}]
    messages = [{"role": "user", "content": "list files"}]
    stage12 = render_messages(messages, tools, "paper", paper_variant="stage12")
    stage34 = render_messages(messages, tools, "paper", paper_variant="stage34")
    for text in (stage12, stage34):
        assert text.startswith("<|im_start|>system\n")
        assert text.endswith("<|im_start|>user\nlist files<|im_end|>\n<|im_start|>assistant\n")
        assert '\n{"name": "ls", "description": "list"' in text and "<answer>" in text and "<think>" in text
    assert PAPER_STAGE34_RULES in stage34 and PAPER_STAGE34_RULES not in stage12
    step = {
        "role": "assistant",
        "content": "",
        "reasoning_content": "need ls",
        "tool_calls": [{"name": "ls", "arguments": {}}],
    }
    assert render_assistant_body(step, "paper") == (
        '<think>\nneed ls\n</think>\n<tool_call>\n{"name": "ls", "arguments": {}}\n</tool_call>'
    )
    reply = {"role": "assistant", "content": "Done.", "reasoning_content": "ok"}
    assert render_assistant_body(reply, "paper") == "<think>\nok\n</think>\n<answer>\nDone.\n</answer>"
    with pytest.raises(MessageError, match="not both"):
        render_assistant_body({**step, "content": "text"}, "paper")


def test_qwen_fc_stage34_instructions_open_the_system_message(reference_format_prompt):
    """Under qwen_fc the stage 3/4 instructions are the leading system message, which the official format
    places before its tools block; stage12 leaves the official prompt byte for byte as it is."""
    tools = [{"name": "ls", "description": "list", "parameters": {"type": "dict", "properties": {}}}]
    messages = [{"role": "user", "content": "list files"}]
    stage12 = render_messages(messages, tools, "qwen_fc", paper_variant="stage12")
    stage34 = render_messages(messages, tools, "qwen_fc", paper_variant="stage34")
    with_system = [{"role": "system", "content": QWEN_FC_STAGE34_INSTRUCTIONS}, *messages]
    assert stage12 == reference_format_prompt(messages, tools)
    assert stage34 == reference_format_prompt(with_system, tools)  # the official leading system message
    assert stage34.startswith("<|im_start|>system\n" + QWEN_FC_STAGE34_INSTRUCTIONS + "\n\n# Tools\n")
    assert QWEN_FC_STAGE34_INSTRUCTIONS not in stage12 and "<answer>" not in QWEN_FC_STAGE34_INSTRUCTIONS
    # an entry's own system message follows the instructions
    own = render_messages(
        [{"role": "system", "content": "Be brief."}, *messages], tools, "qwen_fc", paper_variant="stage34"
    )
    assert own.startswith("<|im_start|>system\n" + QWEN_FC_STAGE34_INSTRUCTIONS + "\n\nBe brief.\n\n# Tools\n")


def test_bad_input_raises_typed_errors():
    with pytest.raises(MessageError, match="role"):
        render_messages([{"role": "robot", "content": "x"}])
    with pytest.raises(MessageError, match="content"):
        render_messages([{"role": "user", "content": None}])
    with pytest.raises(MessageError, match="name"):
        render_messages([{"role": "assistant", "content": "", "tool_calls": [{"arguments": {}}]}])
    with pytest.raises(ValueError, match="style"):
        render_messages([{"role": "user", "content": "x"}], style="chatml")


def test_history_assistant_message_follows_the_official_harness():
    call = '<tool_call>\n{"arguments": "{\\"a\\":1}", "name": "f", "id": 7}\n</tool_call>'
    with_calls = bfcl_history_assistant_message("<think>\nwhy\n</think>\n\nignored text\n" + call)
    assert with_calls == {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"arguments": '{"a":1}', "name": "f", "id": 7}],
        "reasoning_content": "why",
    }
    without_calls = bfcl_history_assistant_message("Bye")
    assert without_calls == {"role": "assistant", "content": "Bye", "reasoning_content": ""}


def test_chat_config_loads_from_overrides():
    from envtune_jax.chat.chat_config import ChatConfig
    from envtune_jax.config import ConfigError, load

    config = load(ChatConfig, None, ["style=paper", "paper_variant=stage34"])
    assert config == ChatConfig(style="paper", paper_variant="stage34")
    with pytest.raises(ConfigError, match="require_call_newlines"):  # calls are always read the official way
        load(ChatConfig, None, ["require_call_newlines=false"])
    with pytest.raises(ConfigError, match="qwen_fc"):
        load(ChatConfig, None, ["style=chatml"])
    with pytest.raises(ValueError, match="paper_variant"):
        ChatConfig(paper_variant="stage5")
