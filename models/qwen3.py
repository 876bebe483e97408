"""Qwen3 decoder in Flax NNX: GQA attention with QK-RMSNorm before RoPE, SwiGLU, fp32 norms.

Weights use our einsum layouts (q [D, N, H], o [N, H, D], gate/up [D, F], down [F, D],
embeddings and lm_head [V, D]); each is declared once with its logical axes and HF name.
Callers pass positions and segment ids (padding/packing), or a KVCache for incremental decoding.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from envtune_jax.models import kv_cache as kv
from envtune_jax.models.attention import MaskInfo, attend, attend_cache
from envtune_jax.models.config import Qwen3Config
from envtune_jax.models.layers import MLP, RMSNorm, apply_rope, rope_cos_sin
from envtune_jax.models.prefix_attention import RowBranches, two_level_packed_attention
from envtune_jax.models.prefix_cache import PrefixKV, PrefixLayer
from envtune_jax.models.weights import WeightSpec, declare_weight
from envtune_jax.sharding import constrain

_REMAT_POLICIES = {
    "full": None,  # save nothing, recompute everything
    "dots": jax.checkpoint_policies.dots_saveable,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class Attention(nnx.Module):
    def __init__(self, cfg: Qwen3Config, prefix: str, rngs: nnx.Rngs):
        d, n, k, h = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        pd = jnp.dtype(cfg.param_dtype)
        p = f"{prefix}.self_attn"
        self.q = declare_weight(
            WeightSpec("D N H", ("embed", "q_heads", "head_dim"), f"{p}.q_proj.weight", "(N H) D"), (d, n, h), pd, rngs
        )
        self.k = declare_weight(
            WeightSpec("D K H", ("embed", "kv_heads", "head_dim"), f"{p}.k_proj.weight", "(K H) D"), (d, k, h), pd, rngs
        )
        self.v = declare_weight(
            WeightSpec("D K H", ("embed", "kv_heads", "head_dim"), f"{p}.v_proj.weight", "(K H) D"), (d, k, h), pd, rngs
        )
        self.o = declare_weight(
            WeightSpec("N H D", ("q_heads", "head_dim", "embed"), f"{p}.o_proj.weight", "D (N H)"), (n, h, d), pd, rngs
        )
        self.q_norm = RMSNorm(h, cfg.rms_norm_eps, f"{p}.q_norm.weight", "H", "norm", pd, rngs)
        self.k_norm = RMSNorm(h, cfg.rms_norm_eps, f"{p}.k_norm.weight", "H", "norm", pd, rngs)
        self.dtype = jnp.dtype(cfg.dtype)
        self.head_dim = h
        self.rope_theta = cfg.rope_theta
        self.impl = cfg.attention_impl
        self.decode = cfg.decode_attention

    def __call__(
        self,
        x_btd,
        positions_bt,
        segments_bt,
        cache_kv=None,
        cache_lengths_b=None,
        prefix: PrefixLayer | None = None,
        branches: RowBranches | None = None,
    ):
        """Returns (out [B, T, D], (new_keys, new_values) or None). `prefix`: the shared prompts the cached
        rows continue; `branches`: shared-prefix training rows (models/prefix_attention.py)."""
        dt = self.dtype
        q = jnp.einsum("BTD,DNH->BTNH", x_btd, self.q[...].astype(dt))
        k = jnp.einsum("BTD,DKH->BTKH", x_btd, self.k[...].astype(dt))
        v = jnp.einsum("BTD,DKH->BTKH", x_btd, self.v[...].astype(dt))
        q, k = self.q_norm(q), self.k_norm(k)
        cos, sin = rope_cos_sin(positions_bt, self.head_dim, self.rope_theta)
        q = constrain(apply_rope(q, cos, sin), ("act_batch", "act_seq", "act_q_heads", None))
        k = constrain(apply_rope(k, cos, sin), ("act_batch", "act_seq", "act_kv_heads", None))
        if cache_kv is None:
            plain_causal = segments_bt is None  # (hidden_states passes None for default positions, one segment)
            if plain_causal:
                segments_bt = jnp.ones(positions_bt.shape, jnp.int32)
            row_branches = None if branches is None else branches.branches_bt
            info = MaskInfo(
                positions_bt,
                segments_bt,
                positions_bt,
                segments_bt,
                self_attention=True,
                plain_causal=plain_causal,
                q_branches=row_branches,
                kv_branches=row_branches,
                row_layout=None if branches is None else branches.layout,
            )
            if branches is not None and branches.two_level:
                out = two_level_packed_attention(q, k, v, info, branches.layout)
            else:
                out = attend(q, k, v, info, self.impl)
            new_cache = None
        else:
            keys_bksh, values_bksh = cache_kv
            keys_bksh = kv.write_kv(keys_bksh, k, cache_lengths_b)
            values_bksh = kv.write_kv(values_bksh, v, cache_lengths_b)
            s = keys_bksh.shape[2]
            kv_lengths_b = cache_lengths_b + x_btd.shape[1]  # filled slots, the new tokens' included
            slots = jnp.broadcast_to(jnp.arange(s, dtype=jnp.int32)[None, :], (x_btd.shape[0], s))
            filled = (slots < kv_lengths_b[:, None]).astype(jnp.int32)
            if prefix is None:
                info = MaskInfo(positions_bt, jnp.ones_like(segments_bt), slots, filled, self_attention=False)
                out = attend_cache(
                    q,
                    keys_bksh.astype(dt),
                    values_bksh.astype(dt),
                    info,
                    self.impl,
                    self.decode,
                    kv_lengths_b=kv_lengths_b,
                )
            else:  # slot s holds position P + s (P: the row's prefix length; positions_bt already include it)
                suffix_positions = slots + (positions_bt[:, :1] - cache_lengths_b[:, None])
                info = MaskInfo(
                    positions_bt, jnp.ones_like(segments_bt), suffix_positions, filled, self_attention=False
                )
                out = prefix.attend(q, keys_bksh.astype(dt), values_bksh.astype(dt), info, self.decode, kv_lengths_b)
            new_cache = (keys_bksh, values_bksh)
        out = constrain(out, ("act_batch", "act_seq", "act_q_heads", None))
        return jnp.einsum("BTNH,NHD->BTD", out, self.o[...].astype(dt)), new_cache


class DecoderLayer(nnx.Module):
    def __init__(self, cfg: Qwen3Config, index: int, rngs: nnx.Rngs):
        prefix = f"model.layers.{index}"
        pd = jnp.dtype(cfg.param_dtype)
        self.input_norm = RMSNorm(
            cfg.hidden_size, cfg.rms_norm_eps, f"{prefix}.input_layernorm.weight", "D", "norm", pd, rngs
        )
        self.attn = Attention(cfg, prefix, rngs)
        self.post_attn_norm = RMSNorm(
            cfg.hidden_size, cfg.rms_norm_eps, f"{prefix}.post_attention_layernorm.weight", "D", "norm", pd, rngs
        )
        self.mlp = MLP(cfg.hidden_size, cfg.intermediate_size, f"{prefix}.mlp", pd, jnp.dtype(cfg.dtype), rngs)

    def __call__(
        self, x_btd, positions_bt, segments_bt, cache_kv=None, cache_lengths_b=None, prefix=None, branches=None
    ):
        attn_out, new_cache = self.attn(
            self.input_norm(x_btd), positions_bt, segments_bt, cache_kv, cache_lengths_b, prefix, branches
        )
        x_btd = x_btd + attn_out
        x_btd = x_btd + self.mlp(self.post_attn_norm(x_btd))
        return constrain(x_btd, ("act_batch", "act_seq", "act_embed")), new_cache


class Qwen3(nnx.Module):
    """The Qwen3 causal LM. `model(tokens)` → logits [B, T, V] (fp32)."""

    def __init__(self, cfg: Qwen3Config, rngs: nnx.Rngs):
        self.config = cfg
        pd = jnp.dtype(cfg.param_dtype)
        self.embed = declare_weight(
            WeightSpec("V D", ("vocab", "embed"), "model.embed_tokens.weight", "V D"),
            (cfg.vocab_size, cfg.hidden_size),
            pd,
            rngs,
        )
        self.layers = nnx.List([DecoderLayer(cfg, i, rngs) for i in range(cfg.num_layers)])
        self.final_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, "model.norm.weight", "D", "norm", pd, rngs)
        if not cfg.tie_word_embeddings:
            self.lm_head = declare_weight(
                WeightSpec("V D", ("vocab", "embed"), "lm_head.weight", "V D"),
                (cfg.vocab_size, cfg.hidden_size),
                pd,
                rngs,
            )

    def unembedding(self) -> jax.Array:
        """The output projection [V, D] (the embedding itself when tied)."""
        return (self.embed if self.config.tie_word_embeddings else self.lm_head)[...]

    def hidden_states(
        self,
        tokens_bt,
        positions_bt=None,
        segment_ids_bt=None,
        cache: kv.KVCache | None = None,
        num_new_b=None,
        prefix: PrefixKV | None = None,
        branches: RowBranches | None = None,
    ):
        """Final-normed hidden states [B, T, D] and the updated cache (or None).

        Without a cache: positions default to 0..T-1, segment ids to all ones (0 marks padding);
        `branches` marks shared-prefix training rows (a prompt, then continuations that each see it).
        With a cache: tokens are appended after each sequence's cached tokens; `num_new_b` [B]
        says how many of the T tokens are real per sequence (default all). With `prefix`, each
        sequence continues its prefix region's prompt: the cache holds only its own tokens.
        """
        b, t = tokens_bt.shape
        dt = jnp.dtype(self.config.dtype)
        if cache is not None:
            positions_bt = cache.lengths[:, None] + jnp.arange(t, dtype=jnp.int32)[None, :]
            if prefix is not None:
                positions_bt = positions_bt + prefix.offsets_b()[:, None]
            segment_ids_bt = jnp.ones((b, t), jnp.int32)
        plain_causal = positions_bt is None and segment_ids_bt is None  # attention may use a causal kernel
        if positions_bt is None:
            positions_bt = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32)[None, :], (b, t))
        if segment_ids_bt is None and not plain_causal:
            segment_ids_bt = jnp.ones((b, t), jnp.int32)
        x = jnp.take(self.embed[...], tokens_bt, axis=0).astype(dt)
        x = constrain(x, ("act_batch", "act_seq", "act_embed"))
        new_keys, new_values = [], []
        policies = self.config.remat_policies()
        for i, layer in enumerate(self.layers):
            layer_cache = (cache.keys[i], cache.values[i]) if cache is not None else None
            lengths = cache.lengths if cache is not None else None
            layer_prefix = prefix.layer(i) if prefix is not None else None
            if policies[i] != "none" and cache is None:
                call = nnx.remat(lambda lyr, *a: lyr(*a), policy=_REMAT_POLICIES[policies[i]])
                x, layer_new = call(layer, x, positions_bt, segment_ids_bt, None, None, None, branches)
            else:
                x, layer_new = layer(x, positions_bt, segment_ids_bt, layer_cache, lengths, layer_prefix, branches)
            if layer_new is not None:
                new_keys.append(layer_new[0])
                new_values.append(layer_new[1])
        x = self.final_norm(x)
        if cache is None:
            return x, None
        num_new_b = jnp.full((b,), t, jnp.int32) if num_new_b is None else num_new_b.astype(jnp.int32)
        return x, kv.KVCache(tuple(new_keys), tuple(new_values), cache.lengths + num_new_b)

    def logits(self, hidden_btd: jax.Array) -> jax.Array:
        """Logits [B, T, V] in fp32 from final hidden states."""
        w = self.unembedding().astype(hidden_btd.dtype)
        out = jnp.einsum("BTD,VD->BTV", hidden_btd, w, preferred_element_type=jnp.float32)
        return constrain(out, ("act_batch", "act_seq", "act_vocab"))

    def __call__(self, tokens_bt, positions_bt=None, segment_ids_bt=None) -> jax.Array:
        hidden, _ = self.hidden_states(tokens_bt, positions_bt, segment_ids_bt)
        return self.logits(hidden)


def init_model(cfg: Qwen3Config, seed: int = 0) -> Qwen3:
    """A randomly initialised model (normal(0.02) matrices, unit norms)."""
    return Qwen3(cfg, rngs=nnx.Rngs(params=seed))
