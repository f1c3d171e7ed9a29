"""A few jitted optimizer steps of next-token cross-entropy, shared by the unit tests that
check which parameters an optimizer moves."""

import jax
import optax


def train_steps(model, params, tx, ids, steps=3):
    """``steps`` jitted updates of ``tx`` on next-token loss over ``ids``; returns
    ``(params, opt_state)``."""
    def loss(p):
        out = model.apply(p, ids[:, :-1]).logits
        return optax.softmax_cross_entropy_with_integer_labels(out, ids[:, 1:]).mean()

    @jax.jit
    def step(params, state):
        updates, state = tx.update(jax.grad(loss)(params), state, params)
        return optax.apply_updates(params, updates), state

    state = tx.init(params)
    for _ in range(steps):
        params, state = step(params, state)
    return params, state
