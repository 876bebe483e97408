"""The jit-compiled, sharded policy-gradient step: micro-batched gradient accumulation over the
GRPO-family loss, AdamW update, frozen reference policy for the KL term.

The batch is packed (rl/batch.py): whole sequences [B, T] go through the transformer, but only the
hidden states that predict model-sampled tokens ([B, K] of them) are projected onto the vocabulary,
in (token × vocabulary) chunks, so neither [B, T, V] logits nor prompt/environment positions cost
anything at the output layer. Advantages [B] are broadcast over each sequence's sampled tokens.

Old log-probs: "recompute" (verl 0.4.1, the authors' stack: the actor recomputes them before the update,
so with one update per batch every ratio is exactly 1) or "sampler" (the rollout's own log-probs, which
differ by the numerics of the sampler: bf16 cache and unembedding, other kernels). Either way every step
logs the sampler-trainer mismatch over the response tokens: `sampler_logp_abs_diff` (mean |Δ log p|) and
`sampler_ratio_outside_clip` (share of tokens whose trainer/sampler ratio lies outside the clip range).

Loss weighting across micro-batches: "batch" aggregates over the whole batch whatever the micro-batching
(token-mean is the exact token mean of the batch); "per_micro_batch" is verl 0.4.1's: the batch is cut
into groups of `weighting_micro_batch_rows` rows (verl's per-GPU micro-batch), each is aggregated alone
and the loss is the mean of the groups' losses (verl divides each micro-batch loss by the number of them).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from envtune_jax.rl.advantages import token_advantages
from envtune_jax.rl.batch import TrainBatch
from envtune_jax.rl.logprobs import token_logprobs_and_entropy
from envtune_jax.rl.losses import aggregation_weight, policy_loss, sampler_mismatch_sums
from envtune_jax.rl.optimizer import OptimizerConfig, make_optimizer
from envtune_jax.rl.prefix_packing import PrefixRows, packed_sampled_logprobs
from envtune_jax.rl.rl_config import LossConfig
from envtune_jax.rl.train_step_config import TrainStepConfig
from envtune_jax.sharding import constrain


@dataclasses.dataclass
class TrainState:
    params: nnx.State
    opt_state: Any
    step: jax.Array  # int32 scalar


jax.tree_util.register_dataclass(TrainState, data_fields=["params", "opt_state", "step"], meta_fields=[])


def sampled_logprobs(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    tokens_bt: jax.Array,
    target_index_bk: jax.Array,
    temperature: float,
    chunk_t: int,
    chunk_v: int,
) -> tuple[jax.Array, jax.Array]:
    """(logp_bk, entropy_bk): log-prob of token tokens[b, target_index[b, k]] given its prefix, and the
    policy entropy at the position predicting it. Differentiable in `params`. tokens_bt may be shared-prefix
    rows (PrefixRows: sample b in row b mod R)."""
    if isinstance(tokens_bt, PrefixRows):
        return packed_sampled_logprobs(graphdef, params, tokens_bt, target_index_bk, temperature, chunk_t, chunk_v)
    model = nnx.merge(graphdef, params)
    hidden_btd, _ = model.hidden_states(tokens_bt)
    source_bk = jnp.maximum(target_index_bk - 1, 0)
    hidden_bkd = jnp.take_along_axis(hidden_btd, source_bk[:, :, None], axis=1)
    targets_bk = jnp.take_along_axis(tokens_bt, target_index_bk, axis=1)
    unembed_dv = model.unembedding().T
    return token_logprobs_and_entropy(hidden_bkd, unembed_dv, targets_bk, temperature, chunk_t, chunk_v)


def sequence_logprobs(
    graphdef: nnx.GraphDef, params: nnx.State, tokens_bt: jax.Array, temperature: float, chunk_t: int, chunk_v: int
) -> tuple[jax.Array, jax.Array]:
    """(logp_bt, entropy_bt) of every token given its prefix (0 at t = 0): the dense reference form."""
    b, t = tokens_bt.shape
    index_bk = jnp.broadcast_to(jnp.arange(1, t, dtype=jnp.int32)[None], (b, t - 1))
    logp, entropy = sampled_logprobs(graphdef, params, tokens_bt, index_bk, temperature, chunk_t, chunk_v)
    pad = jnp.zeros((b, 1), logp.dtype)
    return jnp.concatenate([pad, logp], axis=1), jnp.concatenate([pad, entropy], axis=1)


def _split_micro(x: jax.Array, num_micro: int) -> jax.Array:
    """[B, ...] → [M, B/M, ...], micro-batch m taking rows m, m+M, ... (keeps data-parallel shards local); x may
    be a pytree of such arrays (shared-prefix rows)."""

    def split(a):
        return jnp.swapaxes(a.reshape(a.shape[0] // num_micro, num_micro, *a.shape[1:]), 0, 1)

    return jax.tree.map(split, x)


class Trainer:
    """Owns the optimizer and the compiled step. `state = trainer.init(model)`; `trainer.step(...)`."""

    def __init__(self, graphdef: nnx.GraphDef, loss: LossConfig, optimizer: OptimizerConfig, step_cfg: TrainStepConfig):
        self.graphdef = graphdef
        self.loss_cfg = loss
        self.step_cfg = step_cfg
        self.tx = make_optimizer(optimizer)
        self._step = jax.jit(self._train_step, donate_argnums=(0,))
        self._supervised = jax.jit(self._supervised_step, donate_argnums=(0,))
        self._logprobs = jax.jit(self._dense_logprobs)

    def init(self, params: nnx.State) -> TrainState:
        return TrainState(params, self.tx.init(params), jnp.zeros((), jnp.int32))

    def compiled_variants(self) -> int:
        """How many batch shapes the GRPO step has been compiled for (jax.jit's cache size; -1 if jax hides it)."""
        cache_size = getattr(self._step, "_cache_size", None)
        return int(cache_size()) if callable(cache_size) else -1

    def _sampled(self, params, tokens_bt, index_bk):
        cfg = self.step_cfg
        return sampled_logprobs(
            self.graphdef, params, tokens_bt, index_bk, cfg.temperature, cfg.logprob_chunk_t, cfg.logprob_chunk_v
        )

    def _dense_logprobs(self, params, tokens_bt):
        cfg = self.step_cfg
        return sequence_logprobs(
            self.graphdef, params, tokens_bt, cfg.temperature, cfg.logprob_chunk_t, cfg.logprob_chunk_v
        )

    def logprobs(self, params: nnx.State, tokens_bt: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(logp_bt, entropy_bt) of every token, without gradients (for tests and analysis)."""
        return self._logprobs(params, tokens_bt)

    def step(self, state: TrainState, ref_params: nnx.State | None, batch: TrainBatch) -> tuple[TrainState, dict]:
        """One optimizer step on the whole batch (gradient-accumulated over micro-batches)."""
        if ref_params is None and self.loss_cfg.kl_coef > 0:
            raise ValueError("kl_coef > 0 needs the reference parameters (ref_params)")
        if (self.step_cfg.shared_prefix != "off") != isinstance(batch.tokens_bt, PrefixRows):
            raise ValueError(
                f"train_step.shared_prefix is '{self.step_cfg.shared_prefix}' but the batch is "
                f"{'not ' if self.step_cfg.shared_prefix != 'off' else ''}packed with shared prefixes"
            )
        return self._step(state, ref_params, batch)

    def supervised_step(self, state: TrainState, batch: TrainBatch) -> tuple[TrainState, dict]:
        """One cross-entropy step on the batch's masked tokens (demonstration warm-up; no advantages)."""
        return self._supervised(state, batch)

    def _supervised_step(self, state: TrainState, batch: TrainBatch):
        def loss_fn(params):
            logp_bk, _ = self._sampled(params, batch.tokens_bt, batch.target_index_bk)
            return -jnp.sum(jnp.where(batch.mask_bk > 0, logp_bk, 0.0)) / jnp.maximum(batch.mask_bk.sum(), 1.0)

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return TrainState(params, opt_state, state.step + 1), {"nll": loss, "grad_norm": optax.tree.norm(grads)}

    def _train_step(self, state: TrainState, ref_params, batch: TrainBatch):
        cfg, loss_cfg = self.step_cfg, self.loss_cfg
        b = batch.tokens_bt.shape[0]
        micro = cfg.micro_batch_size or b
        if b % micro:
            raise ValueError(f"batch {b} is not a multiple of micro_batch_size {micro}")
        num_micro = b // micro
        group_rows = cfg.weighting_micro_batch_rows if cfg.loss_weighting == "per_micro_batch" else 0
        if group_rows and micro % group_rows:
            raise ValueError(
                f"micro-batch of {micro} rows is not a multiple of weighting_micro_batch_rows {group_rows}"
            )
        mask_bk = batch.mask_bk.astype(jnp.float32)
        ref_bk = None
        if ref_params is not None and loss_cfg.kl_coef > 0:
            ref_bk, _ = jax.lax.stop_gradient(self._sampled(ref_params, batch.tokens_bt, batch.target_index_bk))
        sampler_bk = batch.old_logprobs_bk
        old_bk = sampler_bk
        if cfg.old_logprobs == "recompute":
            old_bk, _ = jax.lax.stop_gradient(self._sampled(state.params, batch.tokens_bt, batch.target_index_bk))
        adv_bk = token_advantages(batch.advantages_b, mask_bk)
        # The denominator that makes the micro-batch sum the batch's loss: the aggregation's weight of the whole
        # batch, or (per_micro_batch) the number of weighting groups, each of which then counts once.
        total_weight = (
            jnp.float32(b // group_rows) if group_rows else aggregation_weight(mask_bk, loss_cfg.loss_agg_mode)
        )

        def micro_loss(params, tokens, index, mask, old, sampler, ref, adv):
            logp, entropy = self._sampled(params, tokens, index)
            if group_rows:  # [micro, K] -> [groups, group_rows, K]: one aggregate per group

                def grouped(x):
                    return None if x is None else x.reshape(-1, group_rows, x.shape[-1])

                losses_n, metrics_n = jax.vmap(lambda *args: policy_loss(*args, loss_cfg))(
                    grouped(logp), grouped(old), grouped(ref), grouped(adv), grouped(entropy), grouped(mask)
                )
                loss_sum = jnp.sum(losses_n)
                metric_sums = {k: jnp.sum(v) for k, v in metrics_n.items()}
            else:
                loss, metrics = policy_loss(logp, old, ref, adv, entropy, mask, loss_cfg)
                weight = aggregation_weight(mask, loss_cfg.loss_agg_mode)
                loss_sum = loss * weight
                metric_sums = {k: v * weight for k, v in metrics.items()}
            mismatch = sampler_mismatch_sums(
                jax.lax.stop_gradient(logp), sampler, mask, loss_cfg.eps_low, loss_cfg.eps_high
            )
            return loss_sum / jnp.maximum(total_weight, 1.0), (metric_sums, mismatch)

        grad_fn = jax.value_and_grad(micro_loss, has_aux=True)
        ref_or_zero = ref_bk if ref_bk is not None else jnp.zeros_like(old_bk)
        parts = [
            _split_micro(x, num_micro)
            for x in (batch.tokens_bt, batch.target_index_bk, mask_bk, old_bk, sampler_bk, ref_or_zero, adv_bk)
        ]

        def accumulate(carry, xs):
            grads, loss_sum, metric_sums, mismatch_sums = carry
            tokens, index, mask, old, sampler, ref, adv = xs
            tokens = constrain(tokens, ("act_batch", "act_seq"))
            (loss, (metrics, mismatch)), g = grad_fn(
                state.params, tokens, index, mask, old, sampler, ref if ref_bk is not None else None, adv
            )
            grads = jax.tree.map(jnp.add, grads, g)
            metric_sums = {k: metric_sums[k] + v for k, v in metrics.items()}
            mismatch_sums = tuple(a + m for a, m in zip(mismatch_sums, mismatch))
            return (grads, loss_sum + loss, metric_sums, mismatch_sums), None

        zeros = jax.tree.map(jnp.zeros_like, state.params)
        metric_zeros = {
            k: jnp.zeros((), jnp.float32)
            for k in (
                "pg_loss",
                "kl",
                "entropy",
                "clip_frac_low",
                "clip_frac_high",
                "dual_clip_frac",
                "ratio_mean",
                "approx_kl",
            )
        }
        carry = (zeros, jnp.zeros(()), metric_zeros, (jnp.zeros(()), jnp.zeros(())))
        (grads, loss, metric_sums, (abs_diff_sum, outside_sum)), _ = jax.lax.scan(accumulate, carry, parts)
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {k: v / jnp.maximum(total_weight, 1.0) for k, v in metric_sums.items()}
        tokens = jnp.maximum(mask_bk.sum(), 1.0)
        metrics.update(
            loss=loss,
            grad_norm=grad_norm,
            model_tokens=mask_bk.sum(),
            sampler_logp_abs_diff=abs_diff_sum / tokens,
            sampler_ratio_outside_clip=outside_sum / tokens,
        )
        return TrainState(params, opt_state, state.step + 1), metrics
