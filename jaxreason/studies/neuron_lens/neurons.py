"""Dominant neurons and what they promote in vocabulary space (Algorithms One and Two of the
neuron lens, after Geva et al. 2022).

Algorithm One's per-step top-k lists (:class:`~.decoding.DominantNeurons`) are aggregated
per layer as the original does: over examples 0..N-1, positions in order and ranks in order,
the first-seen record of every neuron is kept (its score there is the neuron's ``score``;
we add how often it was dominant and its best score).

Algorithm Two projects each layer's value vectors through the unembedding once,
``W_U @ W_down`` (F columns of V logits), takes the softmax over the vocabulary and keeps only
the top-``m`` tokens per neuron (in F-chunks, so a 7B layer never holds more than a chunk of
F x V logits at once). ``raw`` projects the value vectors as they are (the original);
``final_norm`` applies the model's final norm first (a variant the report compares).

Saved formats (see the README): ``neurons.json`` (per neuron: layer, index, score, count,
best score, the promoted tokens with ids and probabilities) and, optionally, the original's
``cot_all_{k}.json`` per example (``{"top_coef_idx": [L][T][k], "top_coef_vals": ...}``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from jaxreason import atomic
from jaxreason.models import weights as W

PROJECTION_CHUNK = 4096  # value vectors projected at once


@dataclasses.dataclass
class Neuron:
    """A dominant neuron ``L{layer}N{index}`` and what it promotes."""

    layer: int
    index: int
    score: float  # its score where it was first seen (the original's ``coeffs``)
    count: int = 0  # (example, position) pairs in whose top-k it was
    best: float = 0.0
    tokens: list[str] = dataclasses.field(default_factory=list)
    token_ids: list[int] = dataclasses.field(default_factory=list)
    probs: list[float] = dataclasses.field(default_factory=list)
    concepts: list[str] = dataclasses.field(default_factory=list)

    @property
    def name(self) -> str:
        return f"L{self.layer}N{self.index}"

    def as_json(self) -> dict:
        return {"name": self.name, **dataclasses.asdict(self)}


def aggregate(dominant) -> dict[int, dict[int, Neuron]]:
    """``{layer: {index: Neuron}}``: every neuron in some valid top-k list, first-seen order."""
    idx, sc, valid = dominant.indices, dominant.scores, dominant.valid
    n, L = idx.shape[:2]
    out: dict[int, dict[int, Neuron]] = {l: {} for l in range(L)}
    for l in range(L):
        layer = out[l]
        for e in range(n):
            for t in np.flatnonzero(valid[e]):
                for i, s in zip(idx[e, l, t].tolist(), sc[e, l, t].tolist()):
                    neuron = layer.get(i)
                    if neuron is None:
                        neuron = layer[i] = Neuron(l, i, float(s))
                    neuron.count += 1
                    neuron.best = max(neuron.best, float(s))
    return out


def top_promoted(model, params, layer: int, m: int, final_norm: bool = False):
    """(ids (F, m), probs (F, m)): each neuron's top-``m`` tokens under softmax(W_U v_i)."""
    vectors = W.value_vectors(model, params, layer)
    ids, probs = [], []
    for lo in range(0, vectors.shape[0], PROJECTION_CHUNK):
        logits = W.logit_lens(model, params, vectors[lo:lo + PROJECTION_CHUNK],
                              use_final_norm=final_norm)
        top = W.top_tokens(logits, m)
        ids.append(np.asarray(top.ids))
        probs.append(np.asarray(top.probs))
    return np.concatenate(ids), np.concatenate(probs)


def project(model, params, tokenizer, neurons: dict[int, dict[int, Neuron]], m: int,
            final_norm: bool = False) -> dict[str, dict]:
    """Fill every neuron's promoted tokens (``final_norm`` False) or return the variant's
    ``{name: {"tokens", "token_ids"}}`` without touching them (``final_norm`` True)."""
    variant: dict[str, dict] = {}
    for layer, found in neurons.items():
        if not found:
            continue
        ids, probs = top_promoted(model, params, layer, m, final_norm)
        for i, neuron in found.items():
            row = ids[i].tolist()
            words = [tokenizer.decode([t]) for t in row]
            if final_norm:
                variant[neuron.name] = {"tokens": words, "token_ids": row}
            else:
                neuron.tokens, neuron.token_ids = words, row
                neuron.probs = [float(p) for p in probs[i]]
    return variant


def flat(neurons: dict[int, dict[int, Neuron]]) -> list[Neuron]:
    return [n for layer in sorted(neurons) for n in neurons[layer].values()]


def save_neurons(path: Path, neurons: list[Neuron], meta: dict) -> Path:
    return atomic.write_json(path, {**meta, "neurons": [n.as_json() for n in neurons]})


def save_original_layout(directory: Path, dominant) -> list[Path]:
    """The original's ``cot_all_{k}.json`` per example: ``top_coef_idx``/``top_coef_vals``
    as [layer][position][rank] lists."""
    paths = []
    for k in range(dominant.indices.shape[0]):
        paths.append(atomic.write_json(
            directory / f"cot_all_{k}.json",
            {"top_coef_idx": dominant.indices[k].tolist(),
             "top_coef_vals": dominant.scores[k].tolist()}, indent=None))
    return paths


def overlap(neurons: list[Neuron], variant: dict[str, dict]) -> float:
    """Mean share of a neuron's promoted tokens that the final-norm variant also promotes."""
    shares = [len(set(n.token_ids) & set(variant[n.name]["token_ids"])) / max(len(n.token_ids), 1)
              for n in neurons if n.name in variant]
    return float(np.mean(shares)) if shares else 0.0

