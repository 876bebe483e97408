"""Our Qwen3 against transformers' on tiny random checkpoints it wrote itself (long, padded prompts)."""

from __future__ import annotations

import numpy as np
import pytest
from flax import nnx

from envtune_jax.models import hf_io
from tests.conftest import TINY_VARIANTS, hf_logits, write_tiny_qwen3

VOCAB = 512


def rel_err(ours, ref) -> float:
    return float(np.linalg.norm(np.asarray(ours, np.float64) - ref) / np.linalg.norm(ref))


@pytest.fixture(scope="module", params=sorted(TINY_VARIANTS))
def checkpoint(request, tmp_path_factory):
    return write_tiny_qwen3(tmp_path_factory.mktemp(request.param), request.param, vocab_size=VOCAB)


@pytest.fixture(scope="module")
def forward(checkpoint):
    """Jitted forward of the fp32 model loaded from `checkpoint`."""
    model = hf_io.load_pretrained(checkpoint, progress=False)
    step = nnx.jit(lambda m, tokens, positions, segments: m(tokens, positions, segments))
    return lambda tokens, positions=None, segments=None: np.asarray(step(model, tokens, positions, segments))


def test_fp32_logits_match_transformers_on_long_prompts(checkpoint, forward):
    tokens = np.random.RandomState(1).randint(0, VOCAB, (2, 333))
    assert rel_err(forward(tokens), hf_logits(checkpoint, tokens)) <= 1e-5


def test_right_padded_batch_matches_unpadded_sequences(checkpoint, forward):
    rng = np.random.RandomState(2)
    lengths = [310, 170]
    tokens = np.zeros((2, 310), np.int64)
    segments = np.zeros((2, 310), np.int32)
    for row, length in enumerate(lengths):
        tokens[row, :length] = rng.randint(0, VOCAB, length)
        segments[row, :length] = 1
    ours = forward(tokens, None, segments)
    for row, length in enumerate(lengths):
        ref = hf_logits(checkpoint, tokens[row : row + 1, :length])[0]
        assert rel_err(ours[row, :length], ref) <= 1e-5


def test_left_padding_with_caller_positions_matches_transformers(checkpoint, forward):
    rng = np.random.RandomState(3)
    tokens = rng.randint(0, VOCAB, (2, 310))
    mask = np.ones((2, 310), np.int64)
    mask[1, :120] = 0  # second row left-padded
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    ours = forward(tokens, positions, mask.astype(np.int32))
    ref = hf_logits(checkpoint, tokens[1:, 120:])[0]
    assert rel_err(ours[1, 120:], ref) <= 1e-5


def test_packed_sequences_match_separate_ones(checkpoint, forward):
    rng = np.random.RandomState(4)
    a, b = rng.randint(0, VOCAB, 180), rng.randint(0, VOCAB, 140)
    packed = np.concatenate([a, b])[None]
    segments = np.concatenate([np.ones(180), np.full(140, 2)]).astype(np.int32)[None]
    positions = np.concatenate([np.arange(180), np.arange(140)])[None]
    ours = forward(packed, positions, segments)[0]
    assert rel_err(ours[:180], hf_logits(checkpoint, a[None])[0]) <= 1e-5
    assert rel_err(ours[180:], hf_logits(checkpoint, b[None])[0]) <= 1e-5


def test_bf16_logits_close_to_transformers_fp32(checkpoint):
    model = hf_io.load_pretrained(checkpoint, dtype="bfloat16", progress=False)
    tokens = np.random.RandomState(5).randint(0, VOCAB, (2, 310))
    assert rel_err(nnx.jit(lambda m, t: m(t))(model, tokens), hf_logits(checkpoint, tokens)) <= 2e-2
