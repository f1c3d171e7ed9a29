"""Think-to-Talk linear probes (jaxreason.probe.linear): the vmapped fit against the per-probe
loop, learning on synthetic data, the logreg control against scikit-learn, missing positions
and input checks. Tiny shapes and few steps keep the file to seconds on a 2-core CPU; the
shapes are shared between tests so each jitted program compiles once."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from jaxreason.probe import linear as lp

N, P, D, J, C = 96, 3, 8, 2, 10
SGD = lp.ProbeSettings(kind="sgd", steps=60, lr=0.2)
LOGREG = lp.ProbeSettings(kind="logreg", l2=1e-2, logreg_steps=200)
# (position, variable) pairs whose label is written into the features; the rest are noise
DECODABLE = {(1, 0), (2, 1)}


def make_data(n: int, seed: int, signal: float = 3.0):
    """X (n, P, D) Gaussian noise plus, at the DECODABLE (p, j), a class-dependent mean
    ``signal * M_j[y_j]`` (M_j fixed across calls so train and test share it); y (n, J)."""
    rng = np.random.default_rng(seed)
    means = np.random.default_rng(1234).normal(size=(J, C, D))
    y = rng.integers(0, C, (n, J))
    X = rng.normal(size=(n, P, D)).astype(np.float32)
    for p, j in DECODABLE:
        X[:, p] += signal * means[j, y[:, j]]
    return X, y


def ragged_valid(n: int) -> np.ndarray:
    """Rows 0..n/4 stop after position 1 (like a shorter generated sequence)."""
    valid = np.ones((n, P), bool)
    valid[: n // 4, 2] = False
    return valid


# ----------------------------------------------------------------------------- vmap == loop
@pytest.mark.parametrize("settings", [SGD, LOGREG], ids=["sgd", "logreg"])
def test_vmapped_fit_equals_per_probe_loop(settings):
    X, y = make_data(N, seed=0)
    valid = ragged_valid(N)
    X[~valid] = np.nan  # padding must not reach either fit
    fast = lp.fit_probes(X, y, valid, settings)
    ref = lp.fit_probe_loop(X, y, valid, settings)
    assert fast.weights.shape == (P, J, D, C) and fast.bias.shape == (P, J, C)
    assert np.isfinite(fast.weights).all() and np.isfinite(fast.bias).all()
    tol = dict(rtol=1e-4, atol=1e-5) if settings.kind == "sgd" else dict(rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(fast.weights, ref.weights, **tol)
    np.testing.assert_allclose(fast.bias, ref.bias, **tol)
    if settings.kind == "logreg":
        np.testing.assert_allclose(fast.mean, ref.mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(fast.scale, ref.scale, rtol=1e-5)
    else:
        assert fast.mean is None and fast.scale is None


def test_sgd_init_is_torch_linear_default_and_independent_of_batching():
    X, y = make_data(N, seed=0)
    zero = lp.ProbeSettings(kind="sgd", steps=0)
    fast, ref = lp.fit_probes(X, y, None, zero), lp.fit_probe_loop(X, y, None, zero)
    np.testing.assert_array_equal(fast.weights, ref.weights)  # same keys -> same bits
    np.testing.assert_array_equal(fast.bias, ref.bias)
    bound = 1 / np.sqrt(D)
    assert np.abs(fast.weights).max() <= bound and np.abs(fast.bias).max() <= bound
    assert np.abs(fast.weights).max() > 0.8 * bound  # uniform over the range, not tiny
    flat = fast.weights.reshape(P * J, -1)
    assert len({tuple(np.round(r, 6)) for r in flat}) == P * J  # every probe has its own key
    other = lp.fit_probes(X, y, None, lp.ProbeSettings(kind="sgd", steps=0, seed=7))
    assert not np.allclose(other.weights, fast.weights)


@pytest.mark.parametrize("settings", [SGD, LOGREG], ids=["sgd", "logreg"])
def test_lockstep_changes_the_speed_not_the_probes(settings):
    """Two positions vmapped together (then the remainder) and one at a time fit the same
    probes (all at once is the ``lockstep`` of accelerators and the batched case's limit)."""
    X, y = make_data(N, seed=0)
    ref = lp.fit_probes(X, y, None, settings, lockstep=1)
    got = lp.fit_probes(X, y, None, settings, lockstep=2)
    tol = dict(rtol=1e-4, atol=1e-5) if settings.kind == "sgd" else dict(rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(got.weights, ref.weights, **tol)
    np.testing.assert_allclose(got.bias, ref.bias, **tol)
    with pytest.raises(ValueError, match="lockstep=0"):
        lp.fit_probes(X, y, None, settings, lockstep=0)


def test_position_chunks_give_the_same_probes():
    X, y = make_data(N, seed=0)
    whole = lp.fit_probes(X, y, None, SGD)
    chunked = lp.fit_probes(X, y, None, SGD, position_chunk=2)
    np.testing.assert_allclose(chunked.weights, whole.weights, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- learning
@pytest.mark.parametrize("settings", [SGD, LOGREG], ids=["sgd", "logreg"])
def test_probes_decode_where_the_label_is_and_not_elsewhere(settings):
    Xtr, ytr = make_data(N, seed=1)
    Xte, yte = make_data(N, seed=2)
    probes = lp.fit_probes(Xtr, ytr, None, settings)
    acc = lp.probe_accuracy(probes, Xte, yte)
    assert acc.shape == (P, J)
    chance = lp.chance_accuracy(yte)
    for p in range(P):
        for j in range(J):
            if (p, j) in DECODABLE:
                assert acc[p, j] > 0.85, (settings.kind, p, j, acc)
            else:  # noise features: held-out accuracy near the majority rate
                assert acc[p, j] < chance[j] + 0.15, (settings.kind, p, j, acc)


def test_logreg_agrees_with_sklearn():
    Xtr, ytr = make_data(N, seed=1, signal=1.0)  # overlapping classes: not trivially 100%
    Xte, yte = make_data(N, seed=2, signal=1.0)
    probes = lp.fit_probes(Xtr, ytr, None, LOGREG)
    ours = lp.probe_accuracy(probes, Xte, yte)
    for p in range(P):
        mu, sd = Xtr[:, p].mean(0), Xtr[:, p].std(0)
        np.testing.assert_allclose(probes.mean[p], mu, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(probes.scale[p], sd, rtol=1e-4)
        for j in range(J):
            sk = LogisticRegression(C=1.0 / (LOGREG.l2 * N), tol=1e-10, max_iter=10_000)
            sk.fit((Xtr[:, p] - mu) / sd, ytr[:, j])
            assert list(sk.classes_) == list(range(C))
            sk_acc = (sk.predict((Xte[:, p] - mu) / sd) == yte[:, j]).mean()
            assert abs(ours[p, j] - sk_acc) <= 0.03, (p, j, ours[p, j], sk_acc)
            # same convex objective -> same optimum (bias only up to a shift common to classes)
            np.testing.assert_allclose(probes.weights[p, j], sk.coef_.T, atol=2e-3, rtol=1e-2)
            b_sk = sk.intercept_ - sk.intercept_.mean()
            b = probes.bias[p, j] - probes.bias[p, j].mean()
            np.testing.assert_allclose(b, b_sk, atol=2e-3, rtol=1e-2)


# ----------------------------------------------------------------------------- missing positions
@pytest.mark.parametrize("settings", [SGD, LOGREG], ids=["sgd", "logreg"])
def test_invalid_rows_are_excluded_from_training(settings):
    X, y = make_data(N, seed=0)
    valid = ragged_valid(N)
    a, b = X.copy(), X.copy()
    a[~valid] = np.nan
    b[~valid] = np.random.default_rng(5).normal(size=b[~valid].shape) * 1e6
    fa, fb = lp.fit_probes(a, y, valid, settings), lp.fit_probes(b, y, valid, settings)
    np.testing.assert_array_equal(fa.weights, fb.weights)
    if settings.kind == "logreg":  # standardised over the valid rows only
        np.testing.assert_allclose(fa.mean[2], X[valid[:, 2], 2].mean(0), rtol=1e-4, atol=1e-5)


def test_invalid_positions_count_as_wrong_at_test():
    Xtr, ytr = make_data(N, seed=1)
    Xte, yte = make_data(N, seed=2)
    probes = lp.fit_probes(Xtr, ytr, None, LOGREG)
    full = lp.probe_accuracy(probes, Xte, yte)
    valid = ragged_valid(N)
    Xte[~valid] = np.nan
    part = lp.probe_accuracy(probes, Xte, yte, valid)
    np.testing.assert_array_equal(part[:2], full[:2])
    pred = probes.predict(Xte, valid)
    assert (pred[~valid] == -1).all()
    # NaN padding without a mask is still never a class
    np.testing.assert_array_equal(probes.predict(Xte), pred)
    right = (pred[:, 2] == yte)[valid[:, 2]].sum(axis=0)
    np.testing.assert_allclose(part[2], right / N)  # denominator: every row
    assert (part[2] < full[2]).all()


def test_chance_accuracy_is_the_majority_rate():
    y = np.array([[0, 3], [0, 4], [1, 5], [0, 5]])
    np.testing.assert_allclose(lp.chance_accuracy(y), [0.75, 0.5])


# ----------------------------------------------------------------------------- bad input
def test_bad_inputs_name_the_bad_value():
    X, y = make_data(6, seed=0)
    bad = y.copy()
    bad[4, 1] = 12
    with pytest.raises(ValueError, match=r"y\[4, 1\]=12 is outside 0..9"):
        lp.fit_probes(X, bad, None, SGD)
    bad[4, 1] = -1
    with pytest.raises(ValueError, match="-1 is outside"):
        lp.fit_probe_loop(X, bad, None, SGD)
    with pytest.raises(ValueError, match="not an integer"):
        lp.fit_probes(X, y + 0.5, None, SGD)
    with pytest.raises(ValueError, match="y has 5 rows but X has 6"):
        lp.fit_probes(X, y[:5], None, SGD)
    with pytest.raises(ValueError, match=r"X has shape \(6, 24\); expected 3 dims"):
        lp.fit_probes(X.reshape(6, -1), y, None, SGD)
    with pytest.raises(ValueError, match=r"valid has shape \(6, 2\); expected \(6, 3\)"):
        lp.fit_probes(X, y, np.ones((6, 2), bool), SGD)
    with pytest.raises(ValueError, match=r"kind='adam'; allowed: \('sgd', 'logreg'\)"):
        lp.ProbeSettings(kind="adam")
    with pytest.raises(ValueError, match="steps=-1"):
        lp.ProbeSettings(steps=-1)
    with pytest.raises(ValueError, match="position_chunk=0"):
        lp.fit_probes(X, y, None, SGD, position_chunk=0)
    probes = lp.fit_probes(X, y, None, lp.ProbeSettings(kind="sgd", steps=0))
    with pytest.raises(ValueError, match=r"X has shape \(6, 3, 5\); these probes need"):
        lp.probe_accuracy(probes, X[:, :, :5], y)
