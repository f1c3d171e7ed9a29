"""The CoT-correctness CSV: a question, a correct and an incorrect chain of thought, and a pick.

The file is the data of the CoT correctness-detection experiment (MMacDougall06,
cot-correctness-detection-test): for each math word problem, ``text-davinci-003`` wrote a
correct argument, an incorrect one, and an argument choosing between the two shown as
``candidate_1`` / ``candidate_2``. Its columns (extra columns are ignored):

| column | type |
|---|---|
| ``Question`` | text |
| ``Correct Answer`` | number written as a float (``"47.0"``) |
| ``Correct Argument`` | text |
| ``Incorrect Answer`` | number written as a float |
| ``Incorrect Argument`` | text |
| ``Choice Answer`` | ``candidate_1`` or ``candidate_2``: the slot the model picked |
| ``Choice Argument`` | text |
| ``Choice Answers Swapped`` | ``True``/``False``: True puts the *incorrect* argument in slot 1 |

The generator wrote newlines inside strings as the two characters ``\\n``. They are kept as
they are by default (that is the text the original training read); ``unescape_newlines=True``
turns them into real newlines.
"""

from __future__ import annotations

import csv
import dataclasses
import math
from pathlib import Path
from typing import Iterator

from jaxreason.tasks.readers.common import (ReaderError, RowContext, context_for, data_path,
                                            source_rows, short)

COLUMNS = ("Question", "Correct Answer", "Correct Argument", "Incorrect Answer",
           "Incorrect Argument", "Choice Answer", "Choice Argument", "Choice Answers Swapped")
CHOICES = ("candidate_1", "candidate_2")
_TRUE, _FALSE = ("true", "1"), ("false", "0")


@dataclasses.dataclass(frozen=True)
class CotChoiceRow:
    question: str
    correct_answer: float
    correct_argument: str
    incorrect_answer: float
    incorrect_argument: str
    choice_answer: str          # "candidate_1" or "candidate_2"
    choice_argument: str
    swapped: bool               # True: slot 1 holds the incorrect argument
    line: int                   # 1-based first line of the row (header = line 1); datasets row

    @property
    def slot_arguments(self) -> tuple[str, str]:
        """(candidate_1, candidate_2) as the chooser saw them."""
        if self.swapped:
            return self.incorrect_argument, self.correct_argument
        return self.correct_argument, self.incorrect_argument

    @property
    def correct_slot(self) -> int:
        """1 or 2: the slot holding the correct argument."""
        return 2 if self.swapped else 1

    @property
    def choice_was_correct(self) -> bool:
        """Whether the generator's own pick named the correct argument."""
        return (self.choice_answer == "candidate_1") != self.swapped


def _number(ctx: RowContext, row: dict, line: int, field: str) -> float:
    value = row[field]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    else:
        try:
            number = float(str(value).strip())
        except ValueError:
            raise ctx.error(line, field, f"expected a number such as '47.0', got {short(value)}") from None
    if math.isnan(number):
        raise ctx.error(line, field, f"expected a number such as '47.0', got {short(value)}")
    return number


def _flag(ctx: RowContext, row: dict, line: int, field: str) -> bool:
    value = row[field]
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise ctx.error(line, field, f"expected True or False, got {short(value)}")


def _parse_row(ctx: RowContext, row: dict, line: int, unescape: bool) -> CotChoiceRow:
    def text(field: str) -> str:
        value = ctx.text(row, line, field)
        return value.replace("\\n", "\n") if unescape else value

    choice = row["Choice Answer"]
    if choice not in CHOICES:
        raise ctx.error(line, "Choice Answer", f"expected one of {list(CHOICES)}, got {short(choice)}")
    return CotChoiceRow(
        question=text("Question"),
        correct_answer=_number(ctx, row, line, "Correct Answer"),
        correct_argument=text("Correct Argument"),
        incorrect_answer=_number(ctx, row, line, "Incorrect Answer"),
        incorrect_argument=text("Incorrect Argument"),
        choice_answer=choice,
        choice_argument=text("Choice Argument"),
        swapped=_flag(ctx, row, line, "Choice Answers Swapped"),
        line=line)


def _check_columns(path: Path, found: list[str]) -> None:
    missing = [c for c in COLUMNS if c not in found]
    if missing:
        raise ReaderError(f"{path} lacks the columns {missing}; found {found}. Expected: {list(COLUMNS)}")


def _csv_rows(path: Path, ctx: RowContext) -> Iterator[tuple[int, dict]]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        try:
            header = next(reader)
        except StopIteration:
            raise ReaderError(f"{path} is empty; expected a header row with {list(COLUMNS)}") from None
        _check_columns(path, header)
        while True:
            start = reader.line_num + 1
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                raise ctx.error(start, None, f"not valid CSV ({e})") from None
            if not fields:
                continue
            if len(fields) != len(header):
                raise ctx.error(start, None, f"expected {len(header)} fields like the header, "
                                             f"found {len(fields)}")
            yield start, dict(zip(header, fields))


def read_cot_choice_csv(path: str | Path, *, split: str | None = None,
                        unescape_newlines: bool = False) -> list[CotChoiceRow]:
    """All rows of the CoT-correctness CSV (or of a ``save_to_disk`` folder with its columns),
    in file order. ``split`` picks a split of a saved ``DatasetDict``."""
    p = data_path(path, "CoT-correctness CSV")
    ctx = context_for(p)
    def checked(rows):  # a datasets folder: its first row shows the columns
        for line, row in rows:
            if line == 1 and p.is_dir():
                _check_columns(p, list(row))
            yield line, row

    source = checked(source_rows(p, split, "CSV", lambda f: _csv_rows(f, ctx)))
    out = [_parse_row(ctx, row, line, unescape_newlines) for line, row in source]
    if not out:
        raise ReaderError(f"{p} holds no rows")
    return out
