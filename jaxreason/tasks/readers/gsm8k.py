"""GSM8K problems from a local JSON-lines file or ``save_to_disk`` folder.

Each line is ``{"question": str, "answer": str}`` (other keys are ignored); a JSON list of
such objects (e.g. a study's ``final.json`` with added prediction fields) reads the same way. The answer is the
worked solution followed by a line ``#### N`` holding the final number. In the official test
split all 1,319 final answers are integers once thousands separators are removed, and studies
compare them with integer equality, so ``N`` is parsed to an ``int``: commas are dropped
(``#### 1,234`` is 1234), a minus sign is kept, and a decimal with a zero fraction (``4.0``)
counts as integral. A non-integral ``N`` is a row error unless ``allow_fractional=True``, in
which case it is kept as a ``float``. Blank lines are skipped (they still count for line
numbers).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from jaxreason.tasks.readers.common import (ReaderError, RowContext, context_for, data_path,
                                            source_rows, json_records, short)

_NUMBER_RE = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)$")
MARKER = "####"


@dataclasses.dataclass(frozen=True)
class GSM8KProblem:
    question: str
    answer: str                 # the whole answer text, as in the file
    rationale: str              # the text before the ``####`` line, trailing whitespace removed
    final_answer: int | float   # ``N`` (an int unless allow_fractional let a fraction through)
    line: int                   # 1-based line of the file (row of a datasets folder)


def parse_final_answer(text: str) -> int | float | None:
    """``"1,234"`` -> 1234, ``"-3"`` -> -3, ``"4.0"`` -> 4, ``"2.5"`` -> 2.5; ``None`` if not a number."""
    cleaned = text.strip().replace(",", "")
    if not _NUMBER_RE.match(cleaned):
        return None
    if "." not in cleaned:
        return int(cleaned)
    value = float(cleaned)
    return int(value) if value.is_integer() else value


def _problem(ctx: RowContext, row: object, line: int, allow_fractional: bool) -> GSM8KProblem:
    if not isinstance(row, dict):
        raise ctx.error(line, None, f"expected a JSON object with 'question' and 'answer', got "
                                    f"{type(row).__name__}")
    question = ctx.text(row, line, "question")
    answer = ctx.text(row, line, "answer")
    if MARKER not in answer:
        raise ctx.error(line, "answer", f"expected the solution to end with '{MARKER} N' (the final "
                                        f"number), found no '{MARKER}' in {short(answer)}")
    rationale, final_text = answer.rsplit(MARKER, 1)
    value = parse_final_answer(final_text)
    if value is None:
        raise ctx.error(line, "answer", f"expected a number after '{MARKER}' (commas allowed, "
                                        f"e.g. '{MARKER} 1,234'), got {short(final_text.strip())}")
    if isinstance(value, float) and not allow_fractional:
        raise ctx.error(line, "answer", f"expected an integer after '{MARKER}', got "
                                        f"{final_text.strip()!r} (pass allow_fractional=True to keep it)")
    return GSM8KProblem(question, answer, rationale.rstrip(), value, line)


def read_gsm8k(path: str | Path, *, split: str | None = None,
               allow_fractional: bool = False) -> list[GSM8KProblem]:
    """All problems of a GSM8K JSON-lines file (e.g. ``test.jsonl``) or ``save_to_disk`` folder.

    ``split`` picks a split of a saved ``DatasetDict`` (e.g. ``"test"``).
    """
    p = data_path(path, "GSM8K data")
    ctx = context_for(p)
    rows = source_rows(p, split, "GSM8K JSON-lines", lambda f: json_records(f, ctx))
    problems = [_problem(ctx, row, line, allow_fractional) for line, row in rows]
    if not problems:
        raise ReaderError(f"{p} holds no GSM8K problems")
    return problems
