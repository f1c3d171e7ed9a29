"""kNN probes, splits, probing scores and P1/P2 rows of MechanisticProbe (Hou et al., 2023).

Everything here is numpy + scikit-learn on CPU; the features come from
:mod:`jaxreason.probe.features` and the labels from the task modules (this module takes label
arrays as inputs and imports no task).

Classifier: ``KNeighborsClassifier(n_neighbors=8, weights="distance")`` everywhere. The
Euclidean metric is used for GPT-2 and Manhattan (``p=1``) for LLaMA. With distance weights, a
training point at distance 0 takes the whole vote (sklearn gives zero-distance neighbours
weight 1 and the rest 0).

Splits:

* :func:`knn_f1_two_fold_rows` (**faithful**, GPT-2). The rows are stacked example by
  example, but the split index is ``int(n_examples / 2)``, an *example* count, applied to
  *rows*. With 1,024 examples of 16 rows each, fold A trains on 512 rows (32 examples)
  and tests on the other 15,872; fold B is the reverse. The score is the mean of the two
  macro-F1s. A row split also lets two rows of one example sit on both sides.
* :func:`knn_f1_by_example` (**fixed**). A seeded split of the *examples* into ``folds``
  near-equal groups. Every group is tested once against a model trained on the others, and
  the score is the mean macro-F1.
* :func:`knn_f1_cv` (**faithful**, LLaMA). ``cross_val_score(cv=5, scoring="f1_macro")``, which
  for a classifier and an integer ``cv`` is StratifiedKFold without shuffling over rows, with
  no grouping by example.

F1: ``average="macro"`` with ``zero_division=0``. This matches sklearn 0.24's "warn" default,
which scores an ill-defined F1 as 0. For the faithful P2 labels (a 2-column indicator
``[1, is_answer]``), sklearn treats y as multilabel: the prediction is per column and macro-F1
is the mean over columns. Column 0 is constant, so its F1 is 1 and the score is
``(1 + F1_answer) / 2``. The fixed P2 labels are the single binary ``is_answer``, and
macro-F1 there is the mean of the answer and non-answer F1s.

Probing score: ``S = (F1_model - F1_rand) / (1 - F1_rand)`` (:func:`probing_score`). It is NaN
when ``F1_rand == 1``. That always happens for P2 at K=0: the only useful number is the answer,
so both labellings are a single class with F1 = 1, and S is 0/0. The original divides and gets
NaN there too.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
from sklearn.metrics import f1_score
from sklearn.model_selection import cross_val_score
from sklearn.neighbors import KNeighborsClassifier

__all__ = [
    "make_knn", "knn_f1_two_fold_rows", "knn_f1_by_example", "knn_f1_cv", "probing_score",
    "layerwise_scores", "p1_rows", "p2_rows",
]


def make_knn(p: int = 2) -> KNeighborsClassifier:
    """The probe classifier: 8 neighbours, 1/d weights, Minkowski ``p`` (2 Euclidean, 1 L1)."""
    return KNeighborsClassifier(n_neighbors=8, weights="distance", p=p)


def _macro_f1(y_true, y_pred, average: str = "macro") -> float:
    return float(f1_score(y_true, y_pred, average=average, zero_division=0))


def _fit_score(X_tr, y_tr, X_te, y_te, p: int = 2, average: str = "macro") -> float:
    clf = make_knn(p).fit(X_tr, y_tr)
    return _macro_f1(y_te, clf.predict(X_te), average)


# ----------------------------------------------------------------------------- splits

def knn_f1_two_fold_rows(X_rows, y_rows, n_examples: int) -> float:
    """Faithful GPT-2 probe split: mean macro-F1 of two folds split at *row*
    ``int(n_examples / 2)``.

    Args:
      X_rows: (R, F) features, rows stacked example by example.
      y_rows: (R,) labels, or (R, C) multilabel indicators (faithful P2: ``[1, is_answer]``).
      n_examples: the number of *examples* (1,024 in the original). The bug: this example
        count is used as a row index.
    Returns:
      (F1 of fold A + F1 of fold B) / 2, where fold A trains on rows ``[0, h)`` and tests on
      ``[h, R)``, fold B the reverse, and ``h = int(n_examples / 2)``.
    """
    X = np.asarray(X_rows)
    y = np.asarray(y_rows)
    h = int(n_examples / 2)
    if not 0 < h < len(X):
        raise ValueError(f"split row {h} (= n_examples/2) must fall inside the {len(X)} rows")
    a = _fit_score(X[:h], y[:h], X[h:], y[h:])
    b = _fit_score(X[h:], y[h:], X[:h], y[:h])
    return (a + b) / 2


def knn_f1_by_example(X, y, example_ids, folds: int = 2, seed: int = 0, *, p: int = 2,
                      average: str = "macro") -> float:
    """Fixed split: every example's rows stay on one side (mean macro-F1 over ``folds``).

    The distinct ``example_ids`` are shuffled with ``numpy.random.default_rng(seed)`` and cut
    into ``folds`` near-equal groups. Each group is the test set once, and the classifier is
    trained on the rows of the other groups.
    """
    X = np.asarray(X)
    y = np.asarray(y)
    ids = np.asarray(example_ids)
    if not len(X) == len(y) == len(ids):
        raise ValueError(f"X, y and example_ids differ in length: {len(X)}, {len(y)}, {len(ids)}")
    uniq = np.unique(ids)
    if folds < 2 or folds > len(uniq):
        raise ValueError(f"folds must be in 2..{len(uniq)} (the number of examples), got {folds}")
    groups = np.array_split(np.random.default_rng(seed).permutation(uniq), folds)
    scores = []
    for g in groups:
        test = np.isin(ids, g)
        scores.append(_fit_score(X[~test], y[~test], X[test], y[test], p=p, average=average))
    return float(np.mean(scores))


def knn_f1_cv(X, y, cv: int = 5, p: int = 1) -> float:
    """Faithful LLaMA probe: ``cross_val_score(KNN(8, distance, p), cv=cv,
    scoring="f1_macro").mean()``; stratified, unshuffled, row-level folds."""
    scores = cross_val_score(make_knn(p), np.asarray(X), np.asarray(y), cv=cv,
                             scoring="f1_macro")
    return float(np.mean(scores))


# ----------------------------------------------------------------------------- scores

def probing_score(f1_model, f1_random):
    """``(F1_model - F1_rand) / (1 - F1_rand)``; NaN where ``F1_rand == 1`` (e.g. S_P2 at K=0).

    Accepts scalars (returns a float) or arrays (returns an array)."""
    m = np.asarray(f1_model, np.float64)
    r = np.asarray(f1_random, np.float64)
    denom = 1.0 - r
    zero = np.abs(denom) <= 1e-12
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.where(zero, np.nan, (m - r) / np.where(zero, 1.0, denom))
    return float(s) if s.ndim == 0 else s


def layerwise_scores(X, y, scorer: Callable[[np.ndarray, np.ndarray], float],
                     layers: Sequence[int] | None = None) -> np.ndarray:
    """F1 of the probe using only the first ``l`` feature columns (layers), for each ``l``.

    Faithful ``probe_layer``: the features are normalised over *all* layers first and then
    sliced, which is what slicing the columns of ``X`` does.

    Args:
      X: (R, L) rows (layers in columns).
      y: labels for the rows.
      scorer: ``scorer(X_sub, y) -> F1``, e.g. ``lambda X, y: knn_f1_two_fold_rows(X, y, 1024)``.
      layers: prefix lengths (default ``1..L``).
    Returns:
      (len(layers),) array of F1s.
    """
    X = np.asarray(X)
    layers = range(1, X.shape[1] + 1) if layers is None else layers
    return np.array([scorer(X[:, :l], y) for l in layers])


# ----------------------------------------------------------------------------- rows

def _stack_examples(features):
    feats = [np.asarray(f) for f in features]
    if any(f.ndim != 2 for f in feats):
        raise ValueError("features must be per-example (S, L) matrices")
    return feats


def p1_rows(features, p1_labels):
    """P1 ("noise") rows: every number of every example, label 1 = useful.

    Args:
      features: (N, S, L) array or a list of per-example (S, L) matrices.
      p1_labels: (N, S) 0/1 (or a list of (S,) arrays).
    Returns:
      ``X (R, L)``, ``y (R,) int``, ``example_ids (R,)``, with rows stacked example by example
      in position order (the original's order).
    """
    feats = _stack_examples(features)
    labels = [np.asarray(lab).reshape(-1).astype(int) for lab in p1_labels]
    if len(feats) != len(labels) or any(len(f) != len(lab) for f, lab in zip(feats, labels)):
        raise ValueError("features and p1_labels do not match in examples or rows")
    X = np.concatenate(feats)
    y = np.concatenate(labels)
    ids = np.concatenate([np.full(len(f), i) for i, f in enumerate(feats)])
    return X, y, ids


def p2_rows(features, p1_labels, answer_positions, faithful: bool = True):
    """P2 ("depth") rows: the useful numbers only, in position order.

    Args:
      features: (N, S, L) array or a list of per-example (S, L) matrices.
      p1_labels: (N, S) 0/1 useful labels.
      answer_positions: (N,) the position of the answer (the first occurrence of sorted[K]);
        it must be a useful position.
      faithful: True gives the original 2-column multilabel ``[1, is_answer]`` (y (R, 2)).
        False gives the single binary ``is_answer`` (y (R,)).
    Returns:
      ``X (R, L)``, ``y``, ``example_ids (R,)``.
    """
    feats = _stack_examples(features)
    answers = np.asarray(answer_positions, int).reshape(-1)
    if len(feats) != len(p1_labels) or len(feats) != len(answers):
        raise ValueError("features, p1_labels and answer_positions differ in length")
    xs, ys, ids = [], [], []
    for i, (f, lab, ans) in enumerate(zip(feats, p1_labels, answers)):
        useful = np.flatnonzero(np.asarray(lab).reshape(-1))
        if ans not in useful:
            raise ValueError(f"example {i}: answer position {ans} is not a useful position")
        xs.append(f[useful])
        ys.append((useful == ans).astype(int))
        ids.append(np.full(len(useful), i))
    y = np.concatenate(ys)
    if faithful:
        y = np.stack([np.ones_like(y), y], axis=1)
    return np.concatenate(xs), y, np.concatenate(ids)
