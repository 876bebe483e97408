"""A randomly initialised Qwen3 created directly on its devices, in its parameter dtype.

The model is built abstractly (shapes only), then each weight is drawn by a small jitted function
straight into its sharding (from its declared logical axes) and dtype: normal(0, 0.02) for
matrices, ones for norm scales. Nothing passes through host memory and nothing is ever float32
unless the parameters are, so a 4B model never exists as float32 on the host. The fill function
is compiled once per distinct (shape, dtype, sharding), about ten for a whole Qwen3, instead of
one huge initialisation program. For benchmarks: the values do not matter, shapes and layouts do.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from envtune_jax.sharding import named_sharding
from models.config import Qwen3Config
from models.qwen3 import Qwen3

INIT_STD = 0.02


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4))
def _fill(key: jax.Array, shape: tuple[int, ...], dtype, ones: bool, sharding) -> jax.Array:
    value = jnp.ones(shape, dtype) if ones else (INIT_STD * jax.random.normal(key, shape, dtype)).astype(dtype)
    return value if sharding is None else jax.lax.with_sharding_constraint(value, sharding)


def random_model(cfg: Qwen3Config, mesh: jax.sharding.Mesh | None = None, seed: int = 0) -> Qwen3:
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Qwen3(cfg, rngs=nnx.Rngs(seed))))
    key = jax.random.key(seed)
    for index, (_, variable) in enumerate(nnx.to_flat_state(state)):
        axes = tuple(variable.get_metadata()["logical_axes"])
        sharding = named_sharding(mesh, axes, variable.shape) if mesh is not None else None
        is_norm = axes == ("norm",)
        variable.set_value(_fill(jax.random.fold_in(key, index), tuple(variable.shape), jnp.dtype(variable.dtype),
                                 is_norm, sharding))
    return nnx.merge(graphdef, state)
