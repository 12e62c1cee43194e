"""The objective (docs/architecture.md, section 4) and the jitted train step.

The token counts are summed over the whole batch *before* the forward passes, so each
micro-batch contributes `its CE sum / global count`: the accumulated loss and gradient equal
the full-batch definition exactly, whatever the packing or the number of micro-batches.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from distill_jax.train.state import TrainState

Batch = dict[str, jax.Array]  # leaves [grad_steps, rows, length]


def token_cross_entropy(model, params, micro: Batch, dropout_rng, enable_dropout: bool):
    """Per-token cross entropy of the T5 decoder on one packed micro-batch: [rows, dec_len]."""
    logits = model.apply(
        {"params": params},
        micro["encoder_input_tokens"],
        micro["decoder_input_tokens"],
        micro["encoder_segment_ids"],
        micro["decoder_segment_ids"],
        enable_dropout=enable_dropout,
        rngs={"dropout": dropout_rng} if enable_dropout else None,
    )  # [rows, dec_len, vocab] float32
    return optax.softmax_cross_entropy_with_integer_labels(logits, micro["decoder_target_tokens"])


def mix_losses(label_sum, rationale_sum, n_label, n_rationale, alpha: float, model_type: str):
    """The objective (docs/architecture.md) from CE sums and global token counts."""
    label_loss = label_sum / jnp.maximum(n_label, 1.0)
    rationale_loss = rationale_sum / jnp.maximum(n_rationale, 1.0)
    if model_type == "standard":
        return label_loss, label_loss, rationale_loss
    return alpha * label_loss + (1.0 - alpha) * rationale_loss, label_loss, rationale_loss


def loss_and_grads(model, params, batch: Batch, rng, *, alpha, model_type, enable_dropout=True):
    """(loss, label_loss, rationale_loss, grads) over the micro-batches of `batch`, run one after
    another under `lax.scan` (so activation memory is that of one micro-batch)."""
    n_label = batch["label_weights"].sum()
    n_rationale = batch["rationale_weights"].sum()

    def micro_objective(p, micro, micro_rng):
        ce = token_cross_entropy(model, p, micro, micro_rng, enable_dropout)  # [rows, dec_len]
        label_sum = (ce * micro["label_weights"]).sum()
        rationale_sum = (ce * micro["rationale_weights"]).sum()
        loss, _, _ = mix_losses(label_sum, rationale_sum, n_label, n_rationale, alpha, model_type)
        return loss, (label_sum, rationale_sum)

    grad_fn = jax.value_and_grad(micro_objective, has_aux=True)

    def body(carry, xs):  # carry: (summed grads, (label CE sum, rationale CE sum))
        index, micro = xs
        (_, sums), grads = grad_fn(params, micro, jax.random.fold_in(rng, index))
        return jax.tree.map(jnp.add, carry, (grads, sums)), None

    zeros = jax.tree.map(jnp.zeros_like, params)
    init = (zeros, (jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32)))
    indices = jnp.arange(batch["encoder_input_tokens"].shape[0])  # one per micro-batch
    (grads, (label_sum, rationale_sum)), _ = jax.lax.scan(body, init, (indices, batch))
    loss, label_loss, rationale_loss = mix_losses(
        label_sum, rationale_sum, n_label, n_rationale, alpha, model_type
    )
    return loss, label_loss, rationale_loss, grads


def jit_train_step(model, tx, schedule, *, alpha, model_type, state_shardings, batch_sharding):
    """The optimizer step, jitted with explicit shardings and the state donated."""

    def train_step(
        state: TrainState, batch: Batch, rng: jax.Array
    ) -> tuple[TrainState, dict[str, Any]]:
        step_rng = jax.random.fold_in(rng, state.step)
        loss, label_loss, rationale_loss, grads = loss_and_grads(
            model, state.params, batch, step_rng, alpha=alpha, model_type=model_type
        )
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {
            "loss": loss,
            "label_loss": label_loss,
            "rationale_loss": rationale_loss,
            "grad_norm": optax.global_norm(grads),
            "lr": schedule(state.step),
            "label_tokens": batch["label_weights"].sum(),
            "rationale_tokens": batch["rationale_weights"].sum(),
        }
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return jax.jit(
        train_step,
        in_shardings=(state_shardings, batch_sharding, None),
        out_shardings=(state_shardings, None),
        donate_argnums=0,
    )
