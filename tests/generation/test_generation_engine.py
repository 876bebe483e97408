"""The generation engine on a tiny fp32 Qwen3 written by transformers: greedy parity with HF generate,
multi-turn extend vs fresh prefill, sampler log-probs vs the trainer's recomputation, chunking,
streaming, continuous batching, bounded compilations, weight sharing and input errors."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from envtune_jax.models import hf_io
from envtune_jax.models.generation.buckets import BucketConfig
from envtune_jax.models.generation.engine import GenerationEngine
from envtune_jax.models.generation.reference import reference_greedy, reference_logprobs
from envtune_jax.models.generation.requests import CacheFullError, GenerationInputError
from envtune_jax.models.generation.sampling_params import SamplingParams
from tests.conftest import hf_model, write_tiny_qwen3

VOCAB = 512
BATCH = 3
SAMPLED = SamplingParams(temperature=0.8, top_k=50, top_p=0.9, max_new_tokens=24, stop_token_ids=())


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny HF checkpoint whose matrices are scaled up 8x, so logits are spread out: greedy
    continuations vary instead of repeating one token, and argmax has clear margins."""
    path = write_tiny_qwen3(tmp_path_factory.mktemp("gen_ckpt"), "tied_kv2", vocab_size=VOCAB)
    tensors = load_file(str(path / "model.safetensors"))
    tensors = {name: value * 8 if value.ndim == 2 else value for name, value in tensors.items()}
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    return path


@pytest.fixture(scope="module")
def model(checkpoint):
    return hf_io.load_pretrained(checkpoint, progress=False)


@pytest.fixture(scope="module")
def engine(model):
    # capacities 128 / 256, chunk widths 16 / 32 / 64: few programs for the whole module to compile
    buckets = BucketConfig(min_cache_len=128, min_chunk_len=16, prefill_chunk=64, cache_half_steps=False)
    return GenerationEngine(model, batch_size=BATCH, max_cache_len=256, cache_dtype="float32", buckets=buckets)


def prompts_of(lengths, seed=0):
    rng = np.random.RandomState(seed)
    return [rng.randint(0, VOCAB, n).tolist() for n in lengths]


def full_forward_last_logits(model, sequences):
    """Logits of the token after each whole sequence, by a fresh cache-free forward (NumPy [B, V])."""
    import jax.numpy as jnp

    width = max(map(len, sequences))
    tokens = np.zeros((len(sequences), width), np.int32)
    segments = np.zeros_like(tokens)
    for b, seq in enumerate(sequences):
        tokens[b, : len(seq)], segments[b, : len(seq)] = seq, 1
    logits = np.asarray(model(jnp.asarray(tokens), None, jnp.asarray(segments)))
    return np.stack([logits[b, len(seq) - 1] for b, seq in enumerate(sequences)])


def test_greedy_matches_transformers_generate(engine, checkpoint):
    import torch

    prompts = prompts_of([5, 37, 18])
    new_tokens = 72
    state = engine.start(prompts)
    _, result = engine.decode(state, SamplingParams(greedy=True, max_new_tokens=new_tokens, stop_token_ids=()))
    assert result.num_tokens.tolist() == [new_tokens] * 3 and result.finished.all()
    assert not result.stop_token_hit.any()

    width = max(map(len, prompts))
    input_ids = np.zeros((3, width), np.int64)
    mask = np.zeros((3, width), np.int64)
    for b, prompt in enumerate(prompts):  # left padding, as HF batches prompts for generate
        input_ids[b, width - len(prompt) :], mask[b, width - len(prompt) :] = prompt, 1
    hf = hf_model(str(checkpoint))
    with torch.no_grad():
        out = hf.generate(
            input_ids=torch.tensor(input_ids),
            attention_mask=torch.tensor(mask),
            do_sample=False,
            max_new_tokens=new_tokens,
            pad_token_id=0,
            eos_token_id=None,
        )
    expected = out[:, width:].numpy()
    for b in range(3):
        assert result.tokens[b].tolist() == expected[b].tolist(), f"sequence {b} diverges from transformers"
    assert len(set(expected[1].tolist())) > 10  # the continuation is not one repeated token


def test_pallas_decode_kernel_gives_the_einsums_tokens_and_logprobs(engine, checkpoint, monkeypatch):
    """decode_attention="pallas" (JAX's Pallas decode kernel; interpret mode on CPU) through a multi-turn
    episode with sampling: the same tokens and log-probs as the reference einsum's engine."""
    from envtune_jax.models import attention

    traced = []
    kernel = attention.pallas_decode_attention
    monkeypatch.setattr(attention, "pallas_decode_attention", lambda *a: traced.append(1) or kernel(*a))
    kernel_model = hf_io.load_pretrained(checkpoint, progress=False, decode_attention="pallas")
    buckets = BucketConfig(min_cache_len=128, min_chunk_len=16, prefill_chunk=64, cache_half_steps=False)
    kernel_engine = GenerationEngine(
        kernel_model, batch_size=BATCH, max_cache_len=256, cache_dtype="float32", buckets=buckets
    )

    def episode(eng):
        state = eng.start(prompts_of([6, 29, 13], seed=8), rng=5)
        state, first = eng.decode(state, SAMPLED)
        state = eng.extend(state, {0: prompts_of([21], 9)[0], 2: prompts_of([4], 10)[0]})
        state, second = eng.decode(state, SAMPLED, active=[0, 2])
        return [first.token_lists(), second.token_lists()], eng.history(state)

    want_tokens, want = episode(engine)
    got_tokens, got = episode(kernel_engine)
    assert traced, "the kernel engine never traced the Pallas decode kernel"
    assert got_tokens == want_tokens
    np.testing.assert_array_equal(got.lengths, want.lengths)
    for b in range(BATCH):
        n = want.lengths[b]
        np.testing.assert_allclose(got.logprobs[b, :n], want.logprobs[b, :n], atol=1e-5)


def test_stop_token_ends_the_turn_and_is_kept(engine, model):
    prompt = prompts_of([11], seed=1)[0]
    reference = reference_greedy(model, prompt, 40)
    stop = reference[9]
    end = min(reference.index(token) for token in (stop, 7) if token in reference)
    expected = reference[: end + 1]
    state = engine.start([prompt])
    state, result = engine.decode(state, SamplingParams(greedy=True, max_new_tokens=40, stop_token_ids=(stop, 7)))
    assert result.token_lists()[0] == expected
    assert result.finished[0] and result.stop_token_hit[0]
    assert result.num_tokens[1:].tolist() == [0, 0]  # empty slots generate nothing
    _, again = engine.decode(state, SamplingParams(greedy=True, max_new_tokens=40))
    assert again.num_tokens[0] == 0  # the turn is over until tokens are appended


def test_multi_turn_extend_gives_the_next_token_logits_of_a_fresh_prefill(engine, model):
    state = engine.start(prompts_of([9, 30, 4], seed=2), rng=3)
    state, _ = engine.decode(state, SAMPLED)
    state = engine.extend(state, {0: prompts_of([7], 4)[0], 2: prompts_of([45], 5)[0]})  # ragged, a subset
    state, _ = engine.decode(state, SAMPLED, active=[0, 2])
    state = engine.extend(state, {1: prompts_of([3], 6)[0], 2: prompts_of([70], 7)[0]})  # 70 > one chunk
    history = engine.history(state)
    sequences = [history.sequence(b) for b in range(BATCH)]
    assert len(sequences[2]) == 4 + 24 + 45 + 24 + 70
    extended = np.asarray(engine.next_token_logits(state))

    fresh = np.asarray(engine.next_token_logits(engine.start(sequences)))
    reference = full_forward_last_logits(model, sequences)
    for b in range(BATCH):
        scale = np.abs(reference[b]).max()
        assert np.abs(extended[b] - fresh[b]).max() <= 1e-5 * scale
        assert np.abs(extended[b] - reference[b]).max() <= 1e-5 * scale


def test_replacing_a_tail_gives_the_logits_and_tokens_of_a_fresh_prefill(engine):
    """replace_tail keeps a prefix of each chosen sequence and appends a new tail: the next-token logits
    and the greedy continuation equal those of the whole new sequence prefilled from scratch."""
    greedy = SamplingParams(greedy=True, max_new_tokens=12, stop_token_ids=())
    state = engine.start(prompts_of([20, 33, 9], seed=11))
    state, _ = engine.decode(state, greedy)
    before = engine.history(state)
    tails = {
        0: (25, prompts_of([6], 12)[0]),  # keeps part of the sampled turn
        2: (before.lengths[2], prompts_of([14], 13)[0]),  # keeps everything: a plain extend
        1: (0, prompts_of([40], 14)[0]),
    }  # keeps nothing: a new conversation in the slot
    state = engine.replace_tail(state, tails)
    expected = [before.sequence(b)[:keep] + list(tail) for b, (keep, tail) in sorted(tails.items())]
    got_logits = np.asarray(engine.next_token_logits(state))
    fresh = engine.start(expected)
    want_logits = np.asarray(engine.next_token_logits(fresh))
    scale = np.abs(want_logits).max()
    assert np.abs(got_logits - want_logits).max() <= 1e-5 * scale
    _, got = engine.decode(state, greedy)
    _, want = engine.decode(fresh, greedy)
    assert got.token_lists() == want.token_lists()
    with pytest.raises(GenerationInputError, match="cannot keep"):
        engine.replace_tail(engine.start([[1, 2, 3]]), {0: (4, [5])})
    with pytest.raises(GenerationInputError, match="tail is empty"):
        engine.replace_tail(engine.start([[1, 2, 3]]), {0: (2, [])})


def test_sampler_logprobs_equal_the_trainers_recomputation(engine, model):
    state = engine.start(prompts_of([6, 21, 13], seed=8), rng=11)
    state, first = engine.decode(state, SAMPLED)
    state = engine.extend(state, {b: prompts_of([5 + 7 * b], 9 + b)[0] for b in range(BATCH)})
    state, second = engine.decode(state, SAMPLED, max_steps=10)
    history = engine.history(state)
    assert history.sampled.sum() == first.num_tokens.sum() + second.num_tokens.sum()
    recomputed = reference_logprobs(model, history.tokens, history.lengths, temperature=SAMPLED.temperature)
    mask = history.sampled & (np.arange(history.tokens.shape[1])[None] < history.lengths[:, None])
    assert np.abs(history.logprobs[mask] - recomputed[mask]).max() <= 1e-5
    assert np.all(history.logprobs[mask] < 0)

    # the trainer's own chunked log-prob function on the model's hidden states gives the same numbers
    import jax.numpy as jnp

    from envtune_jax.rl.logprobs import token_logprobs_and_entropy

    segments = (np.arange(history.tokens.shape[1])[None] < history.lengths[:, None]).astype(np.int32)
    hidden_btd, _ = model.hidden_states(jnp.asarray(history.tokens), None, jnp.asarray(segments))
    trainer, _ = token_logprobs_and_entropy(
        hidden_btd[:, :-1],
        model.unembedding().T,
        jnp.asarray(history.tokens[:, 1:]),
        SAMPLED.temperature,
        chunk_size_t=32,
        chunk_size_v=128,
    )
    assert np.abs(history.logprobs[:, 1:][mask[:, 1:]] - np.asarray(trainer)[mask[:, 1:]]).max() <= 1e-5
    for b in range(BATCH):  # the decode results are the same tokens and log-probs as the history
        start = len(prompts_of([6, 21, 13], seed=8)[b])
        np.testing.assert_array_equal(
            first.tokens[b, : first.num_tokens[b]], history.tokens[b, start : start + first.num_tokens[b]]
        )


def test_streaming_in_chunks_gives_the_same_tokens_as_one_call(engine):
    prompts = prompts_of([12, 3, 50], seed=12)
    _, whole = engine.decode(engine.start(prompts, rng=5), SAMPLED)
    state = engine.start(prompts, rng=5)
    pieces = []
    while True:
        state, part = engine.decode(state, SAMPLED, max_steps=5)
        if part.num_tokens.max() == 0:
            break
        assert part.num_tokens.max() <= 5
        pieces.append(part.token_lists())
    streamed = [sum((p[b] for p in pieces), []) for b in range(BATCH)]
    assert streamed == whole.token_lists()


def test_refilling_a_slot_leaves_the_others_untouched(engine):
    prompts = prompts_of([8, 16, 5], seed=13)
    greedy = SamplingParams(greedy=True, max_new_tokens=20, stop_token_ids=())
    _, alone = engine.decode(engine.start(prompts), greedy)
    new_prompt = prompts_of([27], seed=14)[0]
    _, fresh = engine.decode(engine.start([new_prompt] * BATCH), greedy)

    state = engine.start(prompts)
    state, head = engine.decode(state, greedy, max_steps=6)
    state = engine.refill(state, {1: new_prompt})
    state, tail = engine.decode(state, greedy)
    assert head.token_lists()[0] + tail.token_lists()[0] == alone.token_lists()[0]
    assert tail.token_lists()[1] == fresh.token_lists()[0]
    assert engine.history(state).sequence(1)[:27] == new_prompt


def test_per_sequence_budgets_and_active_mask(engine):
    state = engine.start(prompts_of([4, 9, 6], seed=15))
    params = SamplingParams(greedy=True, max_new_tokens=(3, 7, 5), stop_token_ids=())
    state, result = engine.decode(state, params, active=np.array([True, True, False]))
    assert result.num_tokens.tolist() == [3, 7, 0]
    assert result.finished.tolist() == [True, True, False]
    state, result = engine.decode(state, params)
    assert result.num_tokens.tolist() == [0, 0, 5]


def test_a_rollout_of_30_calls_compiles_a_bounded_number_of_times(engine):
    rng = np.random.RandomState(16)
    prompt_lengths = [3, 40, 17]
    before = engine.num_compilations
    state = engine.start(prompts_of(prompt_lengths, seed=17))
    requested_shapes = {tuple(prompt_lengths)}
    calls = 1
    while calls < 30:
        state, _ = engine.decode(state, SamplingParams(greedy=True, max_new_tokens=int(rng.randint(2, 7))))
        slots = rng.choice(BATCH, size=rng.randint(1, BATCH + 1), replace=False)
        appends = {int(s): rng.randint(0, VOCAB, rng.randint(1, 13)).tolist() for s in slots}
        requested_shapes.add(tuple(len(appends.get(b, [])) for b in range(BATCH)))
        state = engine.extend(state, appends)
        calls += 2
    assert engine.history(state).lengths.max() > 128  # the cache had to grow
    assert len(requested_shapes) >= 14
    # this rollout alone (10 when it runs first; other tests may have compiled some of its programs)
    assert engine.num_compilations - before <= 12, engine.trace_counts
    counts = engine.trace_counts  # everything this module's engine ever compiled, this rollout included
    # capacities {128, 256} x chunk widths {16, 32, 64} bound extend (all 3 slots) and extend_rows (1 slot);
    # decode: capacities x 2 sampling modes
    assert counts["extend"] <= 6 and counts["extend_rows"] <= 6 and counts["decode"] <= 4, counts
    assert counts["grow"] <= 1 and counts["copy_rows"] <= 2 and counts["rewind"] <= 2, counts
    assert engine.num_compilations <= 28, counts


def test_weights_are_the_models_arrays_and_updates_are_seen(model):
    import jax

    engine = GenerationEngine(model, batch_size=1, max_cache_len=64, cache_dtype="float32")
    params = jax.tree.leaves(engine.weights.params())
    originals = jax.tree.leaves(model)
    assert all(a.unsafe_buffer_pointer() == b.unsafe_buffer_pointer() for a, b in zip(params, originals))
    assert engine.weights.copied_arrays == 0
    state = engine.start([[1, 2, 3]])
    before = np.asarray(engine.next_token_logits(state))
    old = model.embed[...]
    model.embed.set_value(old * 2.0)  # what an optimizer step does to the trainer's model (tied unembedding)
    try:
        after = np.asarray(engine.next_token_logits(state))
    finally:
        model.embed.set_value(old)
    np.testing.assert_allclose(after, 2 * before, rtol=1e-5, atol=1e-5)


def test_unchanged_weights_are_not_walked_again_but_every_update_is_seen(model, monkeypatch):
    import jax
    from flax import nnx

    from envtune_jax.models.generation import weights as weights_module

    engine = GenerationEngine(model, batch_size=1, max_cache_len=64, cache_dtype="float32")
    first = engine.weights.params()
    walks = []
    real_state = nnx.state
    monkeypatch.setattr(weights_module.nnx, "state", lambda *a, **k: walks.append(1) or real_state(*a, **k))
    assert engine.weights.params() is first and not walks  # nothing changed: no graph walk, same object
    old = model.final_norm.weight[...]
    new_params = jax.tree.map(lambda x: x, nnx.state(model, nnx.Param))
    new_params["final_norm"]["weight"].set_value(old + 1.0)
    walks.clear()
    nnx.update(model, new_params)  # as PolicyLearner does after an optimizer step
    try:
        seen = engine.weights.params()
        assert walks and seen is not first
        np.testing.assert_array_equal(np.asarray(seen["final_norm"]["weight"][...]), np.asarray(old) + 1.0)
        assert engine.weights.params() is seen
    finally:
        model.final_norm.weight.set_value(old)
    assert np.array_equal(np.asarray(engine.weights.params()["final_norm"]["weight"][...]), np.asarray(old))


def test_bad_requests_raise_clear_errors(engine):
    with pytest.raises(GenerationInputError, match="token ids must be in"):
        engine.start([[1, VOCAB]])
    with pytest.raises(GenerationInputError, match="empty"):
        engine.start([[]])
    with pytest.raises(GenerationInputError, match="4 prompts for 3 slots"):
        engine.start([[1]] * 4)
    state = engine.start([[1, 2]])
    with pytest.raises(GenerationInputError, match="slot 3"):
        engine.extend(state, {3: [1]})
    with pytest.raises(CacheFullError, match="max_cache_len is 256"):
        engine.extend(state, {0: [1] * 255})
