"""Benchmarks, one module per kind (`generate`, ...), each with `add_arguments(parser)` and `run(args)`.

`envtune bench <kind>` (envtune_jax/cli/bench.py) dispatches to them; ratios are read against
envtune_jax/device_limits.py; models load through rl/model_loader.py. Each prints one JSON line.
"""
