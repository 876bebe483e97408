"""envtune-jax: Environment Tuning for multi-turn tool-use agents, in JAX.

Core shared by every layer: typed configs, mesh and sharding rules, checkpointing, the chat
protocol and the `envtune` command line. Models live in `models/`, RL in `rl/`, tool
environments in `environments/`.
"""

__version__ = "0.1.0"
