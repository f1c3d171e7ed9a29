"""Range checks that hold whether a value is concrete or traced.

Why: the forward pass checks token ids, positions and neuron indices against what the model
has. With concrete arrays that is a plain ``ValueError``. Under ``jax.jit`` the same arrays
are tracers whose contents are unknown until the program runs, and an out-of-range index
then does not fail: a gather past the end fills NaN (token ids) or a one-hot of a too-large
index is all zeros (neurons), so the result is quietly wrong. Where a check cannot be decided
while tracing, :func:`check_range` with ``runtime=True`` stages it into the program with
``jax.experimental.checkify``: the checked program returns an error value that the caller
raises after the call, with the same message the concrete check gives. Functions that stage
such checks must run under ``checkify.checkify`` (``CausalLM.jit_apply`` and
``CausalLM.checked_apply`` do this); with ``runtime=False`` traced values pass unchecked.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify


def is_concrete(x) -> bool:
    """False for a traced value (inside jit/grad/vmap), whose contents cannot be checked."""
    return not isinstance(x, jax.core.Tracer)


def check_range(values, low: int, high: int, what: str, allowed: str, *,
                runtime: bool = False) -> None:
    """Refuse entries of ``values`` outside ``[low, high)``.

    The message is ``"{what} {bad} {allowed}"`` for the first bad entry ``bad``, e.g.
    ``check_range(ids, 0, 128, "token id", "is outside the vocabulary 0..127")``.
    Concrete values raise ``ValueError`` now; traced ones are checked when the program runs
    if ``runtime`` (see the module docstring), else let pass.
    """
    if values is None:
        return
    if is_concrete(values):
        v = np.asarray(values)
        if v.size and (v.min() < low or v.max() >= high):
            bad = v[(v < low) | (v >= high)]
            raise ValueError(f"{what} {int(bad.flat[0])} {allowed}")
        return
    if not runtime or values.size == 0:
        return
    flat = jnp.ravel(values)
    outside = (flat < low) | (flat >= high)
    escape = lambda s: s.replace("{", "{{").replace("}", "}}")  # noqa: E731  (not fields)
    text = escape(what) + " {bad} " + escape(allowed)
    checkify.check(~jnp.any(outside), text, bad=flat[jnp.argmax(outside)])


def raise_if_failed(err) -> None:
    """Raise the first failed runtime check of a checkified call as a ``ValueError``."""
    message = err.get()
    if message is not None:
        raise ValueError(message.replace(" (`check` failed)", ""))
