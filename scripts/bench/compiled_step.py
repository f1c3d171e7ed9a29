"""Compile jaxreason's forward pass and training step from shapes alone, for the benchmarks
that measure compilation (time, memory) rather than running anything.

The training step is the one the training loop runs (``jaxreason.train.loop.make_train_step``
with the ``causal_lm`` objective and the loop's AdamW with clipping); parameters, optimizer
state and batch are ``jax.ShapeDtypeStruct``, so a model of any size compiles without
allocating its weights.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp

from jaxreason.models import CausalLM
from jaxreason.train import objectives
from jaxreason.train.config import OptimizerSection, ScheduleSection
from jaxreason.train.loop import TrainState, make_train_step
from jaxreason.train.optim import build_optimizer


def batch_struct(batch: int, seq: int) -> dict:
    ints = jax.ShapeDtypeStruct((batch, seq), jnp.int32)
    return {"tokens": ints, "attention_mask": ints, "loss_mask": ints}


def lower_forward(model: CausalLM, batch: int, seq: int, capture=None):
    """The jitted forward (logits, and the captures asked for), lowered from shapes."""
    ids = jax.ShapeDtypeStruct((batch, seq), jnp.int32)
    fn = jax.jit(lambda p, x: model.apply(p, x, capture=capture))
    return fn.lower(model.param_shapes(), ids)


def lower_train_step(model: CausalLM, batch: int, seq: int):
    """The jitted training step (state donated, as in the loop), lowered from shapes."""
    params = model.param_shapes()
    tx, _ = build_optimizer(OptimizerSection(), ScheduleSection(), 100, params)
    state = jax.eval_shape(lambda p: TrainState(jnp.zeros((), jnp.int32), p, tx.init(p),
                                                jax.random.key_data(jax.random.PRNGKey(0))),
                           params)
    step = make_train_step(model, tx, objectives.get("causal_lm"), {}, 1, False)
    return jax.jit(step, donate_argnums=0).lower(state, batch_struct(batch, seq))


def timed_compile(lower):
    """``(seconds to trace and lower, seconds to compile, compiled)`` of ``lower()``."""
    t0 = time.perf_counter()
    lowered = lower()
    t1 = time.perf_counter()
    compiled = lowered.compile()
    return t1 - t0, time.perf_counter() - t1, compiled
