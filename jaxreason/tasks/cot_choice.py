"""The CoT-correctness choice data: rows, the seeded split, statistics that need no model, the
masked variant, and rows drawn from the embedded word-problem world.

The data is the CSV of the CoT correctness-detection experiment (MMacDougall06,
cot-correctness-detection-test): per math word problem a correct and an incorrect chain of
thought (the *arguments*), and a third model's argument choosing between them when shown as
``candidate_1`` / ``candidate_2`` (``Choice Answers Swapped`` True puts the incorrect one in
slot 1). :func:`jaxreason.tasks.readers.read_cot_choice_csv` reads it; this module adds what a
study does with the rows:

* **The split** equals scikit-learn's ``train_test_split(test_size=0.1, random_state=1)``:
  ``numpy.random.default_rng(1).permutation(n)``, whose first ``ceil(0.1 n)`` indices, in that
  order, are the test set and the rest, in that order, the training order (never reshuffled).
  :func:`validation_split` carves a validation set from the front of that training order.
* **Statistics**: how often the generator's pick is correct, the swap fraction, and the test
  metrics of two reference policies (always answer slot 2; always follow the choice
  argument) under the original's aggregation (the unweighted mean of per-batch ratios over
  test batches of 64, a batch without rows of a kind left out of that kind's mean) and as
  true rates over the whole test set.
* **The masked variant**: the chosen candidate's identifier in the choice argument replaced
  by an underscore (:func:`mask_choice_argument` states the rule).
* **World rows**: the same columns from the embedded world's correct chains, incorrect chains
  (wrong result at the last step) and seeded choice arguments, and the positive control's
  items, whose incorrect chain carries a marker that only a reader of its own text can see.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from jaxreason import atomic
from jaxreason.tasks import word_problem_variants as wv
from jaxreason.tasks.readers.cot_choice_csv import COLUMNS, CotChoiceRow
from jaxreason.tasks.word_problems import WordProblem, answer_line, make_splits

TEST_BATCH = 64  # the original's test batch size, which its mean of batch ratios depends on


# ----------------------------------------------------------------------------- split

def split_indices(n: int, test_fraction: float = 0.1, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(test rows, training rows) in the order the original iterates them."""
    if n < 2:
        raise ValueError(f"the split needs at least 2 rows, got {n}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction={test_fraction} must lie in (0, 1)")
    perm = np.random.default_rng(seed).permutation(n)
    n_test = math.ceil(test_fraction * n)
    if n_test >= n:
        raise ValueError(f"test_fraction={test_fraction} leaves no training rows of {n}")
    return perm[:n_test], perm[n_test:]


def validation_split(train: np.ndarray, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(validation rows, remaining training rows): the first ``ceil(fraction * n)`` rows of the
    training order are held out for model selection (none when ``fraction`` is 0)."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"val_fraction={fraction} must lie in [0, 1)")
    n_val = math.ceil(fraction * len(train))
    if n_val >= len(train):
        raise ValueError(f"val_fraction={fraction} leaves no training rows of {len(train)}")
    return train[:n_val], train[n_val:]


# ----------------------------------------------------------------------------- metrics

def choice_metrics(chosen_correct, orig_correct, diff=None, nll=None, *, weights=None) -> dict:
    """The original's metrics of one batch as true rates (None where a denominator is 0).

    ``chosen_correct``, ``orig_correct``: (N,) bools; ``diff``: (N,) probability margin of the
    correct slot over the other; ``nll``: (N,) loss of the correct slot's token."""
    cc = np.asarray(chosen_correct, bool)
    oc = np.asarray(orig_correct, bool)
    w = np.ones(len(cc)) if weights is None else np.asarray(weights, float)
    keep = w > 0
    cc, oc, w = cc[keep], oc[keep], w[keep]

    def rate(values, where):
        return float(np.mean(values[where])) if where.any() else None

    out = {"n": int(len(cc)), "f_c": rate(cc, np.ones_like(cc)), "f_c_oc": rate(cc, oc),
           "f_c_oi": rate(cc, ~oc)}
    if diff is not None:
        d = np.asarray(diff, float)[keep]
        out["o_c"] = rate(d, cc)
        out["o_i"] = rate(np.abs(d), ~cc)
    if nll is not None:
        out["l_c"] = float(np.mean(np.asarray(nll, float)[keep])) if len(cc) else None
    return out


def clamped_metrics(chosen_correct, orig_correct, diff=None, nll=None) -> dict:
    """The original's *training* lines: each ratio divided by ``mean(mask).clamp_min(1)``, which
    is always 1, so the conditionals are joint rates (f_c_oc + f_c_oi == f_c) and o_c, o_i
    unconditional means."""
    cc = np.asarray(chosen_correct, float)
    oc = np.asarray(orig_correct, float)
    out = {"n": int(len(cc)), "f_c": float(cc.mean()), "f_c_oc": float((cc * oc).mean()),
           "f_c_oi": float((cc * (1 - oc)).mean())}
    if diff is not None:
        d = np.asarray(diff, float)
        out["o_c"] = float((d * cc).mean())
        out["o_i"] = float((np.abs(d) * (1 - cc)).mean())
    if nll is not None:
        out["l_c"] = float(np.mean(nll))
    return out


def batch_mean_metrics(chosen_correct, orig_correct, diff=None, nll=None,
                       batch: int = TEST_BATCH) -> dict:
    """The original's test lines: per consecutive batch of ``batch`` rows the true rates, then
    for each metric the unweighted mean over the batches where it is defined."""
    n = len(chosen_correct)
    per = [choice_metrics(chosen_correct[i:i + batch], orig_correct[i:i + batch],
                          None if diff is None else diff[i:i + batch],
                          None if nll is None else nll[i:i + batch])
           for i in range(0, n, batch)]
    out = {"n": n, "batches": len(per)}
    for key in per[0] if per else ():
        if key == "n":
            continue
        vals = [p[key] for p in per if p[key] is not None]
        out[key] = float(np.mean(vals)) if vals else None
    return out


# ----------------------------------------------------------------------------- statistics

def correct_slots(rows: Sequence[CotChoiceRow]) -> np.ndarray:
    return np.array([r.correct_slot for r in rows])


def choice_was_correct(rows: Sequence[CotChoiceRow]) -> np.ndarray:
    return np.array([r.choice_was_correct for r in rows], bool)


def reference_policies(rows: Sequence[CotChoiceRow], batch: int = TEST_BATCH) -> dict:
    """Metrics of "always answer 2" and "always follow the choice argument" on ``rows``, under
    the original's batch-mean aggregation and as true rates. A policy that puts probability 1
    on its slot has margin +1 when right and -1 when wrong (its NLL is infinite: not given)."""
    orig = choice_was_correct(rows)
    out = {}
    for name, chosen in (("always_2", np.full(len(rows), 2)),
                         ("follow_choice", np.array([1 if r.choice_answer == "candidate_1" else 2
                                                     for r in rows]))):
        cc = chosen == correct_slots(rows)
        diff = np.where(cc, 1.0, -1.0)
        out[name] = {"batch_mean": batch_mean_metrics(cc, orig, diff, batch=batch),
                     "true_rate": choice_metrics(cc, orig, diff)}
    return out


def dataset_statistics(rows: Sequence[CotChoiceRow], test: np.ndarray, train: np.ndarray,
                       val: np.ndarray | None = None, batch: int = TEST_BATCH) -> dict:
    """What the data says before any model: sizes, the generator's accuracy overall and on the
    test split, the swap fraction, and the reference policies on the test split."""
    test_rows = [rows[i] for i in test]
    swapped = np.array([r.swapped for r in rows])
    return {"rows": len(rows), "test_rows": len(test), "train_rows": len(train),
            "val_rows": 0 if val is None else len(val),
            "choice_correct": float(choice_was_correct(rows).mean()),
            "choice_correct_test": float(choice_was_correct(test_rows).mean()),
            "choice_candidate_1": float(np.mean([r.choice_answer == "candidate_1" for r in rows])),
            "swapped": float(swapped.mean()), "swapped_test": float(swapped[test].mean()),
            "reference_policies_test": reference_policies(test_rows, batch)}


# ----------------------------------------------------------------------------- masked variant

_CANDIDATE_RE = re.compile(r"\b(candidate[ _]?)([12])\b", re.IGNORECASE)


def mask_choice_argument(argument: str, choice_answer: str) -> str:
    """The masked variant's choice argument: every mention of the chosen candidate, written
    ``candidate_N``, ``candidate N`` or ``candidateN`` in any letter case, keeps its word and
    has its number N replaced by ``_`` (``Candidate 1 is right`` -> ``Candidate _ is right``);
    mentions of the other candidate are left as they are. (The original's masking code is not
    published; this is the rule implemented here.)"""
    if choice_answer not in ("candidate_1", "candidate_2"):
        raise ValueError(f"choice_answer={choice_answer!r}; expected candidate_1 or candidate_2")
    chosen = choice_answer[-1]
    return _CANDIDATE_RE.sub(lambda m: m.group(1) + "_" if m.group(2) == chosen else m.group(0),
                             argument)


def masked_rows(rows: Sequence[CotChoiceRow]) -> list[CotChoiceRow]:
    return [dataclasses.replace(r, choice_argument=mask_choice_argument(r.choice_argument,
                                                                        r.choice_answer))
            for r in rows]


# ----------------------------------------------------------------------------- CSV writing

def row_fields(row: CotChoiceRow) -> list[str]:
    """A row in the CSV's column order, newlines written as the two characters ``\\n``."""
    esc = lambda s: s.replace("\n", "\\n")  # noqa: E731
    return [esc(row.question), repr(float(row.correct_answer)), esc(row.correct_argument),
            repr(float(row.incorrect_answer)), esc(row.incorrect_argument), row.choice_answer,
            esc(row.choice_argument), str(bool(row.swapped))]


def write_cot_choice_csv(rows: Sequence[CotChoiceRow], path) -> Path:
    """The rows as the CoT-correctness CSV (header, the eight columns), written atomically."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(COLUMNS)
    writer.writerows(row_fields(r) for r in rows)
    return atomic.write_text(path, buf.getvalue())


# ----------------------------------------------------------------------------- the world

def chain_text(chain: WordProblem) -> str:
    """A chain of thought as the world writes it: one step a line, then the answer line."""
    return "\n".join([s.text for s in chain.steps] + [answer_line(str(chain.answer))])


def world_rows(n: int, seed: int = 0, p_right: float = 0.6, split: str = "test",
               error_step: int | None = None, steps: Sequence[int] = (1, 2, 3, 4)
               ) -> list[CotChoiceRow]:
    """``n`` CSV rows from the world's ``split`` problems of ``steps`` steps (shorter chains
    make cheaper runs): the gold chain, the chain with a wrong
    result at ``error_step`` (the last by default, as in the original's data), a seeded slot
    order and a choice argument that favours the correct chain with probability ``p_right``
    (the original's generator was right in 59% of rows)."""
    splits = make_splits()
    if split not in splits:
        raise ValueError(f"world split {split!r}; known: {list(splits)}")
    problems = [p for p in splits[split] if p.n_steps in steps]
    if not 1 <= n <= len(problems):
        raise ValueError(f"n={n} world rows: the {split!r} split holds {len(problems)} problems "
                         f"of {list(steps)} steps")
    out = []
    for i, ex in enumerate(wv.choice_examples(problems[:n], seed, p_right, error_step)):
        out.append(CotChoiceRow(
            question=ex.question, correct_answer=float(ex.correct.answer),
            correct_argument=chain_text(ex.correct), incorrect_answer=float(ex.incorrect.answer),
            incorrect_argument=chain_text(ex.incorrect), choice_answer=f"candidate_{ex.choice}",
            choice_argument=ex.argument, swapped=ex.swapped, line=i + 2))
    return out


#: the positive control's marker: the incorrect chain's answer line starts with this word
#: instead of ``The`` (one world token for another, so the chain keeps its length)
MARKER_FROM, MARKER_TO = "The answer is", "So answer is"


def marked_argument(argument: str) -> str:
    """The incorrect chain with the positive control's marker in its answer line."""
    head, sep, tail = argument.rpartition(MARKER_FROM)
    if not sep:
        raise ValueError(f"no {MARKER_FROM!r} line to mark in {argument[:80]!r}")
    return head + MARKER_TO + tail


@dataclasses.dataclass(frozen=True)
class ChoiceItem:
    """What one transplant example shows: the text each arguer run reads, the text the chooser
    shows in each slot, the choice argument and the slot order.

    For CSV rows the chooser shows the arguments the arguer reads. In the positive control
    both slots show the correct chain while the arguer of the incorrect slot reads the
    incorrect chain with a marker, so the marker (and the error) reach the chooser only
    through the transplanted keys and values."""

    question: str
    arguer_correct: str
    arguer_incorrect: str
    shown_correct: str
    shown_incorrect: str
    choice_argument: str
    swapped: bool
    choice_was_correct: bool

    @property
    def correct_slot(self) -> int:
        return 2 if self.swapped else 1

    def slots(self, arguer: bool) -> tuple[str, str]:
        """(slot 1, slot 2) texts of the arguer runs (``arguer``) or of the chooser."""
        c, i = ((self.arguer_correct, self.arguer_incorrect) if arguer
                else (self.shown_correct, self.shown_incorrect))
        return (i, c) if self.swapped else (c, i)


def item_of(row: CotChoiceRow) -> ChoiceItem:
    return ChoiceItem(row.question, row.correct_argument, row.incorrect_argument,
                      row.correct_argument, row.incorrect_argument, row.choice_argument,
                      row.swapped, row.choice_was_correct)


POSITIVE_CONTROL_ARGUMENT = "The candidates differ."


def positive_control_item(row: CotChoiceRow) -> ChoiceItem:
    """The positive control of a row: both chooser slots show the correct chain, the incorrect
    slot's arguer reads the marked incorrect chain, and the choice argument says nothing."""
    return ChoiceItem(row.question, row.correct_argument, marked_argument(row.incorrect_argument),
                      row.correct_argument, row.correct_argument, POSITIVE_CONTROL_ARGUMENT,
                      row.swapped, True)
