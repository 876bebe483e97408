"""Qwen3 model configuration: architecture read from an HF `config.json`, plus runtime choices.

Architecture fields mirror the HF names (vocab, hidden, intermediate, layers, heads, kv heads,
head_dim — independent of hidden/heads —, rope_theta, rms_norm_eps, tied embeddings, max
positions). Runtime fields (param/compute dtypes, attention implementation, decode attention, remat policy) are ours.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Literal

AttentionImpl = Literal["reference", "chunked", "xla", "cudnn", "splash"]
DecodeAttention = Literal["reference", "pallas"]  # one-token steps against the KV cache
# attention of sequences that continue a shared prompt: the prompt read once per region and merged by
# log-sum-exp ("two_level"), or each row's prompt concatenated before its own tokens ("reference")
PREFIX_ATTENTION = ("two_level", "reference")
RematPolicy = Literal["none", "full", "dots", "dots_no_batch"]


class NotAQwen3Checkpoint(ValueError):
    """The directory or config is not a dense Qwen3 checkpoint; the message names file and field."""


@dataclasses.dataclass(frozen=True)
class Qwen3Config:
    vocab_size: int = 151936
    hidden_size: int = 2560
    intermediate_size: int = 9728
    num_layers: int = 36
    num_heads: int = 32
    num_kv_heads: int = 8
    head_dim: int = 128
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = True
    max_position_embeddings: int = 40960
    # runtime
    param_dtype: str = "float32"
    dtype: str = "float32"
    attention_impl: AttentionImpl = "reference"
    decode_attention: DecodeAttention = "reference"
    remat: str = "none"  # one RematPolicy for all layers, or comma-separated, one per layer

    def __post_init__(self):
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}")
        self.remat_policies()  # validates
        if self.decode_attention not in DecodeAttention.__args__:  # type: ignore[attr-defined]
            raise ValueError(
                f"unknown decode_attention '{self.decode_attention}'; choose from {DecodeAttention.__args__}"
            )  # type: ignore[attr-defined]

    def remat_policies(self) -> tuple[str, ...]:
        """The remat policy of each layer."""
        names = [p.strip() for p in self.remat.split(",")]
        allowed = RematPolicy.__args__  # type: ignore[attr-defined]
        for name in names:
            if name not in allowed:
                raise ValueError(f"unknown remat policy '{name}'; choose from {allowed}")
        if len(names) == 1:
            return tuple(names) * self.num_layers
        if len(names) != self.num_layers:
            raise ValueError(f"remat lists {len(names)} policies for {self.num_layers} layers")
        return tuple(names)

    @property
    def num_params(self) -> int:
        d, f, h = self.hidden_size, self.intermediate_size, self.head_dim
        attn = d * h * (self.num_heads * 2 + self.num_kv_heads * 2) + 2 * h
        per_layer = attn + 3 * d * f + 2 * d
        head = 0 if self.tie_word_embeddings else self.vocab_size * d
        return self.vocab_size * d + self.num_layers * per_layer + d + head

    @property
    def layer_params(self) -> int:
        """Parameters outside the embedding table(s): what a forward pass multiplies by (the embedding is
        a lookup; the output layer is left out too, as prefill and extend compute no logits)."""
        tables = 1 if self.tie_word_embeddings else 2
        return self.num_params - tables * self.vocab_size * self.hidden_size

    def replace(self, **changes: Any) -> "Qwen3Config":
        return dataclasses.replace(self, **changes)


_HF_FIELDS = {
    "vocab_size": "vocab_size",
    "hidden_size": "hidden_size",
    "intermediate_size": "intermediate_size",
    "num_hidden_layers": "num_layers",
    "num_attention_heads": "num_heads",
    "num_key_value_heads": "num_kv_heads",
    "head_dim": "head_dim",
    "rope_theta": "rope_theta",
    "rms_norm_eps": "rms_norm_eps",
    "tie_word_embeddings": "tie_word_embeddings",
    "max_position_embeddings": "max_position_embeddings",
}


def _rope_theta(hf: dict[str, Any]) -> float | None:
    if "rope_theta" in hf:
        return hf["rope_theta"]
    params = hf.get("rope_parameters") or {}
    return params.get("rope_theta")


_POSITIVE_INT_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "max_position_embeddings",
)


def _field_error(source: str, name: str, value: Any, expected: str) -> NotAQwen3Checkpoint:
    return NotAQwen3Checkpoint(f"{source}: field '{name}' is {value!r}; expected {expected}")


def _check_computation(hf: dict[str, Any], source: str) -> None:
    """Rejects config.json settings that change what the model computes and that this Qwen3 does not
    implement (rather than ignoring them and computing something else)."""
    act = hf.get("hidden_act", "silu")
    if act != "silu":
        raise NotAQwen3Checkpoint(f"{source}: hidden_act={act!r}; envtune-jax's Qwen3 MLP uses silu only")
    if hf.get("attention_bias", False) is not False:
        raise NotAQwen3Checkpoint(
            f"{source}: attention_bias={hf['attention_bias']!r}; envtune-jax's Qwen3 has no "
            "biases on the attention projections"
        )
    if hf.get("use_sliding_window", False) is not False:
        raise NotAQwen3Checkpoint(
            f"{source}: use_sliding_window={hf['use_sliding_window']!r} (sliding_window="
            f"{hf.get('sliding_window')!r}); envtune-jax supports full attention only"
        )
    layer_types = hf.get("layer_types")
    if layer_types is not None and any(kind != "full_attention" for kind in layer_types):
        other = sorted({str(kind) for kind in layer_types if kind != "full_attention"})
        raise NotAQwen3Checkpoint(f"{source}: layer_types lists {other}; envtune-jax supports full_attention only")
    for name in ("rope_scaling", "rope_parameters"):
        rope = hf.get(name)
        if rope is None or rope == {}:
            continue
        if not isinstance(rope, dict):
            raise _field_error(source, name, rope, "an object or null")
        kind = rope.get("rope_type", rope.get("type"))
        if kind is None and not (name == "rope_parameters" and set(rope) <= {"rope_theta"}):
            raise NotAQwen3Checkpoint(
                f"{source}: {name} {rope} names no rope_type; envtune-jax supports default RoPE only (no scaling)"
            )
        if kind not in (None, "default"):
            raise NotAQwen3Checkpoint(f"{source}: {name} of rope_type {kind!r} is not supported (default RoPE only)")


def _check_field_types(kwargs: dict[str, Any], source: str) -> None:
    for hf_name, ours in _HF_FIELDS.items():
        value = kwargs[ours]
        if value is None and hf_name == "head_dim":  # absent: hidden_size / num_attention_heads
            continue
        if hf_name in _POSITIVE_INT_FIELDS:
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise _field_error(source, hf_name, value, "a positive integer")
        elif hf_name == "tie_word_embeddings":
            if not isinstance(value, bool):
                raise _field_error(source, hf_name, value, "true or false")
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise _field_error(source, hf_name, value, "a positive number")
    if kwargs["num_heads"] % kwargs["num_kv_heads"]:
        raise NotAQwen3Checkpoint(
            f"{source}: num_attention_heads {kwargs['num_heads']} is not a multiple of "
            f"num_key_value_heads {kwargs['num_kv_heads']}"
        )


def from_hf_dict(hf: dict[str, Any], source: str = "config.json", **runtime: Any) -> Qwen3Config:
    """Builds a Qwen3Config from the contents of an HF config.json, rejecting other models, settings this
    Qwen3 does not compute (another activation, biases, sliding windows, RoPE scaling) and malformed
    fields, each with a message naming the file and the field."""
    if not isinstance(hf, dict):
        raise NotAQwen3Checkpoint(f"{source}: expected a JSON object, got {type(hf).__name__}")
    model_type = hf.get("model_type")
    archs = hf.get("architectures") or []
    if model_type != "qwen3" or (archs and "Qwen3ForCausalLM" not in archs):
        raise NotAQwen3Checkpoint(
            f"{source}: model_type={model_type!r}, architectures={archs}; envtune-jax loads dense Qwen3 "
            "(model_type 'qwen3', Qwen3ForCausalLM) only"
        )
    _check_computation(hf, source)
    kwargs: dict[str, Any] = {}
    for hf_name, ours in _HF_FIELDS.items():
        value = _rope_theta(hf) if hf_name == "rope_theta" else hf.get(hf_name)
        if value is None:
            if hf_name == "tie_word_embeddings":
                value = False
            elif hf_name != "head_dim":  # (derived below)
                raise NotAQwen3Checkpoint(f"{source}: missing field '{hf_name}'")
        kwargs[ours] = value
    _check_field_types(kwargs, source)
    if kwargs["head_dim"] is None:
        kwargs["head_dim"] = kwargs["hidden_size"] // kwargs["num_heads"]
    kwargs["rope_theta"] = float(kwargs["rope_theta"])
    return Qwen3Config(**kwargs, **runtime)


def load_hf_config(hf_dir: str | Path, **runtime: Any) -> Qwen3Config:
    path = Path(hf_dir) / "config.json"
    if not path.is_file():
        raise NotAQwen3Checkpoint(f"{path}: not found; expected a Hugging Face checkpoint directory")
    try:
        hf = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise NotAQwen3Checkpoint(f"{path}: not a text file") from None
    except json.JSONDecodeError as exc:
        raise NotAQwen3Checkpoint(
            f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
        ) from None
    return from_hf_dict(hf, str(path), **runtime)


def to_hf_dict(config: Qwen3Config) -> dict[str, Any]:
    """The HF config.json contents for this architecture (loadable by transformers)."""
    hf = {hf_name: getattr(config, ours) for hf_name, ours in _HF_FIELDS.items()}
    hf.update(
        architectures=["Qwen3ForCausalLM"],
        model_type="qwen3",
        hidden_act="silu",
        attention_bias=False,
        attention_dropout=0.0,
        initializer_range=0.02,
        use_cache=True,
        use_sliding_window=False,
        sliding_window=None,
        max_window_layers=config.num_layers,
        bos_token_id=151643,
        eos_token_id=151645,
        torch_dtype=config.param_dtype,
        rope_scaling=None,
    )
    return hf


PRESETS: dict[str, Qwen3Config] = {
    "qwen3-0.6b": Qwen3Config(
        hidden_size=1024,
        intermediate_size=3072,
        num_layers=28,
        num_heads=16,
        num_kv_heads=8,
        head_dim=128,
        tie_word_embeddings=True,
    ),
    "qwen3-1.7b": Qwen3Config(
        hidden_size=2048,
        intermediate_size=6144,
        num_layers=28,
        num_heads=16,
        num_kv_heads=8,
        head_dim=128,
        tie_word_embeddings=True,
    ),
    "qwen3-4b": Qwen3Config(
        hidden_size=2560,
        intermediate_size=9728,
        num_layers=36,
        num_heads=32,
        num_kv_heads=8,
        head_dim=128,
        tie_word_embeddings=True,
    ),
    "qwen3-4b-instruct-2507": Qwen3Config(
        hidden_size=2560,
        intermediate_size=9728,
        num_layers=36,
        num_heads=32,
        num_kv_heads=8,
        head_dim=128,
        tie_word_embeddings=True,
        rope_theta=5_000_000.0,
        max_position_embeddings=262144,
    ),
    "qwen3-8b": Qwen3Config(
        hidden_size=4096,
        intermediate_size=12288,
        num_layers=36,
        num_heads=32,
        num_kv_heads=8,
        head_dim=128,
        tie_word_embeddings=False,
    ),
    # CPU demo/tests: the real vocabulary, tiny everything else (head_dim != hidden/heads on purpose).
    "tiny": Qwen3Config(
        hidden_size=64,
        intermediate_size=128,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=32,
        tie_word_embeddings=True,
        max_position_embeddings=32768,
    ),
    # The synthetic learning run's model: Qwen's BPE cut to its first 8,192 ranks + 26 added tokens, padded to
    # 8,320 rows (`model.bpe_ranks: 8192`); hidden 64 (hidden 32 does not learn even a supervised copy of the
    # request in 100 steps).
    "tiny-8k": Qwen3Config(
        vocab_size=8320,
        hidden_size=64,
        intermediate_size=128,
        num_layers=2,
        num_heads=4,
        num_kv_heads=1,
        head_dim=16,
        tie_word_embeddings=False,
        max_position_embeddings=4096,
    ),
}


def preset(name: str, **runtime: Any) -> Qwen3Config:
    if name not in PRESETS:
        import difflib

        close = difflib.get_close_matches(name, PRESETS, n=1)
        raise KeyError(
            f"unknown preset '{name}'"
            + (f"; did you mean '{close[0]}'?" if close else f"; choose from {sorted(PRESETS)}")
        )
    return PRESETS[name].replace(**runtime)
