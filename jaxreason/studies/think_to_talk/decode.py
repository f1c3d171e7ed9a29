"""Think-to-Talk decoding: few-shot greedy chain of thought with residual capture (spec §3-4).

The few-shot prompt is prefilled once (:func:`jaxreason.models.generate.prefill_prefix`) and
its cache reused by every batch, so only the source and the new tokens are computed, as in
the original. Each batch decodes greedily to the newline with the residual stream captured
at the requested HF hidden-state indices; per row the states are trimmed to
``S + generated - 1`` positions (position p < S is source token p, position S + i is
generated token i fed back in; the final token is never fed in), using the generated count
``generate`` reports rather than the original's count of trailing EOS pads.

Batches go to an :class:`~jaxreason.probe.activation_store.ActivationWriter` as they finish,
so memory holds one batch, and a killed export resumes at the first unwritten batch.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import jax
import numpy as np
from tqdm.auto import tqdm

from jaxreason.hooks import hidden_state_hook
from jaxreason.models.generate import generate
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
    n = len(problems)
    ids = encode_batch(codec, [p.source for p in problems])
    s = ids.shape[1]
    if len(forced):
        forced_arr = np.asarray(forced, np.int32)
        if forced_arr.shape[0] != n:
            raise ValueError(f"forced has {forced_arr.shape[0]} rows for {n} problems")
        ids = np.concatenate([ids, forced_arr], axis=1)
    if pad_to and pad_to > n:
        ids = np.concatenate([ids, np.repeat(ids[:1], pad_to - n, axis=0)])
    L = model.config.num_layers
    hooks = {i: hidden_state_hook(i, L) for i in sorted(set(indices) | set(source_indices))}
    out = generate(model, params, ids, max_new_tokens=max_new_tokens,
                   eos_token_id=codec.eos_id, pad_token_id=codec.eos_id,
                   capture=list(hooks.values()), interventions=interventions,
                   intervene_on="prefill", prefix=prefix, mesh=mesh)
    generated = np.asarray(jax.device_get(out.generated))[:n]
    n_gen = np.asarray(jax.device_get(out.num_generated))[:n]
    t = ids.shape[1]
    lengths = t + n_gen - 1
    width = int(lengths.max())
    tokens = np.concatenate([ids[:n], generated], axis=1)[:, :width]
    forced_text = [codec.decode(ids[r, s:]) for r in range(n)]
    texts = [forced_text[r] + codec.decode(generated[r, :n_gen[r]]) for r in range(n)]
    correct = np.asarray([exact_match(txt, p) for txt, p in zip(texts, problems)])
    # every row, padding included: the patched run of a batch is padded the same way
    captured = {i: np.asarray(jax.device_get(out.captured[h])) for i, h in hooks.items()}
    states = {i: captured[i][:n, :width].astype(np.float32) for i in indices}
    for i in indices:  # zero what lies past each row's end: never trusted, never stored
        states[i][np.arange(width)[None, :] >= lengths[:, None]] = 0.0
    source = {i: captured[i][:, :s] for i in source_indices}
    return BatchResult(texts, correct, generated, lengths, tokens, states, source)


def decode_problems(model, params, codec: TextCodec, prefix, problems: Sequence[Problem], *,
                    indices: Sequence[int], batch_size: int, max_new_tokens: int,
                    writer=None, progress: bool = True, desc: str = "decoding", mesh=None,
                    forced_for: Callable | None = None,
                    on_batch: Callable[[int, BatchResult], None] | None = None) -> dict:
    """Decode every problem in batches, writing states to ``writer`` (if given).

    Returns the texts and correctness of the rows decoded now; rows a resumed ``writer``
    already holds are skipped (their ``texts`` stay None: read them from the store)."""
    if batch_size <= 0:
        raise ValueError(f"batch_size={batch_size} must be positive")
    start = writer.done_rows() if writer is not None else 0
    texts: list[str | None] = [None] * len(problems)
    correct = np.zeros(len(problems), bool)
    if start % batch_size and start != len(problems):
        raise ValueError(f"the export holds {start} rows, not a multiple of batch_size="
                         f"{batch_size}; resume with the batch size it was written with")
    bar = tqdm(total=len(problems), initial=start, desc=desc, disable=not progress)
    for lo in range(start, len(problems), batch_size):
        chunk = problems[lo:lo + batch_size]
        forced = forced_for(chunk) if forced_for else ()
        res = decode_batch(model, params, codec, prefix, chunk, indices=indices,
                           max_new_tokens=max_new_tokens, forced=forced, mesh=mesh,
                           pad_to=batch_size)
        texts[lo:lo + len(chunk)] = res.texts
        correct[lo:lo + len(chunk)] = res.correct
        if writer is not None:
            writer.write(res.states, res.tokens, res.lengths,
                         extra={"correct": res.correct, "generated": res.generated,
                                "problem_index": np.arange(lo, lo + len(chunk))})
        if on_batch is not None:
            on_batch(lo, res)
        bar.update(len(chunk))
    bar.close()
    return {"texts": texts, "correct": correct}
