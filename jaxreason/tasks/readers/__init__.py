"""Readers for the data files users bring: GSM8K, the CoT-correctness CSV, planning-token steps.

Each reader takes a local file in its format's own layout, or a folder written by
``datasets``' ``save_to_disk``, and returns frozen records in file order. Nothing is ever
downloaded. A bad row raises :class:`RowError` naming the file, the 1-based line (row, for a
datasets folder), the field and what was expected; a path that cannot be read raises
:class:`ReaderError`.
"""

from jaxreason.tasks.readers.common import ReaderError, RowError
from jaxreason.tasks.readers.cot_choice_csv import COLUMNS as COT_CHOICE_COLUMNS
from jaxreason.tasks.readers.cot_choice_csv import CotChoiceRow, read_cot_choice_csv
from jaxreason.tasks.readers.gsm8k import GSM8KProblem, parse_final_answer, read_gsm8k
from jaxreason.tasks.readers.planning_json import (PlanningRecord, clean_steps,
                                                   faithful_step_types, read_planning_json)

__all__ = ["ReaderError", "RowError", "GSM8KProblem", "read_gsm8k", "parse_final_answer",
           "CotChoiceRow", "read_cot_choice_csv", "COT_CHOICE_COLUMNS", "PlanningRecord",
           "read_planning_json", "faithful_step_types", "clean_steps"]
