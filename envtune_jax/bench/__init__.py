"""Benchmarks, one module per kind (`generate`, ...), each with `add_arguments(parser)` and `run(args)`.

`envtune bench <kind>` (envtune_jax/cli/bench.py) dispatches to them; shared pieces: device limits
(`device_limits`) and on-device random weights (`random_weights`). Each prints one JSON line.
"""
