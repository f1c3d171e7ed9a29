"""Knocking out a list of neurons three ways, against random neurons, as accuracy runs.

Targets:

* the concept neurons: the concatenation of the per-concept lists in concept order (a
  neuron in two concepts is listed twice, as the original's concatenated files do);
* ``original``: the original's random control, ``random.seed(42)``, 10 layers by
  ``random.choice(range(L))`` then 10 indices by ``random.sample(range(1024), 10)`` (with
  CPython on 32 layers: L7N61, L1N191, L17N447, ...; the index range is capped at F);
* ``same_count``: as many random neurons as there are distinct concept neurons, drawn per
  layer from the same layers (the same number in each layer), never a concept neuron.

Ways (``eps`` is one ``N(mean, std)`` vector of width D from ``numpy.random.RandomState(1)``,
the same for every neuron, as the original redraws it with the same seed at every call):

* ``corrupt_faithful``: the original's hook. The target list is de-duplicated by layer (one
  neuron per distinct layer, in first-seen order; the j-th kept layer gets the neuron index
  of entry j of the full list, misaligned when layers repeat), and at every forward call
  ``eps`` is added to that neuron's value vector in place and never removed, so at call m
  (counted over the whole run: every batch's prefill and decoding steps) the vector is
  ``v + m * eps``. Reproduced in closed form per call with
  :func:`~jaxreason.models.weights.add_to_value_vectors` (in float32, then the weights'
  dtype) through the generation runner's per-call weights; every batch prefills its whole
  prompt (the demonstrations see the drift too) and decodes the full budget, so the call
  count is a pure function of the batch (resumable).
* ``corrupt_clean``: ``eps`` added once to every listed (distinct) neuron's value vector, on
  a new parameter tree (the model's own weights are untouched).
* ``zero``: the neurons' activations (``mlp.hook_post``) set to zero at every position and
  step with ``NeuronScale(neurons, 0)``.
"""

from __future__ import annotations

import math
import random
from typing import Sequence

import numpy as np

from jaxreason.hooks import NeuronScale
from jaxreason.models import weights as W

Pairs = list[tuple[int, int]]


def original_random(num_layers: int, width: int, seed: int = 42, count: int = 10,
                    index_range: int = 1024) -> Pairs:
    """The original's random control (module docstring); the global ``random`` state is
    restored afterwards."""
    state = random.getstate()
    try:
        random.seed(seed)
        layers = [random.choice(range(num_layers)) for _ in range(count)]
        indices = random.sample(range(min(index_range, width)), count)
    finally:
        random.setstate(state)
    return list(zip(layers, indices))


def same_count_random(targets: Pairs, width: int, seed: int = 42) -> Pairs:
    """Per layer of ``targets``, as many random non-target neurons as it has distinct ones."""
    rng = random.Random(seed)
    distinct = unique(targets)
    by_layer: dict[int, set] = {}
    for layer, index in distinct:
        by_layer.setdefault(layer, set()).add(index)
    out: Pairs = []
    for layer in sorted(by_layer):
        taken = by_layer[layer]
        pool = [i for i in range(width) if i not in taken]
        if len(pool) < len(taken):
            raise ValueError(f"layer {layer}: {len(taken)} concept neurons leave only "
                             f"{len(pool)} others to draw a same-size control from")
        out += [(layer, i) for i in sorted(rng.sample(pool, len(taken)))]
    return out


def unique(pairs: Sequence[tuple[int, int]]) -> Pairs:
    """The pairs without repeats, first-seen order."""
    seen, out = set(), []
    for p in pairs:
        p = (int(p[0]), int(p[1]))
        if p not in seen:
            seen.add(p)
            out.append(p)
    return out


def faithful_hooks(pairs: Sequence[tuple[int, int]]) -> Pairs:
    """The neurons the original's multiple-neuron hook really touches: one per distinct
    layer (first-seen order), the j-th with the index of entry j of the full list."""
    layers = []
    for layer, _ in pairs:
        if layer not in layers:
            layers.append(layer)
    return [(layer, int(pairs[j][1])) for j, layer in enumerate(layers)]


def noise(width: int, seed: int = 1, mean: float = -1.0, std: float = 1.0) -> np.ndarray:
    """The corruption vector: ``RandomState(seed).normal(mean, std, width)``."""
    return np.random.RandomState(seed).normal(mean, std, width).astype(np.float32)


def clean_params(model, params, pairs: Sequence[tuple[int, int]], eps) -> dict:
    """A new tree with ``eps`` added once to each distinct neuron's value vector."""
    return W.add_to_value_vectors(model, params, unique(pairs), eps)


def zero_interventions(pairs: Sequence[tuple[int, int]]) -> dict:
    """``NeuronScale(..., 0)`` at ``blocks.{l}.mlp.hook_post`` for each layer's neurons."""
    by_layer: dict[int, list[int]] = {}
    for layer, index in unique(pairs):
        by_layer.setdefault(layer, []).append(index)
    return {f"blocks.{l}.mlp.hook_post": NeuronScale(np.asarray(idx, np.int32), 0.0)
            for l, idx in sorted(by_layer.items())}


class CumulativeCorruption:
    """``(start, call) -> params`` with ``eps`` added ``m`` times to the hooked neurons,
    where ``m`` counts every forward call of the run up to and including this one
    (``calls_per_batch`` per batch of ``batch_size`` records)."""

    def __init__(self, model, params, pairs: Sequence[tuple[int, int]], eps,
                 batch_size: int, calls_per_batch: int):
        self.model, self.params = model, params
        self.hooked = faithful_hooks(pairs)
        self.eps = np.asarray(eps, np.float32)
        self.batch_size, self.calls_per_batch = batch_size, calls_per_batch

    def calls_before(self, start: int, call: int) -> int:
        return (start // self.batch_size) * self.calls_per_batch + call

    def __call__(self, start: int, call: int):
        m = self.calls_before(start, call) + 1
        return W.add_to_value_vectors(self.model, self.params, self.hooked, m * self.eps)


def paired_sign_test(first: Sequence[bool], second: Sequence[bool]) -> dict:
    """Two ablations on the same problems: how many only the first / only the second gets
    right, and the two-sided exact sign-test (McNemar) p-value of that split."""
    only_first = sum(bool(a) and not b for a, b in zip(first, second))
    only_second = sum(bool(b) and not a for a, b in zip(first, second))
    n = only_first + only_second
    tail = sum(math.comb(n, k) for k in range(min(only_first, only_second) + 1)) / 2 ** n
    return {"only_first": only_first, "only_second": only_second,
            "p": 1.0 if n == 0 else min(1.0, 2 * tail)}
