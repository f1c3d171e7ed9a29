"""Linear probes for Think-to-Talk (Kudo et al., arXiv 2412.01113; github.com/keitokudo/TTT).

One 10-way affine probe is fitted per (position p, intermediate variable j) of a layer. The
original trains them one after another in PyTorch. Here all P*J probes of a layer train in a
single jitted program: ``jax.vmap`` over variables (which share the features) inside a map
over positions (which maps the position axis of X): on an accelerator all positions are
vmapped together, on a CPU they run one after another inside the program (``lockstep``, see
:func:`default_lockstep`). No per-probe copy of X is made; ``position_chunk`` bounds device
memory further by fitting a slice of positions per call.

Two kinds (:class:`ProbeSettings.kind`):

* ``"sgd"`` (**faithful**). Raw float32 features, no normalisation. PyTorch
  ``nn.Linear`` default init, i.e. weights and bias uniform in ±1/sqrt(d). Each probe's key is
  ``fold_in(fold_in(PRNGKey(seed), p), j)``, so it does not depend on how the probes are
  batched and the vmapped and looped fits start from identical weights. (The original draws
  from one torch RNG that advances probe to probe; that stream cannot be reproduced, only its
  distribution.) Loss: softmax cross-entropy averaged over the rows valid at p. Plain full-batch
  gradient descent ``W -= lr * grad`` for ``steps`` steps (10,000 at lr 1e-3 in the original).
* ``"logreg"`` (**fixed / control**). Plain GD at lr 1e-3 on unnormalised hidden
  states under-fits wherever the feature norms are large or small, so low accuracy could mean
  "not fitted" rather than "not there". The control standardises each feature per position
  over the valid training rows (population std; a near-constant feature gets scale 1, as in
  sklearn's ``StandardScaler``), then minimises the strictly convex
  ``mean CE + l2/2 * ||W||^2`` (bias not penalised) from zero with L-BFGS. L-BFGS because it
  reaches the unique optimum in tens of iterations with no learning rate to tune, which
  full-batch Adam or GD does not guarantee on ill-conditioned hidden states. It is a small
  batching-friendly L-BFGS (:mod:`jaxreason.probe.lbfgs`, which says why not
  ``optax.lbfgs``), and stops once ``||grad|| <= logreg_tol`` or after ``logreg_steps`` iterations.
  This is the objective of scikit-learn's ``LogisticRegression`` with
  ``C = 1 / (l2 * n_valid)``; the test checks that both reach the same weights.

Rows not valid at a position (the problem's sequence is shorter) get weight 0 in that probe's
loss and are zeroed before fitting, so NaN padding cannot leak into the gradient. At
evaluation (:func:`probe_accuracy`) such a row counts as wrong and stays in the denominator,
as the original's NaN prediction does.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from jaxreason.probe import lbfgs
from jaxreason.probe.lbfgs import cross_entropy_and_grad

__all__ = ["ProbeSettings", "LinearProbes", "fit_probes", "fit_probe_loop", "probe_accuracy",
           "chance_accuracy"]

KINDS = ("sgd", "logreg")
_STD_EPS = 1e-6  # a feature with std below this is treated as constant (scale 1), as sklearn does


@dataclasses.dataclass(frozen=True)
class ProbeSettings:
    """How the probes are fitted; the defaults are the original's (faithful ``sgd``)."""

    kind: Literal["sgd", "logreg"] = "sgd"
    steps: int = 10_000          # sgd: full-batch GD steps (faithful: 10,000)
    lr: float = 1e-3             # sgd: plain GD, no momentum, no weight decay (faithful)
    l2: float = 1e-3             # logreg: mean loss + l2/2 * ||W||^2
    logreg_steps: int = 300      # logreg: at most this many L-BFGS iterations
    seed: int = 42
    num_classes: int = 10
    logreg_tol: float = 1e-5     # logreg: stop once ||grad||_2 is below this

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"ProbeSettings.kind={self.kind!r}; allowed: {KINDS}")
        for name in ("steps", "logreg_steps"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 0:
                raise ValueError(f"ProbeSettings.{name}={v!r}; must be an integer >= 0")
        if not self.lr > 0:
            raise ValueError(f"ProbeSettings.lr={self.lr!r}; must be > 0")
        if not self.l2 >= 0:
            raise ValueError(f"ProbeSettings.l2={self.l2!r}; must be >= 0")
        if not self.logreg_tol >= 0:
            raise ValueError(f"ProbeSettings.logreg_tol={self.logreg_tol!r}; must be >= 0")
        if not isinstance(self.num_classes, (int, np.integer)) or self.num_classes < 2:
            raise ValueError(f"ProbeSettings.num_classes={self.num_classes!r}; must be an "
                             "integer >= 2")


@dataclasses.dataclass
class LinearProbes:
    """The fitted probes of one layer: logits[n, p, j] = f(X[n, p]) @ weights[p, j] + bias[p, j],
    with f the standardisation ``(x - mean[p]) / scale[p]`` for ``logreg`` and identity for
    ``sgd``."""

    weights: np.ndarray          # (P, J, d, C)
    bias: np.ndarray             # (P, J, C)
    mean: np.ndarray | None      # (P, d) for logreg, None for sgd
    scale: np.ndarray | None     # (P, d)
    settings: ProbeSettings

    def predict(self, X, valid=None) -> np.ndarray:
        """(N, P, d) hidden states -> (N, P, J) int class predictions.

        With ``valid`` (N, P), rows not valid at a position get -1 (never a class), the
        analogue of the original's NaN prediction. A row whose logits are not finite (NaN
        padding passed without ``valid``) also gets -1 rather than argmax's arbitrary 0.
        """
        P, J, d, C = self.weights.shape
        X = _check_x(X)
        if X.shape[1:] != (P, d):
            raise ValueError(f"X has shape {X.shape}; these probes need (N, {P}, {d})")
        valid = _check_valid(valid, X.shape[:2])
        out = np.empty((X.shape[0], P, J), np.int64)
        for p in range(P):  # one (N, d) @ (d, J*C) matmul per position keeps memory at O(N*d)
            x = np.asarray(X[:, p], np.float32)
            if self.mean is not None:
                x = (x - self.mean[p]) / self.scale[p]
            logits = x @ self.weights[p].transpose(1, 0, 2).reshape(d, J * C)
            logits = logits.reshape(-1, J, C) + self.bias[p]
            out[:, p] = np.where(np.isfinite(logits).all(-1), logits.argmax(-1), -1)
        out[~valid] = -1
        return out


# ----------------------------------------------------------------------------- validation
def _check_x(X) -> np.ndarray:
    """X as an array (kept lazily in its dtype: bf16 or memmaps are cast chunk by chunk)."""
    if not hasattr(X, "shape") or not hasattr(X, "dtype"):
        X = np.asarray(X)
    if len(X.shape) != 3:
        raise ValueError(f"X has shape {tuple(X.shape)}; expected 3 dims (N problems, P "
                         "positions, d width)")
    if X.shape[0] == 0 or X.shape[1] == 0 or X.shape[2] == 0:
        raise ValueError(f"X has shape {tuple(X.shape)}; every dimension must be >= 1")
    return X


def _check_labels(y, n: int | None, num_classes: int) -> np.ndarray:
    """y (N, J) as int32, every value an integer in 0..num_classes-1."""
    y = np.asarray(y)
    if y.ndim != 2:
        raise ValueError(f"y has shape {y.shape}; expected 2 dims (N problems, J variables)")
    if n is not None and y.shape[0] != n:
        raise ValueError(f"y has {y.shape[0]} rows but X has {n}; they must be the same "
                         "problems")
    if y.shape[1] == 0:
        raise ValueError(f"y has shape {y.shape}; need at least one variable")
    if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating)
            or y.dtype == bool):
        raise ValueError(f"y has dtype {y.dtype}; expected integer class labels")
    if np.issubdtype(y.dtype, np.floating):
        bad = ~np.isfinite(y) | (y != np.round(np.nan_to_num(y)))
        if bad.any():
            r, c = np.argwhere(bad)[0]
            raise ValueError(f"label y[{r}, {c}]={y[r, c].item()!r} is not an integer class")
    out_of_range = (y < 0) | (y >= num_classes)
    if out_of_range.any():
        r, c = np.argwhere(out_of_range)[0]
        raise ValueError(f"label y[{r}, {c}]={y[r, c].item()!r} is outside "
                         f"0..{num_classes - 1}")
    return y.astype(np.int32)


def _check_valid(valid, shape) -> np.ndarray:
    """valid (N, P) as bool; None means every position of every row is present."""
    if valid is None:
        return np.ones(shape, bool)
    valid = np.asarray(valid)
    if valid.shape != tuple(shape):
        raise ValueError(f"valid has shape {valid.shape}; expected {tuple(shape)} (N, P) "
                         "like X's first two dims")
    if valid.dtype != bool:
        if not np.isin(valid, (0, 1)).all():
            raise ValueError(f"valid has dtype {valid.dtype} with values other than 0/1; "
                             "expected a boolean mask")
        valid = valid.astype(bool)
    return valid


def _position_chunks(P: int, position_chunk: int | None):
    if position_chunk is None:
        return [slice(0, P)]
    if not isinstance(position_chunk, (int, np.integer)) or position_chunk < 1:
        raise ValueError(f"position_chunk={position_chunk!r}; must be None or an integer >= 1")
    return [slice(s, min(s + position_chunk, P)) for s in range(0, P, position_chunk)]


def _host_features(X, valid, sl) -> np.ndarray:
    """(Pc, N, d) float32 copy of X[:, sl], position-major, with rows invalid at a position
    zeroed (they may hold NaN padding, and 0 * NaN would still poison the gradient).

    Position-major because the fit maps axis 0: with X's own (N, P, d) layout, XLA CPU
    re-transposed the whole chunk inside every GD step instead of once. The host copy is
    needed anyway (dtype cast, zeroing), so the transpose costs nothing extra.
    """
    x = np.array(np.swapaxes(X[:, sl], 0, 1), dtype=np.float32, order="C")  # always a copy
    x[~valid[:, sl].T] = 0.0
    return x


# ----------------------------------------------------------------------------- one probe
def _torch_linear_init(seed, p, j, *, d: int, c: int):
    """nn.Linear's default init, U(-1/sqrt(d), 1/sqrt(d)) for weights and bias, from a key
    that depends only on (seed, p, j)."""
    key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), p), j)
    kw, kb = jax.random.split(key)
    bound = 1.0 / np.sqrt(d)
    W = jax.random.uniform(kw, (d, c), jnp.float32, -bound, bound)
    b = jax.random.uniform(kb, (c,), jnp.float32, -bound, bound)
    return W, b


def _init_probes(seed, p_idx, j_idx, *, d: int, num_classes: int):
    """Initial (W, b) of probes (p_idx[a], j_idx[b]) for all a, b: (A, B, d, C), (A, B, C)."""
    one = functools.partial(_torch_linear_init, d=d, c=num_classes)
    over_j = jax.vmap(one, in_axes=(None, None, 0))
    return jax.vmap(over_j, in_axes=(None, 0, None))(seed, p_idx, j_idx)


@functools.cache
def _init_jit():
    """The jitted init. On CPU it is compiled at XLA optimisation level 0: threefry's unrolled
    rounds otherwise take seconds of LLVM time per shape under vmap, for a program that runs
    in microseconds (the bits do not depend on the level)."""
    opts = {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else None
    return jax.jit(_init_probes, static_argnames=("d", "num_classes"), compiler_options=opts)


def _sgd_one(x, w, y, W, b, lr, steps):
    """One faithful probe: (N, d) raw features, (N,) row weights, (N,) labels, initial (W, b)
    -> (W, b) after ``steps`` full-batch GD steps on the mean cross-entropy."""
    denom = jnp.maximum(jnp.sum(w), 1.0)
    xT, onehotT = x.T, jax.nn.one_hot(y, W.shape[-1], dtype=jnp.float32).T

    def step(_, wb):
        _, gW, gb = cross_entropy_and_grad(*wb, xT, w, onehotT, denom)
        return wb[0] - lr * gW, wb[1] - lr * gb

    return jax.lax.fori_loop(0, steps, step, (W, b))


def _standardise(x, w):
    """Per-feature mean and scale over the rows with w > 0; returns (x_std, mean, scale).
    Rows with w == 0 come back as 0. Near-constant features get scale 1 (sklearn's
    StandardScaler does the same) so a test-time deviation is not blown up by 1/1e-6."""
    n = jnp.maximum(jnp.sum(w), 1.0)
    mean = (w @ x) / n
    var = (w @ jnp.square(x - mean)) / n
    std = jnp.sqrt(var)
    scale = jnp.where(std < _STD_EPS, 1.0, std)
    xs = jnp.where(w[:, None] > 0, (x - mean) / scale, 0.0)
    return xs, mean, scale


def _logreg_one(xs, w, y, l2, tol, steps, *, num_classes: int):
    """One control probe on standardised (N, d) features: minimise mean CE + l2/2 ||W||^2
    from 0 by :func:`jaxreason.probe.lbfgs.minimize`, for at most ``steps`` iterations,
    stopping once ||grad|| <= tol."""
    d, C = xs.shape[-1], num_classes
    denom = jnp.maximum(jnp.sum(w), 1.0)
    xT, onehotT = xs.T, jax.nn.one_hot(y, C, dtype=jnp.float32).T

    def value_and_grad(theta):  # theta = [W.ravel(), b]: flat so the L-BFGS algebra is dots
        W, b = theta[:d * C].reshape(d, C), theta[d * C:]
        loss, gW, gb = cross_entropy_and_grad(W, b, xT, w, onehotT, denom)
        loss = loss + 0.5 * l2 * jnp.sum(jnp.square(W))
        return loss, jnp.concatenate([(gW + l2 * W).ravel(), gb])

    theta, _ = lbfgs.minimize(value_and_grad, jnp.zeros(d * C + C, jnp.float32), tol, steps)
    return theta[:d * C].reshape(d, C), theta[d * C:]


# ----------------------------------------------------------------------------- all probes
def _over_positions(fn, args, lockstep: int | None):
    """Apply ``fn`` to every position of ``args`` (leading axis Pc): ``lockstep`` positions at
    a time run as one vmapped batch and the batches run one after another (``lax.map``);
    None runs all at once (one vmap)."""
    pc = jax.tree_util.tree_leaves(args)[0].shape[0]
    if lockstep is None or lockstep >= pc:
        return jax.vmap(fn)(args)
    if lockstep == 1:  # a vmap of size 1 around the probe's loops costs layout copies
        return jax.lax.map(fn, args)
    return jax.lax.map(fn, args, batch_size=lockstep)


@functools.partial(jax.jit, static_argnames=("lockstep",))
def _sgd_all(x, w, yT, W, b, lr, steps, *, lockstep=None):
    """x (Pc, N, d), w (Pc, N), yT (J, N), initial W (Pc, J, d, C) and b (Pc, J, C) -> fitted
    (W, b). Positions map axis 0; the J variables of a position are vmapped over the same
    features, so no per-probe copy of them exists."""
    over_j = jax.vmap(_sgd_one, in_axes=(None, None, 0, 0, 0, None, None))

    def position(a):
        return over_j(a[0], a[1], yT, a[2], a[3], lr, steps)

    return _over_positions(position, (x, w, W, b), lockstep)


@functools.partial(jax.jit, static_argnames=("num_classes", "lockstep"))
def _logreg_all(x, w, yT, l2, tol, steps, *, num_classes, lockstep=None):
    """x (Pc, N, d), w (Pc, N), yT (J, N) -> W (Pc, J, d, C), b, mean (Pc, d), scale."""
    one = functools.partial(_logreg_one, num_classes=num_classes)
    over_j = jax.vmap(one, in_axes=(None, None, 0, None, None, None))

    def position(a):
        xs, mean, scale = _standardise(*a)
        W, b = over_j(xs, a[1], yT, l2, tol, steps)
        return W, b, mean, scale

    return _over_positions(position, (x, w), lockstep)


def default_lockstep() -> int | None:
    """How many positions :func:`fit_probes` runs in lockstep by default: all of them on an
    accelerator, where one wide program keeps the device busy; one at a time on a CPU. On a
    CPU a wide batch loses twice: every lockstep batch iterates until its slowest probe has
    converged (logreg: 11 to 43 L-BFGS iterations with the benchmark's data), and the
    features of all positions no longer fit the caches, so each iteration streams them from
    memory, while one position's (N, d) block stays cached for all of its iterations."""
    return 1 if jax.default_backend() == "cpu" else None


def _prepare(X, y, valid, settings):
    if not isinstance(settings, ProbeSettings):
        raise ValueError(f"settings is a {type(settings).__name__}; expected ProbeSettings")
    X = _check_x(X)
    y = _check_labels(y, X.shape[0], settings.num_classes)
    valid = _check_valid(valid, X.shape[:2])
    return X, y, valid


def fit_probes(X, y, valid=None, settings: ProbeSettings = ProbeSettings(), *,
               position_chunk: int | None = None,
               lockstep: int | None | str = "auto") -> LinearProbes:
    """Fit all P*J probes of one layer at once (vmapped, jitted, full batch).

    X (N, P, d) hidden states (any float dtype, cast to float32 a chunk at a time); y (N, J)
    int labels in 0..C-1; valid (N, P) bool, False where the problem has no position p (default
    all True). ``position_chunk``: fit at most this many positions per compiled call to bound
    memory (the result does not depend on it). Per call the device holds the (chunk, N, d)
    float32 features once for sgd and twice for logreg (raw and standardised), and the
    host one float32 copy of the chunk: e.g. N=10,000, d=4096 is 164 MB per position.
    ``lockstep``: how many positions of a chunk are vmapped together (the rest run one batch
    after another inside the same program); None for all, ``"auto"`` for
    :func:`default_lockstep`. It changes the speed only, not the probes.
    """
    X, y, valid = _prepare(X, y, valid, settings)
    s = settings
    if lockstep == "auto":
        lockstep = default_lockstep()
    if lockstep is not None and (isinstance(lockstep, bool) or
                                 not isinstance(lockstep, (int, np.integer)) or lockstep < 1):
        raise ValueError(f"lockstep={lockstep!r}; must be None, 'auto' or an integer >= 1")
    yT = jnp.asarray(y.T)
    J = y.shape[1]
    parts = []
    for sl in _position_chunks(X.shape[1], position_chunk):
        x = jnp.asarray(_host_features(X, valid, sl))
        w = jnp.asarray(valid[:, sl].T, jnp.float32)
        if s.kind == "sgd":
            W0, b0 = _init_jit()(s.seed, jnp.arange(sl.start, sl.stop), jnp.arange(J),
                                 d=X.shape[2], num_classes=s.num_classes)
            out = _sgd_all(x, w, yT, W0, b0, s.lr, s.steps, lockstep=lockstep)
        else:
            out = _logreg_all(x, w, yT, s.l2, s.logreg_tol, s.logreg_steps,
                              num_classes=s.num_classes, lockstep=lockstep)
        parts.append([np.asarray(a) for a in out])
        del x
    cat = [np.concatenate(a, axis=0) for a in zip(*parts)]
    if s.kind == "sgd":
        return LinearProbes(cat[0], cat[1], None, None, s)
    return LinearProbes(cat[0], cat[1], cat[2], cat[3], s)


_sgd_one_jit = jax.jit(_sgd_one)
_logreg_one_jit = jax.jit(_logreg_one, static_argnames=("num_classes",))
_standardise_jit = jax.jit(_standardise)


def fit_probe_loop(X, y, valid=None, settings: ProbeSettings = ProbeSettings()) -> LinearProbes:
    """Reference: the same fit as :func:`fit_probes`, one probe at a time.

    A Python loop over (p, j) calls the jitted single-probe fit that :func:`fit_probes` vmaps,
    so both give the same probes up to float reassociation. This is how the original trains
    (one probe after another); the test and the benchmark compare against it.
    """
    X, y, valid = _prepare(X, y, valid, settings)
    s = settings
    N, P, d = X.shape
    J, C = y.shape[1], s.num_classes
    W = np.zeros((P, J, d, C), np.float32)
    b = np.zeros((P, J, C), np.float32)
    mean = scale = None
    if s.kind == "logreg":
        mean, scale = np.zeros((P, d), np.float32), np.ones((P, d), np.float32)
    for p in range(P):
        x = jnp.asarray(_host_features(X, valid, slice(p, p + 1))[0])
        w = jnp.asarray(valid[:, p], jnp.float32)
        if s.kind == "logreg":
            x, m, sc = _standardise_jit(x, w)
            mean[p], scale[p] = np.asarray(m), np.asarray(sc)
        for j in range(J):
            yj = jnp.asarray(y[:, j])
            if s.kind == "sgd":
                W0, b0 = _init_jit()(s.seed, jnp.arange(p, p + 1), jnp.arange(j, j + 1), d=d,
                                     num_classes=C)
                out = _sgd_one_jit(x, w, yj, W0[0, 0], b0[0, 0], s.lr, s.steps)
            else:
                out = _logreg_one_jit(x, w, yj, s.l2, s.logreg_tol, s.logreg_steps,
                                      num_classes=C)
            W[p, j], b[p, j] = np.asarray(out[0]), np.asarray(out[1])
    return LinearProbes(W, b, mean, scale, s)


# ----------------------------------------------------------------------------- scoring
def probe_accuracy(probes: LinearProbes, X, y, valid=None) -> np.ndarray:
    """(P, J) accuracy of each probe on (X, y). A row missing at position p (valid False)
    counts as wrong and stays in the denominator N, like the original's NaN prediction."""
    X = _check_x(X)
    y = _check_labels(y, X.shape[0], probes.settings.num_classes)
    if y.shape[1] != probes.weights.shape[1]:
        raise ValueError(f"y has {y.shape[1]} variables; the probes were fitted on "
                         f"{probes.weights.shape[1]}")
    valid = _check_valid(valid, X.shape[:2])
    pred = probes.predict(X, valid)  # -1 where invalid, never equal to a label
    return (pred == y[:, None, :]).mean(axis=0)


def chance_accuracy(y_test, num_classes: int = 10) -> np.ndarray:
    """(J,) majority-class rate of each variable: the accuracy of always guessing the most
    common value (on the original's 2step data about 0.18 for v0 and 0.11 for v1)."""
    y = _check_labels(y_test, None, num_classes)
    if y.shape[0] == 0:
        raise ValueError(f"y_test has shape {y.shape}; need at least one row")
    counts = np.stack([np.bincount(y[:, j], minlength=num_classes) for j in range(y.shape[1])])
    return counts.max(axis=1) / y.shape[0]
