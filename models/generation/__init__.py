"""Sharded, jit-compiled generation for Qwen3: prefill, multi-turn extend, while-loop decode, sampling.

    engine = GenerationEngine(model, batch_size=8, max_cache_len=4096, mesh=mesh)
    state = engine.start(prompt_token_lists, rng=0)
    state, result = engine.decode(state, SamplingParams(temperature=1.0, max_new_tokens=512))
    state = engine.extend(state, {0: tool_response_tokens})      # next turn, no re-prefill
    state, result = engine.decode(state, params, active=[0])
    record = engine.history(state)     # tokens, sampler log-probs, sampled mask, lengths

See docs/generation.md for the design. This file imports nothing: names are imported from their modules
(`engine.GenerationEngine`, `sampling_params.SamplingParams`, `config.SamplerConfig`, `buckets.BucketConfig`),
so reading the settings (config.py, sampling_params.py, buckets.py, prefix_config.py) does not start JAX.

Reading order (each file needs only those before it):
1. state.py — what the engine holds per slot (the KV cache, token ids, sampler log-probs, turn flags), its
   arrays declared once in `FIELDS`; fields.py maps every state operation over such a table.
2. sampling_params.py, sampling.py — what a decode step does with the logits, and the log-prob convention
   the trainer shares.
3. steps.py — the compiled programs: `extend_chunk` (prefill is extend on empty slots), `extend_rows`, and
   `decode_loop`, one `lax.while_loop` with no Python per token.
4. buckets.py, extend_plan.py — the few shapes that compile, and how an extend is cut into calls.
5. engine.py — `GenerationEngine`: the host side (requests.py checks inputs, results.py pulls NumPy
   out, weights.py reads the trainer's weights in place).
6. prefix_state.py, prefix_regions.py, prefix_steps.py, prefix_engine.py — shared prompts (opt-in): the
   same pieces for a GRPO group's prompt held once in a region.
7. config.py, prefix_config.py — the YAML settings; reference.py — the plain paths the tests tie it to.
"""
