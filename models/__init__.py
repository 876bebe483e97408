"""Models: Qwen3 in Flax NNX, attention back-ends, HF safetensors import/export, generation.

Knows nothing of RL or tools: turns token ids into logits and KV caches.
"""
