"""Step parsing, step counts and error attribution of the planning-token analyses."""

from __future__ import annotations

from jaxreason.studies.planning_tokens.analysis import (error_attribution, parse_steps,
                                                        step_counts, step_matches)
from jaxreason.studies.planning_tokens.evaluation import step_type_counts
from jaxreason.tasks.planning import PlanningExample, TokenGroups

G = TokenGroups(n_prefix=2, n_special=2)
GOLD = PlanningExample("q", "36", ("memory", "reason"),
                       ("A year has 12 months, so 3 years is 3 * 12 = 36 months.",
                        "So Ben bakes 1 * 36 = 36 eggs."))
RIGHT = ("<memory_0><memory_1> year has 12 months, so 3 years is 3 * 12 = 36 months.\n"
         "<prefix_0><prefix_1><reason_0><reason_1> So Ben bakes 1 * 36 = 36 eggs.\n"
         "<prefix_0><prefix_1><answer_0><answer_1> The answer is: 36\n")
BAD_MEMORY = RIGHT.replace("3 * 12 = 36 months", "3 * 14 = 42 months")
BAD_TYPE_AND_REASON = RIGHT.replace("<reason_0><reason_1> So Ben bakes 1 * 36 = 36",
                                    "<memory_0><memory_1> So Ben bakes 1 * 36 = 37")


def test_parse_steps_and_counts():
    steps = parse_steps(RIGHT, G)
    assert [t for t, _ in steps] == ["memory", "reason", "answer"]
    assert steps[1][1] == "So Ben bakes 1 * 36 = 36 eggs."
    assert step_type_counts(RIGHT) == {"memory": 1, "reason": 1, "assignment": 0, "answer": 1}
    rows = [{"step_types": step_type_counts(t)} for t in (RIGHT, BAD_TYPE_AND_REASON)]
    assert step_counts(rows) == {"memory_per_generation": 1.5, "reason_per_generation": 0.5, "memory_to_reason": 3.0}
    lines = parse_steps(" So x 1 + 1 = 2.\n The answer is: 2\n", None)
    assert lines == [(None, "So x 1 + 1 = 2."), ("answer", "The answer is: 2")]


def test_step_matches_by_equation_then_text():
    assert step_matches("year has 12 months, so 3 * 12 = 36", "A year: 3 * 12 = 36 months.")
    assert not step_matches("so 3 * 14 = 42", "so 3 * 12 = 36")
    assert step_matches("Water  is wet.", "Water is wet.") and not step_matches("a", "b")


def test_error_attribution_charges_the_first_wrong_step():
    results = [{"text": RIGHT, "correct": True}, {"text": BAD_MEMORY, "correct": False},
               {"text": BAD_TYPE_AND_REASON, "correct": False},
               {"text": RIGHT.replace(": 36\n", ": 35\n"), "correct": False}]
    out = error_attribution([GOLD] * 4, results, G)
    assert out["wrong_answers"] == 3
    assert out["first_wrong_step_type"] == {"memory": 1, "reason": 1, "assignment": 0,
                                            "answer": 1}
    assert out["step_error_rate"]["memory"] == 1 / 4  # 4 memory steps reached, 1 wrong
    assert out["step_error_rate"]["reason"] == 1 / 3  # reached only after a right memory step
    assert out["type_token_accuracy"] == 6 / 7  # one reason step written as memory
