"""The embedded Qwen3 tokenizer against tiktoken on the same ranks, its added tokens, save/load round trips."""

import json
import random
import unicodedata

import pytest
import tiktoken

from envtune_jax.chat import special_tokens as st
from envtune_jax.chat.tokenizer import (
    QWEN3_VOCAB_SIZE_WITH_ADDED,
    QWEN_PRETOKENIZE_PATTERN,
    TokenizerLoadError,
    check_tokenizer_fits_model,
    compact_qwen_tokenizer,
    default_tokenizer,
    encode_text,
    load_tokenizer,
    qwen_tiktoken_ranks_path,
    read_tiktoken_ranks,
    save_tokenizer,
    special_token_id,
    stop_token_ids,
)


@pytest.fixture(scope="module")
def tokenizer():
    return default_tokenizer()


@pytest.fixture(scope="module")
def tiktoken_encoding():
    ranks = read_tiktoken_ranks(qwen_tiktoken_ranks_path())
    specials = {spec.content: spec.token_id for spec in st.QWEN3_ADDED_TOKENS}
    return tiktoken.Encoding("qwen3", pat_str=QWEN_PRETOKENIZE_PATTERN, mergeable_ranks=ranks, special_tokens=specials)


def _random_unicode(rng: random.Random) -> str:
    length = rng.randint(0, 80)
    pools = [(0x20, 0x7E), (0xA0, 0x2FFF), (0x3000, 0x9FFF), (0xAC00, 0xD7A3), (0x1F300, 0x1FAFF), (0x300, 0x36F)]
    chars = []
    for _ in range(length):
        low, high = rng.choice(pools)
        chars.append(chr(rng.randint(low, high)))
        if rng.random() < 0.1:
            chars.append(rng.choice([" ", "  ", "\n", "\r\n", "\t", "\n\n", "'s", "'LL"]))
    return "".join(chars)


def _random_code(rng: random.Random) -> str:
    names = ["x", "total_sum", "MaxValue", "ñandú", "数据", "i18n", "_private", "HTTPServer"]
    lines = []
    for _ in range(rng.randint(1, 8)):
        indent = " " * rng.choice([0, 2, 4, 8]) + "\t" * rng.randint(0, 1)
        name = rng.choice(names)
        number = rng.choice(["0", "42", "3.14159", "1e-9", "123456789", "0x1F"])
        lines.append(
            rng.choice(
                [
                    f"{indent}def {name}(a, b={number}):  # {name}'s comment",
                    f"{indent}return {name}[{number}] ** 2 != {name}",
                    f'{indent}if (a&&b) || !c {{ print("{name}"); }}',
                    f"{indent}{name} = [{number}, '{name}', None]",
                ]
            )
        )
    return rng.choice(["\n", "\r\n", "\n\n"]).join(lines) + rng.choice(["", "\n", "   ", "\n\n\n"])


def _random_json(rng: random.Random) -> str:
    def value(depth: int):
        kind = rng.randint(0, 6 if depth < 3 else 3)
        if kind == 0:
            return rng.randint(-(10**6), 10**6)
        if kind == 1:
            return rng.random() * 10 ** rng.randint(-5, 5)
        if kind == 2:
            return _random_unicode(rng)[:20]
        if kind == 3:
            return rng.choice([True, False, None])
        if kind in (4, 5):
            return {_random_unicode(rng)[:8]: value(depth + 1) for _ in range(rng.randint(0, 4))}
        return [value(depth + 1) for _ in range(rng.randint(0, 4))]

    return json.dumps(value(0), ensure_ascii=rng.random() < 0.5, indent=rng.choice([None, 2]))


def _random_chat(rng: random.Random) -> str:
    pieces = [rng.choice([spec.content for spec in st.QWEN3_ADDED_TOKENS]) for _ in range(3)]
    return pieces[0] + _random_unicode(rng)[:30] + pieces[1] + "\n" + _random_json(rng) + pieces[2]


def _corpus(count: int) -> list[str]:
    rng = random.Random(1234)
    makers = [_random_unicode, _random_code, _random_json, _random_chat]
    return [makers[index % len(makers)](rng) for index in range(count)]


def test_ids_equal_tiktoken_on_the_same_ranks(tokenizer, tiktoken_encoding):
    corpus = _corpus(4000)
    for text in corpus:
        # Both sides see the same NFC text: tokenizers' normaliser (what the real Qwen3 tokenizer.json uses).
        normalised = tokenizer.normalizer.normalize_str(text)
        expected = tiktoken_encoding.encode(normalised, allowed_special="all")
        assert encode_text(tokenizer, text) == expected, repr(text)


def test_nfc_matches_python_except_for_unicode_version_gaps(tokenizer, tiktoken_encoding):
    """Qwen's own encoders NFC-normalise with Python; ours uses the Rust normaliser (as Qwen3's tokenizer.json)."""
    corpus = _corpus(2000)
    disagreements = 0
    for text in corpus:
        python_nfc = unicodedata.normalize("NFC", text)
        if python_nfc != tokenizer.normalizer.normalize_str(text):
            disagreements += 1  # rare combining marks whose data differ between Unicode versions
            continue
        assert encode_text(tokenizer, text) == tiktoken_encoding.encode(python_nfc, allowed_special="all")
    assert disagreements < len(corpus) // 50
    assert encode_text(tokenizer, "Cafe\u0301") == encode_text(tokenizer, "Café")


def test_added_tokens_are_single_ids_with_the_qwen3_ids(tokenizer):
    assert tokenizer.get_vocab_size(with_added_tokens=True) == QWEN3_VOCAB_SIZE_WITH_ADDED
    # All 26 ids as in Qwen3's tokenizer_config.json (added_tokens_decoder), written out independently
    # of the list in special_tokens.py so a reordering there fails here.
    expected = {
        151643: "<|endoftext|>",
        151644: "<|im_start|>",
        151645: "<|im_end|>",
        151646: "<|object_ref_start|>",
        151647: "<|object_ref_end|>",
        151648: "<|box_start|>",
        151649: "<|box_end|>",
        151650: "<|quad_start|>",
        151651: "<|quad_end|>",
        151652: "<|vision_start|>",
        151653: "<|vision_end|>",
        151654: "<|vision_pad|>",
        151655: "<|image_pad|>",
        151656: "<|video_pad|>",
        151657: "<tool_call>",
        151658: "</tool_call>",
        151659: "<|fim_prefix|>",
        151660: "<|fim_middle|>",
        151661: "<|fim_suffix|>",
        151662: "<|fim_pad|>",
        151663: "<|repo_name|>",
        151664: "<|file_sep|>",
        151665: "<tool_response>",
        151666: "</tool_response>",
        151667: "<think>",
        151668: "</think>",
    }
    assert len(st.QWEN3_ADDED_TOKENS) == len(expected)
    for token_id, content in expected.items():
        assert st.ADDED_TOKEN_IDS[content] == token_id
    for spec in st.QWEN3_ADDED_TOKENS:
        assert encode_text(tokenizer, spec.content) == [spec.token_id]
        assert encode_text(tokenizer, f"a{spec.content}b") == [64, spec.token_id, 65]
        assert tokenizer.id_to_token(spec.token_id) == spec.content
    ids = encode_text(tokenizer, "<|im_start|>hi<think>x</think><|im_end|>")
    decoded = tokenizer.decode(ids, skip_special_tokens=True)
    assert decoded == "hi<think>x</think>"  # only the special=True ones are dropped


def test_decode_inverts_encode(tokenizer):
    for text in _corpus(400):
        decoded = tokenizer.decode(encode_text(tokenizer, text), skip_special_tokens=False)
        assert decoded == tokenizer.normalizer.normalize_str(text)


def test_saved_tokenizer_loads_in_transformers_with_the_same_ids(tokenizer, tmp_path):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    save_tokenizer(tokenizer, tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["added_tokens_decoder"]["151657"] == {
        "content": "<tool_call>",
        "lstrip": False,
        "normalized": False,
        "rstrip": False,
        "single_word": False,
        "special": False,
    }
    reloaded = load_tokenizer(tmp_path)
    auto = AutoTokenizer.from_pretrained(str(tmp_path))
    fast = PreTrainedTokenizerFast.from_pretrained(str(tmp_path))
    assert auto.eos_token_id == st.IM_END_ID and auto.pad_token_id == st.ENDOFTEXT_ID
    for text in _corpus(300):
        ids = encode_text(tokenizer, text)
        assert encode_text(reloaded, text) == ids
        assert auto(text, add_special_tokens=False).input_ids == ids
        assert fast(text, add_special_tokens=False).input_ids == ids


def test_load_tokenizer_errors_clearly(tmp_path):
    with pytest.raises(TokenizerLoadError, match="no tokenizer.json"):
        load_tokenizer(tmp_path)
    assert load_tokenizer(None) is default_tokenizer()


def test_stop_token_ids_come_from_the_tokenizer(tokenizer):
    assert stop_token_ids(tokenizer) == st.STOP_TOKEN_IDS == (st.IM_END_ID, st.ENDOFTEXT_ID)
    compact = compact_qwen_tokenizer(1000)
    assert stop_token_ids(compact) == (1002, 1000)
    from tokenizers import Tokenizer, models

    with pytest.raises(TokenizerLoadError, match="no <\\|im_end\\|> token"):
        special_token_id(Tokenizer(models.BPE({"a": 0}, [])), st.IM_END)


def test_compact_tokenizer_is_the_full_one_cut_at_n_ranks(tokenizer):
    n = 1000
    compact = compact_qwen_tokenizer(n)
    assert compact_qwen_tokenizer(n) is compact  # built once per size
    assert compact.get_vocab_size(with_added_tokens=True) == n + len(st.QWEN3_ADDED_TOKENS)
    for offset, spec in enumerate(st.QWEN3_ADDED_TOKENS):
        assert encode_text(compact, spec.content) == [n + offset]
    for text in _corpus(200):
        ids = encode_text(compact, text)
        assert all(0 <= i < n + 26 for i in ids)
        assert compact.decode(ids, skip_special_tokens=False) == tokenizer.normalizer.normalize_str(text)
        full = encode_text(tokenizer, text)
        if all(i < n for i in full):  # text the full BPE writes with kept tokens only: the same ids
            assert ids == full
    # the word tokens the synthetic run needs are kept whole
    assert encode_text(compact_qwen_tokenizer(8192), "light red") == encode_text(tokenizer, "light red")
    with pytest.raises(ValueError, match="num_bpe_tokens"):
        compact_qwen_tokenizer(100)


def test_a_tokenizer_from_another_model_is_refused(tokenizer):
    check_tokenizer_fits_model(tokenizer, 151936)  # Qwen3: 151,669 ids, 151,936 rows
    check_tokenizer_fits_model(compact_qwen_tokenizer(1000), 1026)
    with pytest.raises(TokenizerLoadError, match="151669 ids but the model only 8320 embedding rows"):
        check_tokenizer_fits_model(tokenizer, 8320)
    from tokenizers import Tokenizer, models

    with pytest.raises(TokenizerLoadError, match="not a Qwen chat tokenizer"):
        check_tokenizer_fits_model(Tokenizer(models.BPE({"a": 0}, [])), 100)
