"""A small L-BFGS minimiser that batches well, and the softmax cross-entropy it minimises.

Written for the linear probes (:mod:`jaxreason.probe.linear`), where hundreds of small convex
problems (a 10-way affine probe on a few thousand rows) are solved at once under ``vmap`` or
one after another under ``lax.map``. Two things decide the speed of such a solver on a CPU,
and neither is the arithmetic:

* The number of XLA operations per iteration. Each one in a ``while_loop`` body is dispatched
  on its own, so the two-loop recursion is unrolled (the memory is a static 10) instead of
  being two nested ``fori_loop`` s, and the line search usually evaluates the objective once.
* The layout of the (rows, classes) arrays. With the classes (10) on the minor axis, XLA CPU
  vectorised the log-sum-exp and its gradient poorly: autodiff of the (N, C) loss took 2-3x
  the time of the hand-written (C, N) form here, where every elementwise operation and every
  reduction over the classes runs along the long row axis.

Why not ``optax.lbfgs``: its zoom line search branches (``lax.cond``) on each problem's own
state, and under ``vmap`` every branch is evaluated for every problem, which made a vmapped
fit ~4x slower per problem than a loop on CPU.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

MEMORY = 10           # curvature pairs kept
_ARMIJO_C1 = 1e-4     # sufficient-decrease constant of the backtracking line search
_MAX_HALVINGS = 25    # a step of 2**-25 that still fails means float32 can do no better
_APPROX_WOLFE = -0.8  # 2*delta - 1 with Hager-Zhang's delta = 0.1
_F_EPS = 1e-6         # relative slack on the loss for the approximate-Wolfe test


def cross_entropy_and_grad(W, b, xT, w, onehotT, denom):
    """Mean softmax cross-entropy of an affine probe and its gradient, class axis first.

    W (D, C), b (C,), xT (D, N) features, w (N,) row weights (0 or 1), onehotT (C, N) the
    one-hot labels, denom the weight sum (>= 1). Returns (loss, dW (D, C), db (C,)).
    """
    z = W.T @ xT + b[:, None]                      # (C, N)
    zmax = jnp.max(z, axis=0)
    e = jnp.exp(z - zmax)
    total = jnp.sum(e, axis=0)
    nll = zmax + jnp.log(total) - jnp.sum(onehotT * z, axis=0)
    loss = jnp.sum(w * nll) / denom
    r = (e / total - onehotT) * (w / denom)        # d loss / d z, (C, N)
    return loss, xT @ r.T, jnp.sum(r, axis=1)


def _two_loop(g, S, Y, rho):
    """L-BFGS direction -H g by the two-loop recursion, unrolled over the static memory.
    S, Y (m, n) hold the pairs newest first; an empty slot has rho 0 and contributes
    nothing."""
    m = S.shape[0]
    q, alpha = g, [None] * m
    for i in range(m):
        alpha[i] = rho[i] * (S[i] @ q)
        q = q - alpha[i] * Y[i]
    yy = Y[0] @ Y[0]
    # initial Hessian scale: s'y / y'y of the newest pair; before any pair, a step of norm <= 1
    gamma = jnp.where(rho[0] > 0, (S[0] @ Y[0]) / jnp.where(yy > 0, yy, 1.0),
                      1.0 / jnp.maximum(jnp.linalg.norm(g), 1.0))
    r = gamma * q
    for i in reversed(range(m)):  # oldest first
        r = r + S[i] * (alpha[i] - rho[i] * (Y[i] @ r))
    return -r


def minimize(value_and_grad, theta, tol, max_iter):
    """Minimise a smooth function of a flat float32 vector from ``theta`` by L-BFGS (memory
    10) with a backtracking line search (unit step first, halved until the Armijo or the
    approximate-Wolfe test passes). Stops after ``max_iter`` iterations, once
    ``||grad||_2 <= tol``, or when no step passes (float32 can do no better).

    ``value_and_grad(theta) -> (f, g)``. Returns (theta, iterations run).
    """
    f, g = value_and_grad(theta)
    S = jnp.zeros((MEMORY, theta.size), jnp.float32)
    carry = dict(i=jnp.asarray(0), theta=theta, f=f, g=g, S=S, Y=S, rho=jnp.zeros(MEMORY),
                 stalled=jnp.asarray(False))

    def cond(c):
        return (c["i"] < max_iter) & (jnp.linalg.norm(c["g"]) > tol) & ~c["stalled"]

    def body(c):
        direction = _two_loop(c["g"], c["S"], c["Y"], c["rho"])
        slope = c["g"] @ direction
        # a rounding-broken direction that is not downhill falls back to steepest descent
        direction = jnp.where(slope < 0, direction, -c["g"])
        slope = jnp.where(slope < 0, slope, -(c["g"] @ c["g"]))

        def accept(t, f_new, g_new):
            # Near the optimum the loss changes by less than float32 can show, so Armijo
            # alone stalls. Hager-Zhang's approximate Wolfe test uses the (still exact
            # enough) slope instead: phi'(t) <= (2 delta - 1) phi'(0), with phi(t) <= phi(0)
            # up to rounding. A NaN loss fails both tests and is halved.
            armijo = f_new <= c["f"] + _ARMIJO_C1 * t * slope
            approx = ((g_new @ direction <= _APPROX_WOLFE * slope)
                      & (f_new <= c["f"] + _F_EPS * jnp.abs(c["f"])))
            return armijo | approx

        def rejected(ls):
            t, f_new, g_new, n = ls
            return ~accept(t, f_new, g_new) & (n < _MAX_HALVINGS)

        def halve(ls):
            t = ls[0] * 0.5
            return (t, *value_and_grad(c["theta"] + t * direction), ls[3] + 1)

        t, f_new, g_new, _ = jax.lax.while_loop(
            rejected, halve, (jnp.asarray(1.0), *value_and_grad(c["theta"] + direction), 0))
        ok = accept(t, f_new, g_new)
        s, yv = t * direction, g_new - c["g"]
        sy = s @ yv
        keep = ok & (sy > 1e-10)  # strictly convex for l2 > 0, so this holds unless rounding
        return dict(
            i=c["i"] + 1,
            theta=jnp.where(ok, c["theta"] + s, c["theta"]),
            f=jnp.where(ok, f_new, c["f"]), g=jnp.where(ok, g_new, c["g"]),
            S=jnp.where(keep, jnp.roll(c["S"], 1, 0).at[0].set(s), c["S"]),
            Y=jnp.where(keep, jnp.roll(c["Y"], 1, 0).at[0].set(yv), c["Y"]),
            rho=jnp.where(keep, jnp.roll(c["rho"], 1).at[0].set(1.0 / sy), c["rho"]),
            stalled=~ok)

    out = jax.lax.while_loop(cond, body, carry)
    return out["theta"], out["i"]
