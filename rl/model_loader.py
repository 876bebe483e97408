"""The one model loader of every command, benchmark and run: an HF folder, an envtune checkpoint or a preset
with random weights -> the model, its tokenizer and where that tokenizer came from (`LoadedModel`).

- Dtypes: models/dtype_rule.py, one table by use (train: float32 weights and bfloat16 compute; inference:
  bfloat16; conversion: float32); explicit dtypes win, the source of the weights never decides.
- Tokenizer: the checkpoint's own files (an HF folder's tokenizer.json, an envtune checkpoint's tokenizer/
  folder that `envtune convert` filled), else the bundled Qwen3 tokenizer, said once per checkpoint on
  stderr (`checkpoint_tokenizer`). Random weights take the bundled tokenizer, cut to its first `bpe_ranks`
  BPE ranks when asked (a small output layer: the synthetic learning run). It is read when first used (a
  conversion only copies the files) and checked against the model's vocabulary then.
- Random weights: the model's own initialisers (models/weights.py) drawn from `seed`. Without a mesh they
  are drawn op by op; on a mesh one jitted program creates every weight straight into its sharding, so no
  device ever holds more than its shards, and the values are the same bit for bit (tested).
- Placement: on a mesh every weight lies in the sharding its logical axes give (envtune_jax/sharding.py);
  HF and envtune checkpoints are read shard by shard into it (models/hf_io.py, models/checkpointing.py).
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any, Mapping, Optional

import jax
from flax import nnx

from envtune_jax.chat.tokenizer import (
    check_tokenizer_fits_model,
    checkpoint_tokenizer,
    compact_qwen_tokenizer,
    has_tokenizer,
)
from envtune_jax.config import ConfigError
from envtune_jax.models import checkpointing, hf_io
from envtune_jax.models.config import Qwen3Config
from envtune_jax.models.config import preset as preset_config
from envtune_jax.models.dtype_rule import Use, model_dtypes
from envtune_jax.models.qwen3 import Qwen3, init_model
from envtune_jax.sharding import named_sharding

SOURCES = ("hf", "ckpt", "preset")


@dataclasses.dataclass
class LoadedModel:
    """A loaded model with its tokenizer. `tokenizer_dir` is the folder whose tokenizer files (and generation
    config) go with the model, if it has any: the HF folder, or an envtune checkpoint's tokenizer/ folder
    (None: random weights, or a checkpoint saved without them). A saved or exported copy carries them along."""

    model: Qwen3
    source: str  # "hf", "ckpt" or "preset"
    location: str  # the folder, or the preset's name
    tokenizer_dir: Optional[Path]
    bpe_ranks: Optional[int] = None  # random weights: the bundled tokenizer cut to this many BPE ranks

    @functools.cached_property
    def tokenizer(self):
        """The model's tokenizer (read on first use), checked against its vocabulary."""
        if self.source == "preset":
            tokenizer = (
                checkpoint_tokenizer(None, None) if self.bpe_ranks is None else compact_qwen_tokenizer(self.bpe_ranks)
            )
        else:
            tokenizer = checkpoint_tokenizer(self.tokenizer_dir, self.location)
        check_tokenizer_fits_model(tokenizer, self.model.config.vocab_size)
        return tokenizer

    @property
    def tokenizer_origin(self) -> str:
        """Where the tokenizer comes from, in words."""
        if has_tokenizer(self.tokenizer_dir):
            return str(self.tokenizer_dir)
        cut = f", cut to its first {self.bpe_ranks} BPE ranks" if self.bpe_ranks is not None else ""
        return f"the bundled Qwen3 tokenizer{cut}"


def load_model(
    *,
    use: Use,
    hf: str | Path | None = None,
    ckpt: str | Path | None = None,
    preset: str | None = None,
    param_dtype: str | None = None,
    dtype: str | None = None,
    mesh: jax.sharding.Mesh | None = None,
    seed: int = 0,
    bpe_ranks: int | None = None,
    preset_changes: Mapping[str, Any] | None = None,
    progress: bool = True,
    **kernels: Any,
) -> LoadedModel:
    """The model of exactly one source: `hf` (an HF folder), `ckpt` (an envtune checkpoint) or `preset` (random
    weights from `seed`, with `preset_changes` to its Qwen3Config fields), in the dtypes of `use` unless
    `param_dtype` / `dtype` are given, on `mesh` if given. `kernels`: attention_impl, decode_attention, remat.
    `progress` shows a bar while an HF folder loads."""
    chosen = [name for name, value in zip(SOURCES, (hf, ckpt, preset)) if value is not None]
    if len(chosen) != 1:
        raise ConfigError(f"load one model: set exactly one of hf, ckpt, preset (got {', '.join(chosen) or 'none'})")
    if bpe_ranks is not None and preset is None:
        raise ConfigError("bpe_ranks cuts the bundled tokenizer of random weights (a preset); a checkpoint has its own")
    dtypes = model_dtypes(use, param_dtype, dtype)
    if hf is not None:
        model = hf_io.load_pretrained(
            hf, dtype=dtypes.param, compute_dtype=dtypes.compute, mesh=mesh, progress=progress, **kernels
        )
        return LoadedModel(model, "hf", str(hf), Path(hf))
    if ckpt is not None:
        model = checkpointing.load_model(ckpt, mesh=mesh, dtype=dtypes.param, compute_dtype=dtypes.compute, **kernels)
        return LoadedModel(model, "ckpt", str(ckpt), checkpointing.tokenizer_dir(ckpt))
    cfg = preset_config(
        preset, **{**(preset_changes or {}), "param_dtype": dtypes.param, "dtype": dtypes.compute, **kernels}
    )
    return LoadedModel(random_weights(cfg, mesh, seed), "preset", preset, None, bpe_ranks)


def load_run_model(source, mesh: jax.sharding.Mesh | None, use: Use = "train") -> LoadedModel:
    """`load_model` of a recipe's `model:` section (envtune_jax.rl.run_config.ModelSourceConfig)."""
    return load_model(
        use=use,
        hf=source.hf,
        ckpt=source.ckpt,
        preset=source.preset,
        param_dtype=source.param_dtype,
        dtype=source.dtype,
        mesh=mesh,
        seed=source.seed,
        bpe_ranks=source.bpe_ranks,
        attention_impl=source.attention_impl,
        decode_attention=source.decode_attention,
        remat=source.remat,
    )


def random_weights(cfg: Qwen3Config, mesh: jax.sharding.Mesh | None = None, seed: int = 0) -> Qwen3:
    """A Qwen3 with the model's own random initialisation from `seed` (normal(0.02) matrices, unit norms). On a
    mesh, one jitted program creates each weight in its sharding; the values equal the eager ones."""
    if mesh is None:
        return init_model(cfg, seed)
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: init_model(cfg, seed)))
    shardings = jax.tree.map(
        lambda v: named_sharding(mesh, v.get_metadata()["logical_axes"], v.shape),
        abstract,
        is_leaf=lambda x: isinstance(x, nnx.Variable),
    )
    state = jax.jit(lambda: nnx.state(init_model(cfg, seed)), out_shardings=shardings)()
    return nnx.merge(graphdef, state)
