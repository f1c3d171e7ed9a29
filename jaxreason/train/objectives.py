"""Training objectives as small pluggable functions.

An objective is ``fn(model, params, batch, rng, **options) -> (loss, metrics)`` where
``metrics`` is a dict of scalars (summed over examples as ``(total, count)`` pairs are not
needed: every metric is already a mean over the batch's counted items). ``batch`` holds every
array of the dataset (extra per-example arrays included). The objective's keyword parameters
are its options: a config sets them as ``trainer.objective_options`` and
:func:`check_options` checks them against the signature before anything runs; values a
signature cannot check (e.g. "at least two") are checked by a ``check_options(**options)``
function attached to the objective. Studies register
their own with ``OBJECTIVES.register`` (the transplant study adds a two-pass objective that runs
the model twice and differentiates through both).

Objectives live in :data:`jaxreason.registry.OBJECTIVES`; the ones below are built in, and
the registry finds the ones studies define from its module list, so the training loop never
imports a study.
"""

from __future__ import annotations

import inspect
from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import optax

from jaxreason.registry import OBJECTIVES

Objective = Callable[..., tuple[jax.Array, dict]]
register = OBJECTIVES.register


def get(name: str) -> Objective:
    """The objective registered as ``name`` (a ConfigError lists the known ones)."""
    return OBJECTIVES.get(name)


def option_names(fn: Objective) -> tuple[list[str], list[str], bool]:
    """(every option, the required ones, whether any keyword is accepted) of an objective:
    its parameters after ``(model, params, batch, rng)``."""
    params = list(inspect.signature(fn).parameters.values())[4:]
    named = [p for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return ([p.name for p in named], [p.name for p in named if p.default is p.empty],
            any(p.kind == p.VAR_KEYWORD for p in params))


def check_options(name: str, options: Mapping) -> dict:
    """``options`` as keyword arguments of objective ``name``, or a ValueError naming the
    unknown or missing ones and the options the objective takes."""
    fn = get(name)
    allowed, required, open_ended = option_names(fn)
    unknown = sorted(set(options) - set(allowed))
    if unknown and not open_ended:
        raise ValueError(f"objective {name!r} has no option(s) {unknown}; its options: "
                         f"{allowed or 'none'}")
    missing = [k for k in required if k not in options]
    if missing:
        raise ValueError(f"objective {name!r} needs option(s) {missing} (set them in "
                         "trainer.objective_options)")
    check = getattr(fn, "check_options", None)
    if check is not None:
        check(**options)
    return dict(options)


def _forward(model, params, batch, rng):
    return model.apply(params, batch["tokens"], batch["attention_mask"], dropout_rng=rng).logits


@register("causal_lm")
def causal_lm(model, params, batch, rng):
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
def last_token(model, params, batch, rng):
    """Cross-entropy of ``labels`` at one position per row (``predict_at``, default: last)."""
    logits = answer_logits(model, params, batch, rng)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"]).mean()
    acc = (jnp.argmax(logits, -1) == batch["labels"]).mean()
    return loss, {"loss": loss, "accuracy": acc}


@register("classify")
def classify(model, params, batch, rng, *, classify_tokens):
    """Softmax over a chosen token subset; ``labels`` index into ``classify_tokens``."""
    tokens = jnp.asarray(classify_tokens, jnp.int32)
    logits = answer_logits(model, params, batch, rng)[:, tokens]  # (B, C)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"]).mean()
    acc = (jnp.argmax(logits, -1) == batch["labels"]).mean()
    return loss, {"loss": loss, "accuracy": acc}


def _check_classify(classify_tokens):
    if len(classify_tokens) < 2:
        raise ValueError(f"objective classify needs at least two classify_tokens (one per "
                         f"class), got {list(classify_tokens)}")


classify.check_options = _check_classify
