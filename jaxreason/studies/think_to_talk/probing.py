"""Think-to-Talk probing stage (Kudo et al.): one linear probe per (layer, position, variable),
trained on exported states, evaluated on the test export.

Training rows are the probe-training problems the model solved exactly; their states all
have the same length (the gold chain of thought has one length per config), which fixes the
probed positions. Evaluation:

* ``faithful``: every test problem; a position past a problem's end counts as wrong, and a
  longer wrong output is cut at the trained length (both as in the original).
* ``fixed``: the test problems the model solved exactly, so position p is the same token in
  training and test rows; the number of rows is reported.

Every layer is probed with every probe kind asked for (``sgd``: the original's full-batch
GD on raw features; ``logreg``: standardised features with L2 logistic regression, the
control); the rows name the kind and the mode.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from jaxreason.probe.linear import ProbeSettings, fit_probes, probe_accuracy


@dataclasses.dataclass
class LayerProbes:
    """Fitted probes of one task: (kind, hidden index) -> LinearProbes, and the positions."""

    probes: dict
    positions: int
    train_rows: int


def training_rows(store) -> np.ndarray:
    """Indices of the exactly solved problems (the original trains on these only)."""
    correct = store.extra("correct").astype(bool)
    if not correct.any():
        raise ValueError(f"{store.path}: the model solved none of the {store.num_rows} "
                         "probe-training problems exactly; nothing to train probes on")
    return np.flatnonzero(correct)


def fit_task_probes(train_store, answers: np.ndarray, kinds: Sequence[str],
                    settings: dict[str, ProbeSettings], progress: bool = True,
                    desc: str = "probes", train_on: str = "solved") -> LayerProbes:
    """Fit every probe kind at every exported layer.

    ``train_on="solved"`` (the original): the solved probe-training rows, all of one length
    (the gold chain's), which fixes the probed positions. ``"all"``: every row, each
    position trained on the rows that reach it (for models that solve little)."""
    if train_on not in ("solved", "all"):
        raise ValueError(f"train_on={train_on!r}; allowed: 'solved', 'all'")
    rows = (training_rows(train_store) if train_on == "solved"
            else np.arange(train_store.num_rows))
    lengths = train_store.lengths()[rows]
    positions = int(np.bincount(lengths).argmax())  # the most common length
    keep = rows if train_on == "all" else rows[lengths >= positions]
    valid = None if train_on == "solved" else _fit_width(train_store.valid()[keep], positions, False)
    y = answers[keep]
    fitted = {}
    for index in tqdm(train_store.layers, desc=desc, disable=not progress, leave=False):
        X = _fit_width(train_store.layer(index)[keep], positions, 0.0)
        for kind in kinds:
            fitted[(kind, index)] = fit_probes(X, y, valid, settings[kind])
    return LayerProbes(fitted, positions, int(len(keep)))


def evaluate_task_probes(probes: LayerProbes, test_store, answers: np.ndarray, mode: str,
                         rows: np.ndarray | None = None) -> dict:
    """(kind, index) -> (P, J) accuracy on the test export, by the mode's rules."""
    p = probes.positions
    if rows is None:
        rows = (np.arange(test_store.num_rows) if mode == "faithful"
                else np.flatnonzero(test_store.extra("correct").astype(bool)))
    out = {}
    if len(rows) == 0:
        raise ValueError(f"{test_store.path}: the model solved none of the {test_store.num_rows} "
                         "test problems, so fixed mode has no rows to score the probes on; "
                         "use mode: faithful (every test problem) or a stronger model")
    valid = _fit_width(test_store.valid()[rows], p, False)
    y = answers[rows]
    cache = {}
    for (kind, index), fitted in probes.probes.items():
        if index not in cache:
            cache[index] = _fit_width(test_store.layer(index)[rows], p, 0.0)
        out[(kind, index)] = probe_accuracy(fitted, cache[index], y, valid)
    return out


def _fit_width(a: np.ndarray, width: int, fill) -> np.ndarray:
    """Cut or pad the position axis (axis 1) to ``width``."""
    if a.shape[1] >= width:
        return a[:, :width]
    pad = [(0, 0)] * a.ndim
    pad[1] = (0, width - a.shape[1])
    return np.pad(a, pad, constant_values=fill)


def result_rows(accuracy: dict, tokens: Sequence[str], mode: str, task: str,
                chance: np.ndarray, condition: str = "test") -> list[dict]:
    """JSONL rows: one per (probe kind, layer, position, variable)."""
    out = []
    for (kind, index), acc in sorted(accuracy.items()):
        for pos in range(acc.shape[0]):
            for var in range(acc.shape[1]):
                out.append({"mode": mode, "task": task, "condition": condition, "probe": kind,
                            "layer": int(index), "position": pos, "variable": var,
                            "accuracy": float(acc[pos, var]),
                            "token": tokens[pos] if pos < len(tokens) else None,
                            "chance": float(chance[var])})
    return out


def first_decodable(acc_grid: np.ndarray, threshold: float) -> dict | None:
    """Earliest position where some layer reaches ``threshold``: (position, best layer row,
    accuracy); ``acc_grid`` is (layers, positions)."""
    hits = np.argwhere(acc_grid >= threshold)
    if not len(hits):
        return None
    pos = int(hits[:, 1].min())
    row = int(np.argmax(acc_grid[:, pos]))
    return {"position": pos, "layer_row": row, "accuracy": float(acc_grid[row, pos])}


__all__ = ["LayerProbes", "fit_task_probes", "evaluate_task_probes", "result_rows",
           "first_decodable", "training_rows"]
