"""The planning-token training loss: causal-LM cross-entropy, averaged per example first.

The original trains with batch 1 and 16 accumulated micro-batches (transformers 4.31), so its
loss is the token mean of each example, then the mean of the 16. ``planning_lm`` computes
exactly that for any batch (each row's token mean, then the mean over rows), so the faithful
run (micro-batches of 1, ``optimizer.accumulate: 16``) and the fixed run (padded batches of
16) optimise the same quantity. Targets are the tokens ``loss_mask`` marks; the frozen
``new_token_bias`` is added to the last logits (the new tokens') as in the original's
``new_linear`` head.
"""

from __future__ import annotations

import jax.numpy as jnp
import optax

from jaxreason.registry import OBJECTIVES
from jaxreason.studies.planning_tokens.model import add_logit_bias


@OBJECTIVES.register("planning_lm")
def planning_lm(model, params, batch, rng, *, new_token_bias=()):
    """Per-example mean next-token cross-entropy over the marked targets, then the batch mean."""
    logits = model.apply(params, batch["tokens"], batch["attention_mask"], dropout_rng=rng).logits
    logits = add_logit_bias(logits, new_token_bias)[:, :-1]  # (B, T-1, V)
    targets = batch["tokens"][:, 1:]
    weights = batch["loss_mask"][:, 1:] * batch["attention_mask"][:, 1:]
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    counts = weights.sum(axis=1)
    rows = (counts > 0).astype(jnp.float32)
    per_example = (nll * weights).sum(axis=1) / jnp.maximum(counts, 1.0)
    loss = (per_example * rows).sum() / jnp.maximum(rows.sum(), 1.0)
    correct = ((jnp.argmax(logits, -1) == targets) * weights).sum()
    return loss, {"loss": loss, "token_accuracy": correct / jnp.maximum(weights.sum(), 1.0)}
