"""Think-to-Talk decoding: few-shot greedy chain of thought with residual capture.

A client of :mod:`jaxreason.generation_runner`: the few-shot prompt is prefilled once and its
cache reused by every batch (only the source and the new tokens are computed, as in the
original); each batch decodes greedily to the newline (the stop token) with the residual
stream captured at the requested HF hidden-state indices. What this module adds is the
study's view of a batch: per row the states are trimmed to ``S + generated - 1`` positions
(position p < S is source token p, position S + i is generated token i fed back in; the
final token is never fed in), using the generated count ``generate`` reports rather than the
original's count of trailing EOS pads, and each text is scored by exact match.

Batches go to an :class:`~jaxreason.probe.activation_store.ActivationWriter` as they finish,
so memory holds one batch, and a killed export resumes at the first unwritten batch.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np

from jaxreason.generation_runner import (DecodeSettings, GeneratedBatch, generate_batch,
                                         run_generation)
from jaxreason.hooks import hidden_state_hook
from jaxreason.tasks.formula_tokens import TextCodec, encode_batch
from jaxreason.tasks.formulas import Problem, exact_match


def hidden_indices(num_layers: int, step: int) -> tuple[int, ...]:
    """0, k, 2k, ..., L (the original's ``layer_save_step``); L must be a multiple of k."""
    if step <= 0 or num_layers % step:
        raise ValueError(f"layer_step={step} must be positive and divide the {num_layers} "
                         f"blocks (allowed: {[k for k in range(1, num_layers + 1) if num_layers % k == 0]})")
    return tuple(range(0, num_layers + 1, step))


@dataclasses.dataclass
class BatchResult:
    """One decoded batch: texts, scores, trimmed lengths and (optionally) states."""

    texts: list[str]
    correct: np.ndarray  # (B,) exact match against the gold CoT
    generated: np.ndarray  # (B, max_new) ids, padded with the EOS id after the stop
    lengths: np.ndarray  # (B,) valid state positions: S + forced + generated - 1
    tokens: np.ndarray  # (B, P) input token at every state position
    states: dict  # hidden index -> (B, P, d) float32, P = lengths.max()
    source_states: dict  # hidden index -> (pad_to or B, S, d) states at the source positions


def _settings(codec: TextCodec, max_new_tokens: int, batch_size: int = 1) -> DecodeSettings:
    return DecodeSettings(max_new_tokens=max_new_tokens, batch_size=batch_size,
                          stop_tokens=(codec.eos_id,), pad_token_id=codec.eos_id)


def _prompts(codec: TextCodec, problems: Sequence[Problem], forced) -> np.ndarray:
    """(B, S + forced) source ids (one length per task, checked) plus the forced tokens."""
    ids = encode_batch(codec, [p.source for p in problems])
    if len(forced):
        forced_arr = np.asarray(forced, np.int32)
        if forced_arr.shape[0] != len(problems):
            raise ValueError(f"forced has {forced_arr.shape[0]} rows for {len(problems)} problems")
        ids = np.concatenate([ids, forced_arr], axis=1)
    return ids


def _hooks(num_layers: int, indices, source_indices) -> dict[int, str]:
    return {i: hidden_state_hook(i, num_layers)
            for i in sorted(set(indices) | set(source_indices))}


def _view(batch: GeneratedBatch, codec: TextCodec, problems, source_len: int, hooks: dict,
          indices, source_indices) -> BatchResult:
    """The study's view of a decoded batch (see the module docstring)."""
    n, ids = batch.rows, batch.prompt_ids
    t = ids.shape[1]
    lengths = t + batch.num_generated - 1
    width = int(lengths.max())
    tokens = np.concatenate([ids, batch.generated], axis=1)[:, :width]
    texts = [codec.decode(ids[r, source_len:]) + batch.texts[r] for r in range(n)]
    correct = np.asarray([exact_match(txt, p) for txt, p in zip(texts, problems)])
    # every row, padding included: the patched run of a batch is padded the same way
    captured = {i: np.asarray(batch.captured[h]) for i, h in hooks.items()}
    states = {i: captured[i][:n, :width].astype(np.float32) for i in indices}
    for i in indices:  # zero what lies past each row's end: never trusted, never stored
        states[i][np.arange(width)[None, :] >= lengths[:, None]] = 0.0
    source = {i: captured[i][:, :source_len] for i in source_indices}
    return BatchResult(texts, correct, batch.generated, lengths, tokens, states, source)


def decode_batch(model, params, codec: TextCodec, prefix, problems: Sequence[Problem], *,
                 indices: Sequence[int], max_new_tokens: int, forced: Sequence[Sequence[int]] = (),
                 interventions=None, source_indices: Sequence[int] = (), mesh=None,
                 pad_to: int | None = None) -> BatchResult:
    """Decode one batch of problems after the cached prompt ``prefix``.

    ``forced``: token ids appended to every source (teacher forcing: all rows the same
    length). ``interventions`` apply during the prefill only. ``source_indices``: extra
    hidden indices whose source-position states are returned (the base run of patching).
    ``pad_to``: repeat the first row up to this many rows, so a short last batch reuses the
    compiled programs; the padding rows are dropped from the result."""
    ids = _prompts(codec, problems, forced)
    hooks = _hooks(model.config.num_layers, indices, source_indices)
    batch = generate_batch(model, params, list(ids), _settings(codec, max_new_tokens),
                           decode=codec.decode, prefix=prefix, capture=list(hooks.values()),
                           interventions=interventions, mesh=mesh, pad_to=pad_to,
                           records=problems)
    source_len = ids.shape[1] - (np.shape(forced)[1] if len(forced) else 0)
    return _view(batch, codec, problems, source_len, hooks, indices, source_indices)


def decode_problems(model, params, codec: TextCodec, prefix, problems: Sequence[Problem], *,
                    indices: Sequence[int], batch_size: int, max_new_tokens: int,
                    writer=None, progress: bool = True, desc: str = "decoding", mesh=None,
                    on_batch: Callable[[int, BatchResult], None] | None = None) -> dict:
    """Decode every problem in batches, writing states to ``writer`` (if given).

    Returns the texts and correctness of the rows decoded now; rows a resumed ``writer``
    already holds are skipped (their ``texts`` stay None: read them from the store)."""
    if batch_size <= 0:
        raise ValueError(f"batch_size={batch_size} must be positive")
    source_len = encode_batch(codec, [p.source for p in problems]).shape[1] if problems else 0
    hooks = _hooks(model.config.num_layers, indices, ())

    def view(batch: GeneratedBatch) -> BatchResult:
        if "ttt" not in batch.derived:
            batch.derived["ttt"] = _view(batch, codec, list(batch.records),
                                         source_len, hooks, indices, ())
        return batch.derived["ttt"]

    def to_arrays(batch: GeneratedBatch):
        res = view(batch)
        return writer.chunk_arrays(
            res.states, res.tokens, res.lengths,
            extra={"correct": res.correct, "generated": res.generated,
                   "problem_index": np.arange(batch.start, batch.start + batch.rows)})

    out = run_generation(
        model, params, list(problems), lambda p: codec.encode(p.source),
        _settings(codec, max_new_tokens, batch_size), decode=codec.decode, prefix=prefix,
        capture=list(hooks.values()), to_arrays=to_arrays if writer is not None else None,
        store=writer.store if writer is not None else None, mesh=mesh, progress=progress,
        desc=desc, on_batch=(lambda b: on_batch(b.start, view(b))) if on_batch else None,
        score=lambda problem, text, ids: {"correct": exact_match(text, problem)})
    texts: list[str | None] = [None] * len(problems)
    correct = np.zeros(len(problems), bool)
    for i, row in enumerate(out.results[out.skipped:], start=out.skipped):
        texts[i] = row["text"]
        correct[i] = row["correct"]
    return {"texts": texts, "correct": correct}
