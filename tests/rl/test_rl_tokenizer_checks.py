"""Stop ids and tokenizer/model agreement where a run starts: `envtune train` and the evaluation policy
take the end-of-message ids from the checkpoint's tokenizer, and refuse a tokenizer from another model."""

from __future__ import annotations

import pytest

from envtune_jax.chat.tokenizer import TokenizerLoadError, compact_qwen_tokenizer, default_tokenizer
from envtune_jax.config import ConfigError
from envtune_jax.models.generation.sampling import QWEN3_STOP_TOKEN_IDS
from envtune_jax.rl.grpo_loop import check_tokenizer
from envtune_jax.rl.model_policy import ModelPolicy


def test_train_accepts_the_qwen3_tokenizer_with_the_default_stop_ids():
    check_tokenizer(default_tokenizer(), 151936, QWEN3_STOP_TOKEN_IDS)


def test_train_names_the_stop_ids_a_different_tokenizer_needs():
    compact = compact_qwen_tokenizer(1000)  # <|im_end|> = 1002, <|endoftext|> = 1000
    with pytest.raises(
        ConfigError, match=r"lack this tokenizer's <\|im_end\|> id 1002; set sampler.stop_token_ids=\[1002,1000\]"
    ):
        check_tokenizer(compact, 1026, QWEN3_STOP_TOKEN_IDS)
    check_tokenizer(compact, 1026, (1002, 1000))


def test_train_refuses_a_tokenizer_with_more_ids_than_the_model():
    with pytest.raises(TokenizerLoadError, match="embedding rows"):
        check_tokenizer(default_tokenizer(), 8320, QWEN3_STOP_TOKEN_IDS)


def test_evaluation_policy_stops_on_its_tokenizers_end_of_message():
    assert ModelPolicy(None, default_tokenizer()).sampling.stop_token_ids == QWEN3_STOP_TOKEN_IDS
    assert ModelPolicy(None, compact_qwen_tokenizer(1000)).sampling.stop_token_ids == (1002, 1000)


def test_a_checkpoint_without_tokenizer_files_is_said_once(tmp_path, capsys, monkeypatch):
    """Loading a model whose checkpoint has no tokenizer.json falls back to the built-in Qwen3 tokenizer and
    says so once per checkpoint (train, eval and generate all load through checkpoint_tokenizer)."""
    from envtune_jax.chat import tokenizer as tokenizer_module

    built_in = object()
    monkeypatch.setattr(tokenizer_module, "default_tokenizer", lambda: built_in)
    monkeypatch.setattr(tokenizer_module, "_NOTED_CHECKPOINTS", set())
    for _ in range(3):
        assert tokenizer_module.checkpoint_tokenizer(None, tmp_path / "ckpt") is built_in
    assert capsys.readouterr().err.count("has no tokenizer files") == 1
    assert tokenizer_module.checkpoint_tokenizer(None, None) is built_in  # random weights: nothing to say
    assert capsys.readouterr().err == ""
