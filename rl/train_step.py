"""The jit-compiled, sharded policy-gradient step: micro-batched gradient accumulation over the
GRPO-family loss, AdamW update, frozen reference policy for the KL term.

Batch convention (all [B, T], aligned with `tokens_bt`): `loss_mask_bt[b, t] = 1` iff token t was
sampled by the model; `old_logprobs_bt[b, t]` is the behaviour policy's log-prob of token t (0
elsewhere); `advantages_b` [B] is broadcast over the sequence's model tokens. Log-probs are
computed in (sequence × vocabulary) chunks, never materialising [B, T, V] logits in fp32.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Literal

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from envtune_jax.sharding import constrain
from rl.advantages import token_advantages
from rl.logprobs import token_logprobs_and_entropy
from rl.losses import aggregation_weight, policy_loss
from rl.optimizer import OptimizerConfig, make_optimizer
from rl.rl_config import LossConfig


@dataclasses.dataclass(frozen=True)
class TrainStepConfig:
    micro_batch_size: int = 0  # 0: the whole batch at once
    temperature: float = 1.0  # must equal the sampler's, so log-probs agree
    logprob_chunk_t: int = 512
    logprob_chunk_v: int = 16384
    old_logprobs: Literal["sampler", "recompute"] = "sampler"


@dataclasses.dataclass
class TrainBatch:
    tokens_bt: jax.Array  # int32
    loss_mask_bt: jax.Array  # float32
    old_logprobs_bt: jax.Array  # float32
    advantages_b: jax.Array  # float32


jax.tree_util.register_dataclass(TrainBatch, data_fields=["tokens_bt", "loss_mask_bt", "old_logprobs_bt", "advantages_b"],
                                 meta_fields=[])


@dataclasses.dataclass
class TrainState:
    params: nnx.State
    opt_state: Any
    step: jax.Array  # int32 scalar


jax.tree_util.register_dataclass(TrainState, data_fields=["params", "opt_state", "step"], meta_fields=[])


def sequence_logprobs(graphdef: nnx.GraphDef, params: nnx.State, tokens_bt: jax.Array, temperature: float,
                      chunk_t: int, chunk_v: int) -> tuple[jax.Array, jax.Array]:
    """(logp_bt, entropy_bt): log-prob of each token given its prefix (0 at t = 0), and the policy
    entropy at the position that predicted it. Differentiable in `params`."""
    model = nnx.merge(graphdef, params)
    hidden_btd, _ = model.hidden_states(tokens_bt[:, :-1])
    unembed_dv = model.unembedding().T
    logp, entropy = token_logprobs_and_entropy(hidden_btd, unembed_dv, tokens_bt[:, 1:], temperature, chunk_t, chunk_v)
    pad = jnp.zeros((tokens_bt.shape[0], 1), logp.dtype)
    return jnp.concatenate([pad, logp], axis=1), jnp.concatenate([pad, entropy], axis=1)


def _split_micro(x: jax.Array, num_micro: int) -> jax.Array:
    """[B, ...] → [M, B/M, ...], micro-batch m taking rows m, m+M, ... (keeps data-parallel shards local)."""
    b = x.shape[0]
    return jnp.swapaxes(x.reshape(b // num_micro, num_micro, *x.shape[1:]), 0, 1)


class Trainer:
    """Owns the optimizer and the compiled step. `state = trainer.init(model)`; `trainer.step(...)`."""

    def __init__(self, graphdef: nnx.GraphDef, loss: LossConfig, optimizer: OptimizerConfig, step_cfg: TrainStepConfig):
        self.graphdef = graphdef
        self.loss_cfg = loss
        self.step_cfg = step_cfg
        self.tx = make_optimizer(optimizer)
        self._step = jax.jit(self._train_step, donate_argnums=(0,))
        self._logprobs = jax.jit(functools.partial(self._no_grad_logprobs))

    def init(self, params: nnx.State) -> TrainState:
        return TrainState(params, self.tx.init(params), jnp.zeros((), jnp.int32))

    def _no_grad_logprobs(self, params, tokens_bt):
        cfg = self.step_cfg
        return sequence_logprobs(self.graphdef, params, tokens_bt, cfg.temperature, cfg.logprob_chunk_t, cfg.logprob_chunk_v)

    def logprobs(self, params: nnx.State, tokens_bt: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(logp_bt, entropy_bt) without gradients (reference / recomputed old log-probs)."""
        return self._logprobs(params, tokens_bt)

    def step(self, state: TrainState, ref_params: nnx.State | None, batch: TrainBatch) -> tuple[TrainState, dict]:
        """One optimizer step on the whole batch (gradient-accumulated over micro-batches)."""
        if ref_params is None and self.loss_cfg.kl_coef > 0:
            raise ValueError("kl_coef > 0 needs the reference parameters (ref_params)")
        return self._step(state, ref_params, batch)

    def _train_step(self, state: TrainState, ref_params, batch: TrainBatch):
        cfg, loss_cfg = self.step_cfg, self.loss_cfg
        b = batch.tokens_bt.shape[0]
        micro = cfg.micro_batch_size or b
        if b % micro:
            raise ValueError(f"batch {b} is not a multiple of micro_batch_size {micro}")
        num_micro = b // micro
        mask_bt = batch.loss_mask_bt.astype(jnp.float32)
        ref_bt = None
        if ref_params is not None and loss_cfg.kl_coef > 0:
            ref_bt, _ = jax.lax.stop_gradient(self._no_grad_logprobs(ref_params, batch.tokens_bt))
        old_bt = batch.old_logprobs_bt
        sampler_vs_recomputed = jnp.zeros((), jnp.float32)
        if cfg.old_logprobs == "recompute":
            recomputed, _ = jax.lax.stop_gradient(self._no_grad_logprobs(state.params, batch.tokens_bt))
            diff = jnp.where(mask_bt > 0, recomputed - old_bt, 0.0)
            sampler_vs_recomputed = jnp.sum(jnp.exp(diff) * mask_bt) / jnp.maximum(mask_bt.sum(), 1.0)
            old_bt = recomputed
        adv_bt = token_advantages(batch.advantages_b, mask_bt)
        total_weight = aggregation_weight(mask_bt, loss_cfg.loss_agg_mode)

        def micro_loss(params, tokens, mask, old, ref, adv):
            logp, entropy = sequence_logprobs(self.graphdef, params, tokens, cfg.temperature,
                                              cfg.logprob_chunk_t, cfg.logprob_chunk_v)
            loss, metrics = policy_loss(logp, old, ref, adv, entropy, mask, loss_cfg)
            weight = aggregation_weight(mask, loss_cfg.loss_agg_mode)
            return loss * weight / jnp.maximum(total_weight, 1.0), (metrics, weight)

        grad_fn = jax.value_and_grad(micro_loss, has_aux=True)
        ref_or_zero = ref_bt if ref_bt is not None else jnp.zeros_like(old_bt)
        parts = [_split_micro(x, num_micro) for x in (batch.tokens_bt, mask_bt, old_bt, ref_or_zero, adv_bt)]

        def accumulate(carry, xs):
            grads, loss_sum, metric_sums = carry
            tokens, mask, old, ref, adv = xs
            tokens = constrain(tokens, ("act_batch", "act_seq"))
            (loss, (metrics, weight)), g = grad_fn(state.params, tokens, mask, old, ref if ref_bt is not None else None, adv)
            grads = jax.tree.map(jnp.add, grads, g)
            metric_sums = {k: metric_sums[k] + v * weight for k, v in metrics.items()}
            return (grads, loss_sum + loss, metric_sums), None

        zeros = jax.tree.map(jnp.zeros_like, state.params)
        metric_zeros = {k: jnp.zeros((), jnp.float32) for k in
                        ("pg_loss", "kl", "entropy", "clip_frac_low", "clip_frac_high", "dual_clip_frac", "ratio_mean", "approx_kl")}
        (grads, loss, metric_sums), _ = jax.lax.scan(accumulate, (zeros, jnp.zeros(()), metric_zeros), parts)
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {k: v / jnp.maximum(total_weight, 1.0) for k, v in metric_sums.items()}
        metrics.update(loss=loss, grad_norm=grad_norm, model_tokens=mask_bt.sum(),
                       sampler_recompute_ratio=sampler_vs_recomputed)
        return TrainState(params, opt_state, state.step + 1), metrics
