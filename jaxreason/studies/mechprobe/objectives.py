"""The MechanisticProbe original's training loss, registered as the objective
``last_token_double_softmax`` (faithful mode of the k-th smallest study)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jaxreason.registry import OBJECTIVES
from jaxreason.train.objectives import answer_logits


@OBJECTIVES.register("last_token_double_softmax")
def last_token_double_softmax(model, params, batch, rng):
    """The original's loss (faithful mode): softmax over the vocabulary at ``predict_at``,
    then cross-entropy applied to those *probabilities* as if they were logits (torch
    ``CrossEntropyLoss(softmax(logits), label)``), i.e. ``logsumexp(p) - p[label]``: a
    double softmax whose gradient is that of ``-p(label)`` up to a nearly constant
    factor; the loss stays near ``ln(vocab)``. Accuracy is the argmax of the logits."""
    logits = answer_logits(model, params, batch, rng).astype(jnp.float32)
    probs = jax.nn.softmax(logits, axis=-1)
    loss = optax.softmax_cross_entropy_with_integer_labels(probs, batch["labels"]).mean()
    acc = (jnp.argmax(logits, -1) == batch["labels"]).mean()
    return loss, {"loss": loss, "accuracy": acc}
