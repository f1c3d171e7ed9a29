"""Memory/reason step data for planning-token training (Jin et al., "Disentangling Memory and
Reasoning Ability in Large Language Models", 2024).

The file is a JSON list (or JSON lines) of records ``{"question": str, "answer": str,
"cot_steps": [str], "split": str}``. Each step starts with a tag: ``"[rag]: <text>"`` for a
step that recalls knowledge (a *memory* step) or ``"[reason]: <text>"`` for a reasoning step.
Records keep the raw step strings, so both readings below can be built from them:

* **faithful** (what the original ``MingyuJ666/Disentangling-Memory-and-Reasoning`` code does):
  the regex ``^\\[(.*?)\\]:`` runs in multiline mode over ``"Question: " + q + " \\n" +
  " \\n".join(steps) + " \\n"``; ``reason`` becomes ``reason``, ``rag`` becomes ``memory``, any
  other tag is dropped, and the surviving labels are matched to the steps *by position*. More
  labels than steps stops the original program (here: an error); steps left without a label
  get ``assignment``. A dropped tag therefore shifts every later label by one, and a line
  inside the question or a step that starts with ``[x]:`` adds a label. The step text has
  every ``[...]: `` removed (non-greedy, all occurrences).
* **fixed**: each step is labelled from its own leading tag (``reason``/``reasoning`` ->
  ``reason``, ``rag``/``memory`` -> ``memory``, anything else or no tag -> ``assignment``) and
  only that leading tag is removed from its text.

``clean=True`` applies the original data generator's cleaning (what made its ``*_clean``
files): drop steps with nothing after the first ``": "``, remap every tag other than ``reason``
/ ``rag`` to ``rag`` (so ``[reasoning]`` becomes ``[rag]``: a labelling bug kept for parity),
and drop records left with no steps.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Literal

from jaxreason.tasks.readers.common import (ReaderError, RowContext, RowError, context_for,
                                            data_path, source_rows, json_records, short)

_TAG_LINE_RE = re.compile(r"^\[(.*?)\]:", re.MULTILINE)
_ANY_TAG_RE = re.compile(r"\[.*?\]: ")
_LEADING_TAG_RE = re.compile(r"^\s*\[([^\]]*)\]:\s?")
_FAITHFUL_TYPES = {"reason": "reason", "rag": "memory"}
_FIXED_TYPES = {"reason": "reason", "reasoning": "reason", "rag": "memory", "memory": "memory"}
ASSIGNMENT = "assignment"
Mode = Literal["faithful", "fixed"]


def leading_tag(step: str) -> str | None:
    """The tag a step starts with, as written (``"[rag]: x"`` -> ``"rag"``), or None."""
    m = _LEADING_TAG_RE.match(step)
    return m.group(1).strip() if m else None


def faithful_step_types(question: str, steps: tuple[str, ...]) -> tuple[str, ...]:
    """Step types as the original code assigns them (see the module docstring).

    Raises ``ValueError`` when the text holds more usable tags than there are steps.
    """
    text = "Question: " + question + " \n" + " \n".join(steps) + " \n"
    labels = [_FAITHFUL_TYPES[t] for t in _TAG_LINE_RE.findall(text) if t in _FAITHFUL_TYPES]
    if len(labels) > len(steps):
        raise ValueError(f"{len(labels)} step tags for {len(steps)} steps (the original code "
                         "exits here)")
    return tuple(labels) + (ASSIGNMENT,) * (len(steps) - len(labels))


def faithful_step_text(step: str) -> str:
    return _ANY_TAG_RE.sub("", step)


def fixed_step_type(step: str) -> str:
    return _FIXED_TYPES.get((leading_tag(step) or "").lower(), ASSIGNMENT)


def fixed_step_text(step: str) -> str:
    return _LEADING_TAG_RE.sub("", step, count=1).strip()


def clean_steps(steps: tuple[str, ...]) -> tuple[str, ...]:
    """The original generator's cleaning of one record's steps (see the module docstring).
    Tags compare case-sensitively, as in the original; untagged steps are kept as they are."""
    out = []
    for step in steps:
        head, sep, rest = step.partition(": ")
        if not sep or not rest.strip():
            continue
        tag = leading_tag(step)
        if tag is not None and tag not in ("reason", "rag"):
            step = "[rag]: " + rest
        out.append(step)
    return tuple(out)


@dataclasses.dataclass(frozen=True)
class PlanningRecord:
    question: str
    answer: str
    cot_steps: tuple[str, ...]   # raw step strings, tags included
    split: str
    line: int                    # 1-based line where the record starts (datasets: row)
    source: str                  # the file or folder it came from

    def step_types(self, mode: Mode = "faithful") -> tuple[str, ...]:
        """``memory`` / ``reason`` / ``assignment`` per step."""
        if mode == "fixed":
            return tuple(fixed_step_type(s) for s in self.cot_steps)
        if mode != "faithful":
            raise ValueError(f"mode must be 'faithful' or 'fixed', got {mode!r}")
        try:
            return faithful_step_types(self.question, self.cot_steps)
        except ValueError as e:
            raise RowError(self.source, self.line, "cot_steps", str(e)) from None

    def step_texts(self, mode: Mode = "faithful") -> tuple[str, ...]:
        """Step texts without their tags."""
        if mode not in ("faithful", "fixed"):
            raise ValueError(f"mode must be 'faithful' or 'fixed', got {mode!r}")
        strip = faithful_step_text if mode == "faithful" else fixed_step_text
        return tuple(strip(s) for s in self.cot_steps)


def _record(ctx: RowContext, row: object, line: int, clean: bool) -> PlanningRecord | None:
    if not isinstance(row, dict):
        raise ctx.error(line, None, "expected an object with question, answer, cot_steps and "
                                    f"split, got {type(row).__name__}")
    question = ctx.text(row, line, "question")
    answer = ctx.text(row, line, "answer")
    split = ctx.text(row, line, "split")
    if "cot_steps" not in row:
        raise ctx.error(line, "cot_steps", "missing; expected a list of step strings such as "
                                           "'[rag]: ...' or '[reason]: ...'")
    steps = row["cot_steps"]
    if not isinstance(steps, (list, tuple)):
        raise ctx.error(line, "cot_steps", f"expected a list of strings, got {type(steps).__name__}")
    for i, step in enumerate(steps):
        if not isinstance(step, str):
            raise ctx.error(line, f"cot_steps[{i}]", f"expected a string such as '[reason]: ...', "
                                                     f"got {type(step).__name__} {short(step)}")
    steps = tuple(steps)
    if clean:
        steps = clean_steps(steps)
        if not steps:
            return None
    return PlanningRecord(question, answer, steps, split, line, str(ctx.path))


def read_planning_json(path: str | Path, split: str | None = None, *, clean: bool = False,
                       dataset_split: str | None = None) -> list[PlanningRecord]:
    """Records of a memory/reason step file (e.g. ``StrategyQA_train_clean.json``) or of a
    ``save_to_disk`` folder with the same fields, in file order.

    ``split`` keeps only records whose ``split`` field equals it (the original filters the
    same way). ``dataset_split`` picks a split of a saved ``DatasetDict``.
    """
    p = data_path(path, "planning-token step data")
    ctx = context_for(p)
    rows = source_rows(p, dataset_split, "JSON", lambda f: json_records(f, ctx),
                       split_name="dataset_split")
    records = [r for line, row in rows if (r := _record(ctx, row, line, clean)) is not None]
    if not records:
        raise ReaderError(f"{p} holds no records")
    if split is not None:
        records = [r for r in records if r.split == split]
        if not records:
            raise ReaderError(f"{p} holds no records with split == {split!r}")
    return records
