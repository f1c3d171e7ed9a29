"""Optimizer and learning-rate schedule from config.

AdamW (or SGD) with linear warmup into a constant, cosine or warmup-stable-decay (``wsd``:
the peak rate held, then a linear decay over the last ``decay_fraction`` of the steps)
schedule, global-norm clipping and a weight-decay mask; frozen parameters are routed to
``optax.set_to_zero`` by the trainable mask, so they carry no optimizer state at all.
"""

from __future__ import annotations

import fnmatch

import jax
import optax

from jaxreason.tree_utils import path_str
from jaxreason.train.config import OptimizerSection, ScheduleSection


def schedule(opt: OptimizerSection, sched: ScheduleSection, total_steps: int) -> optax.Schedule:
    warm = sched.warmup_steps
    if sched.kind == "constant":
        after = optax.constant_schedule(opt.lr)
    elif sched.kind == "wsd":
        # warmup-stable-decay: the peak rate held, then a linear ramp over the last
        # decay_fraction of the steps down to min_lr_ratio * lr
        decay = max(round(sched.decay_fraction * total_steps), 1)
        stable = max(total_steps - warm - decay, 0)
        after = optax.join_schedules(
            [optax.constant_schedule(opt.lr),
             optax.linear_schedule(opt.lr, opt.lr * sched.min_lr_ratio, decay)], [stable])
    else:
        after = optax.cosine_decay_schedule(opt.lr, max(total_steps - warm, 1),
                                            alpha=sched.min_lr_ratio)
    if warm == 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, opt.lr, warm), after], [warm])


def decay_mask(params, no_decay_patterns) -> object:
    """True where weight decay applies: every parameter not matching a ``no_decay`` pattern."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: not any(fnmatch.fnmatchcase(path_str(path), p)
                                for p in no_decay_patterns), params)


def build_optimizer(opt: OptimizerSection, sched: ScheduleSection, total_steps: int,
                    params) -> tuple[optax.GradientTransformation, optax.Schedule]:
    lr = schedule(opt, sched, total_steps)
    parts = []
    if opt.grad_clip:
        parts.append(optax.clip_by_global_norm(opt.grad_clip))
    if opt.name == "adamw":
        parts.append(optax.adamw(lr, b1=opt.b1, b2=opt.b2, eps=opt.eps,
                                 weight_decay=opt.weight_decay,
                                 mask=decay_mask(params, opt.no_decay)))
    else:
        parts.append(optax.sgd(lr))
    return optax.chain(*parts), lr
