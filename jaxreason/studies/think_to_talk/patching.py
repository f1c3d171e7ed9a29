"""Activation patching for Think-to-Talk (Kudo et al.): does a state the model holds before its
chain of thought decide the answer?

Per batch of counterfactual pairs: a *base run* decodes the original problem and keeps its
residual stream at the source positions; a *patched run* decodes the edited problem with the
residual stream at hidden indices ``l >= start_layer`` and source positions
``[start_position, end_position]`` overwritten by the base run's values, during the prefill
only (the core's ``Replace`` with ``intervene_on="prefill"``); generation then continues
unpatched from the patched cache. Because every index from ``start_layer`` up is overwritten,
the keys and values at those positions in the blocks above are the base run's too.

Scores (per pair): ``base_accuracy`` (base output = base gold), ``accuracy`` (patched output
= edited gold: the patch did nothing), ``intervention_accuracy`` (patched output = base gold:
the patch carried over completely). With ``teacher_force`` the first tokens of each
problem's own gold chain of thought are appended to its input, so only the tail is
generated; ``intervention_accuracy`` is then ~0 by construction and ``accuracy`` says
whether the final answer follows the written chain or the patched pre-CoT state.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from jaxreason.hooks import Replace, hidden_state_hook
from jaxreason.studies.think_to_talk.decode import decode_batch
from jaxreason.tasks.formula_tokens import TextCodec, encode_batch
from jaxreason.tasks.formulas import EditPair, exact_match

PLACEHOLDERS = {"<edited>": "the token that differs between base and edited problem",
                "<query>": "the queried variable", "<digit>": "any digit"}


def check_patch_positions(codec: TextCodec, pairs: Sequence[EditPair], start: int, end: int,
                          expect: Sequence[str]) -> list[str]:
    """Make sure positions ``start..end`` land on the intended tokens for this tokenizer.

    ``expect`` names one token per position (compared with surrounding spaces stripped), or
    a placeholder from :data:`PLACEHOLDERS`. The original hard-coded Llama-3's positions
    (13-14, 15-17) for every model; a tokenizer that splits the source differently fails here, with
    the source's tokens listed so the right positions can be read off. Returns sample 0's
    tokens at the positions."""
    base = encode_batch(codec, [p.base.source for p in pairs], "base source")
    edited = encode_batch(codec, [p.edited.source for p in pairs], "edited source")
    if base.shape != edited.shape:
        raise ValueError(f"base and edited sources tokenize to different lengths "
                         f"({base.shape[1]} vs {edited.shape[1]})")
    s = base.shape[1]
    if not 0 <= start <= end < s:
        raise ValueError(f"patch positions {start}..{end} must satisfy 0 <= start <= end < "
                         f"{s} (the source length in tokens)")
    if len(expect) != end - start + 1:
        raise ValueError(f"patch_expect has {len(expect)} entries for the {end - start + 1} "
                         f"positions {start}..{end}")
    tokens0 = [t.strip() for t in codec.token_strings(base[0])]
    listing = " | ".join(f"{i}:{t!r}" for i, t in enumerate(tokens0))
    for pos, want in zip(range(start, end + 1), expect):
        for r, pair in enumerate(pairs):
            got = codec.token_strings([base[r, pos]])[0].strip()
            ok = {"<edited>": base[r, pos] != edited[r, pos],
                  "<query>": got == pair.base.query,
                  "<digit>": got.isdigit() and len(got) == 1}.get(want, got == want)
            if not ok:
                what = PLACEHOLDERS.get(want, repr(want))
                raise ValueError(f"patch position {pos} holds {got!r} in pair {r}, not "
                                 f"{what}; this tokenizer's source tokens are: {listing}")
    return tokens0[start:end + 1]


def patch_interventions(source_states: dict, num_layers: int, start_layer: int, start: int,
                        end: int, prefix_len: int) -> dict:
    """``Replace`` specs putting the base states back at hidden indices >= ``start_layer``.

    Positions are absolute cache slots, so the cached prompt's length is added."""
    if not 0 <= start_layer <= num_layers:
        raise ValueError(f"patch start_layer={start_layer} is outside 0..{num_layers}")
    slots = prefix_len + np.arange(start, end + 1, dtype=np.int32)
    return {hidden_state_hook(i, num_layers): Replace(source_states[i][:, start:end + 1], slots)
            for i in range(start_layer, num_layers + 1)}


def run_patching(model, params, codec: TextCodec, prefix, pairs: Sequence[EditPair], *,
                 start_layer: int, start: int, end: int, indices: Sequence[int],
                 batch_size: int, max_new_tokens: int, teacher_force: int = 0,
                 writer=None, progress: bool = True, desc: str = "patching", mesh=None) -> dict:
    """Base and patched runs over every pair; returns the three accuracies and, per pair,
    the outputs. The patched run's states go to ``writer`` for probing."""
    L = model.config.num_layers
    prefix_len = prefix.max_len
    layers = tuple(range(start_layer, L + 1))
    rows = []
    start_row = writer.done_rows() if writer is not None else 0
    bar = tqdm(total=len(pairs), initial=start_row, desc=desc, disable=not progress)
    for lo in range(start_row, len(pairs), batch_size):
        chunk = pairs[lo:lo + batch_size]
        base_p, edit_p = [p.base for p in chunk], [p.edited for p in chunk]
        forced_b = _gold_prefix(codec, base_p, teacher_force)
        forced_e = _gold_prefix(codec, edit_p, teacher_force)
        base = decode_batch(model, params, codec, prefix, base_p, indices=(),
                            source_indices=layers, max_new_tokens=max_new_tokens,
                            forced=forced_b, mesh=mesh, pad_to=batch_size)
        edits = patch_interventions(base.source_states, L, start_layer, start, end, prefix_len)
        patched = decode_batch(model, params, codec, prefix, edit_p, indices=indices,
                               max_new_tokens=max_new_tokens, forced=forced_e,
                               interventions=edits, mesh=mesh, pad_to=batch_size)
        # decode_batch scored each run against its own problem; only the carry-over is new
        transferred = np.asarray([exact_match(t, p.base) for t, p in zip(patched.texts, chunk)])
        for r in range(len(chunk)):
            rows.append({"pair": lo + r, "base_output": base.texts[r],
                         "patched_output": patched.texts[r],
                         "base_correct": bool(base.correct[r]),
                         "patch_no_effect": bool(patched.correct[r]),
                         "patch_transferred": bool(transferred[r])})
        if writer is not None:
            writer.write(patched.states, patched.tokens, patched.lengths,
                         extra={"correct": patched.correct, "generated": patched.generated,
                                "problem_index": np.arange(lo, lo + len(chunk)),
                                "base_correct": base.correct, "transferred": transferred})
        bar.update(len(chunk))
    bar.close()
    return {"rows": rows}


def _gold_prefix(codec: TextCodec, problems, count: int):
    """The first ``count`` tokens of each problem's gold target (teacher forcing)."""
    if not count:
        return ()
    golds = encode_batch(codec, [p.target for p in problems], "gold target")
    if count >= golds.shape[1]:
        raise ValueError(f"teacher_force={count} must be shorter than the gold target "
                         f"({golds.shape[1]} tokens)")
    return golds[:, :count]


def summarize(rows: Sequence[dict], store=None) -> dict:
    """The three accuracies over every pair (a resumed run reads earlier batches from its
    store's extras)."""
    if store is not None:
        base = store.extra("base_correct").astype(bool)
        return {"pairs": int(len(base)), "base_accuracy": float(base.mean()),
                "accuracy": float(store.extra("correct").astype(bool).mean()),
                "intervention_accuracy": float(store.extra("transferred").astype(bool).mean())}
    n = max(len(rows), 1)
    return {"pairs": len(rows),
            "base_accuracy": sum(r["base_correct"] for r in rows) / n,
            "accuracy": sum(r["patch_no_effect"] for r in rows) / n,
            "intervention_accuracy": sum(r["patch_transferred"] for r in rows) / n}
