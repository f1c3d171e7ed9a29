"""The original's training schedule: sub-batches in a fixed order, gradients accumulated over
a number of sub-batches per optimizer step, a test pass after every step.

The training rows are read in the split's order every epoch (no reshuffle), in sub-batches of
``subbatch`` rows (the last sub-batch of an epoch may be short: its missing rows have weight
0). Every ``subbatches_per_step`` sub-batches AdamW (lr 3e-4, betas 0.9/0.999, eps 1e-16, no
weight decay, schedule or clipping) takes one step:

* ``faithful``: on the **sum** of the sub-batch mean gradients; the sub-batch counter restarts
  each epoch and the gradients of the epoch's leftover sub-batches are not cleared, so they
  spill into the next epoch's first step;
* ``fixed``: on their **mean**; an epoch's leftover sub-batches make a last, smaller step.

Training lines follow the original per sub-batch (``faithful``: its clamp bug, ``fixed``: true
rates with the original's beside them); a step's row holds their mean over its sub-batches.
"""

from __future__ import annotations

import functools
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from jaxreason.studies.kv_transplant.adapters import merge
from jaxreason.studies.kv_transplant.batching import make_batch
from jaxreason.studies.kv_transplant.transplant import transplant_loss
from jaxreason.tasks.cot_choice import choice_metrics, clamped_metrics


def optimizer(lr: float, eps: float) -> optax.GradientTransformation:
    return optax.adamw(lr, b1=0.9, b2=0.999, eps=eps, weight_decay=0.0)


def subbatches(rows: Sequence[int], size: int) -> list[list[int]]:
    rows = list(rows)
    return [rows[i:i + size] for i in range(0, len(rows), size)]


def step_schedule(n_sub: int, per_step: int, steps: int, mode: str) -> list[list[tuple[int, int]]]:
    """The (epoch, sub-batch) pairs each optimizer step accumulates, for ``steps`` steps.

    ``faithful``: a step every ``per_step``-th sub-batch of an epoch (counted from 0 each
    epoch); the sub-batches after an epoch's last step join the next step. ``fixed``: the same,
    plus a step at each epoch's end over its leftovers."""
    plan, pending, epoch = [], [], 0
    while len(plan) < steps:
        for i in range(n_sub):
            pending.append((epoch, i))
            if (i + 1) % per_step == 0 or (mode == "fixed" and i == n_sub - 1):
                plan.append(pending)
                pending = []
                if len(plan) == steps:
                    break
        epoch += 1
        if epoch > 10 * steps + 10 and not plan:
            raise ValueError(f"{n_sub} sub-batches per epoch never reach {per_step} per step")
    return plan


@functools.lru_cache(maxsize=8)
def make_functions(model, answer_ids, remat: bool, shared: bool):
    """Jitted (gradient of one sub-batch, evaluation of one batch); conditions of one run
    share them (and so their compiled programs)."""
    def params_of(trainable, frozen):
        if shared:
            return merge(trainable, frozen)
        return merge(trainable["arguer"], frozen), merge(trainable["chooser"], frozen)

    def loss(trainable, frozen, batch, transplant):
        return transplant_loss(model, params_of(trainable, frozen), batch,
                               answer_ids=answer_ids, transplant=transplant, remat=remat)

    grad = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=3)
    evaluate = jax.jit(lambda t, f, b, transplant: loss(t, f, b, transplant)[1],
                       static_argnums=3)
    return grad, evaluate


def train_metrics(out: dict, batch: dict, mode: str) -> dict:
    """One sub-batch's training line (the original's definitions; fixed adds true rates)."""
    keep = batch["weight"] > 0
    cc, oc = np.asarray(out["chosen_correct"])[keep], batch["orig_correct"][keep]
    diff, nll = np.asarray(out["diff"])[keep], np.asarray(out["nll"])[keep]
    line = {f"orig_{k}": v for k, v in clamped_metrics(cc, oc, diff, nll).items() if k != "n"}
    if mode == "fixed":
        line.update({k: v for k, v in choice_metrics(cc, oc, diff, nll).items() if k != "n"})
    return line


def mean_lines(lines: list[dict]) -> dict:
    keys = {k for line in lines for k in line}
    out = {}
    for k in sorted(keys):
        vals = [line[k] for line in lines if line.get(k) is not None]
        out[k] = float(np.mean(vals)) if vals else None
    return out


def train_condition(model, trainable, frozen, items, order: Sequence[int], *, lengths, pad_id,
                    answer_ids, config, transplant: bool, donors=None,
                    on_step: Callable[[int, object], dict] | None = None, desc: str = "training"):
    """Train ``trainable`` on ``items[order]``; ``on_step(step, trainable)`` runs after every
    ``test_every``-th step (and at step 0) and its dict joins that step's row. Returns
    (trainable, rows)."""
    shared = config.adapters == "shared"
    grad, _ = make_functions(model, answer_ids, config.remat, shared)
    tx = optimizer(config.lr, config.eps)
    opt_state = tx.init(trainable)
    subs = subbatches(order, config.subbatch)
    plan = step_schedule(len(subs), config.subbatches_per_step, config.steps, config.mode)
    donor_of = None if donors is None else dict(zip(range(len(items)), donors))
    rows = [dict(step=0, **(on_step(0, trainable) if on_step else {}))]
    t0 = time.perf_counter()
    for step, pairs in enumerate(tqdm(plan, desc=desc, disable=not config.progress), start=1):
        acc, lines = None, []
        for _, i in pairs:
            sub = subs[i]
            batch = make_batch(items, sub, lengths, pad_id, size=config.subbatch,
                               donors=None if donor_of is None else [donor_of[r] for r in sub])
            (_, out), g = grad(trainable, frozen, batch, transplant)
            acc = g if acc is None else jax.tree_util.tree_map(jnp.add, acc, g)
            lines.append(train_metrics(out, batch, config.mode))
        if config.mode == "fixed":
            acc = jax.tree_util.tree_map(lambda x: x / len(pairs), acc)
        updates, opt_state = tx.update(acc, opt_state, trainable)
        trainable = optax.apply_updates(trainable, updates)
        row = {"step": step, "epoch": pairs[-1][0], "subbatches": len(pairs),
               "seconds": time.perf_counter() - t0,
               **{f"train_{k}": v for k, v in mean_lines(lines).items()}}
        if on_step is not None and (step % config.test_every == 0 or step == len(plan)):
            row.update(on_step(step, trainable))
        rows.append(row)
    return trainable, rows


def evaluate_rows(evaluate, trainable, frozen, items, rows: Sequence[int], *, lengths, pad_id,
                  batch_size: int, transplant: bool, donors=None) -> dict:
    """Per-example outputs over ``rows`` in order, in batches of ``batch_size``."""
    outs = {"nll": [], "chosen_correct": [], "diff": [], "orig_correct": []}
    rows = list(rows)
    for start in range(0, len(rows), batch_size):
        part = rows[start:start + batch_size]
        batch = make_batch(items, part, lengths, pad_id, size=batch_size,
                           donors=None if donors is None else [donors[r] for r in part])
        out = evaluate(trainable, frozen, batch, transplant)
        n = len(part)
        for k in ("nll", "chosen_correct", "diff"):
            outs[k].append(np.asarray(out[k])[:n])
        outs["orig_correct"].append(batch["orig_correct"][:n])
    return {k: np.concatenate(v) for k, v in outs.items()}
