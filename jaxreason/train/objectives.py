"""Training objectives as small pluggable functions.

An objective is ``fn(model, params, batch, rng, **options) -> (loss, metrics)`` where
``metrics`` is a dict of scalars (summed over examples as ``(total, count)`` pairs are not
needed: every metric is already a mean over the batch's counted items). Studies register
their own with ``OBJECTIVES.register`` (the transplant study adds a two-pass objective that runs
the model twice and differentiates through both).

Objectives live in :data:`jaxreason.registry.OBJECTIVES`; the ones below are built in, and
the registry finds the ones studies define from its module list, so the training loop never
imports a study.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from jaxreason.registry import OBJECTIVES

Objective = Callable[..., tuple[jax.Array, dict]]
register = OBJECTIVES.register


def get(name: str) -> Objective:
    """The objective registered as ``name`` (a ConfigError lists the known ones)."""
    return OBJECTIVES.get(name)


def _forward(model, params, batch, rng):
    return model.apply(params, batch["tokens"], batch["attention_mask"], dropout_rng=rng).logits


@register("causal_lm")
def causal_lm(model, params, batch, rng, **_):
    """Next-token cross-entropy on the tokens ``loss_mask`` marks (prompt tokens masked)."""
    logits = _forward(model, params, batch, rng)[:, :-1]  # (B, T-1, V)
    targets = batch["tokens"][:, 1:]
    weights = batch["loss_mask"][:, 1:] * batch["attention_mask"][:, 1:]
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    count = jnp.maximum(weights.sum(), 1.0)
    loss = (nll * weights).sum() / count
    correct = (jnp.argmax(logits, -1) == targets) * weights
    # a sequence counts as exact when every counted target token is right
    exact = jnp.all((correct == weights) | (weights == 0), axis=1).astype(jnp.float32)
    return loss, {"loss": loss, "token_accuracy": correct.sum() / count,
                  "sequence_accuracy": exact.mean()}


def answer_logits(model, params, batch, rng):
    """(B, V) logits at one position per row: ``predict_at``, else the last real token."""
    logits = _forward(model, params, batch, rng)
    at = batch.get("predict_at")
    if at is None:  # the last real token of each row
        at = batch["attention_mask"].shape[1] - 1 - jnp.argmax(batch["attention_mask"][:, ::-1], 1)
    return jnp.take_along_axis(logits, at[:, None, None], axis=1)[:, 0]  # (B, V)


@register("last_token")
def last_token(model, params, batch, rng, **_):
    """Cross-entropy of ``labels`` at one position per row (``predict_at``, default: last)."""
    logits = answer_logits(model, params, batch, rng)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"]).mean()
    acc = (jnp.argmax(logits, -1) == batch["labels"]).mean()
    return loss, {"loss": loss, "accuracy": acc}


@register("classify")
def classify(model, params, batch, rng, *, classify_tokens=(), **_):
    """Softmax over a chosen token subset; ``labels`` index into ``classify_tokens``."""
    tokens = jnp.asarray(classify_tokens, jnp.int32)
    logits = answer_logits(model, params, batch, rng)[:, tokens]  # (B, C)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"]).mean()
    acc = (jnp.argmax(logits, -1) == batch["labels"]).mean()
    return loss, {"loss": loss, "accuracy": acc}
