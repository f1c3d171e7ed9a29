"""Classifying a wrong answer by where its continuation first leaves the gold chain, and the
evaluation command line that prints the counts."""

import dataclasses
import json

import pytest

from jaxreason.tasks.word_problems import make_splits, solution_block
from jaxreason.tasks.word_problems_eval import cli, error_counts, first_error


@pytest.fixture(scope="module")
def problem():
    """A 2-step problem whose second step carries the first result as its left operand and
    takes its right operand from the question."""
    for p in make_splits()["test"]:
        if p.n_steps == 2 and p.steps[1].left_ref == 0 and p.steps[1].right_ref is None:
            return p
    raise AssertionError("no such problem in the test split")


def continuation(problem, lines=None, answer=None):
    lines = [s.text for s in problem.steps] if lines is None else lines
    return solution_block(lines, str(problem.answer if answer is None else answer))


def with_step(problem, i, **shown):
    """The gold lines with step ``i`` showing other numbers (or another operator)."""
    step = problem.steps[i]
    if "op" in shown:
        step = dataclasses.replace(step, op=shown.pop("op"))
    values = {"left": step.left, "right": step.right, "result": step.result, **shown}
    lines = [s.text for s in problem.steps]
    lines[i] = step.shown(str(values["left"]), str(values["right"]), str(values["result"]))
    return lines


def test_the_gold_chain_is_right(problem):
    assert first_error(problem, continuation(problem)) == "right"


def test_each_first_wrong_number_is_named(problem):
    s0, s1 = problem.steps
    wrong = problem.answer + 1
    cases = {
        "step 1: right operand from the question": with_step(problem, 0, right=s0.right + 1),
        "step 2: left operand from an earlier step": with_step(problem, 1, left=s1.left + 1),
        "step 2: right operand from the question": with_step(problem, 1, right=s1.right + 1),
        f"step 2: result of {s1.op}": with_step(problem, 1, result=wrong),
        "step 2: operator": with_step(problem, 1, op="+" if s1.op != "+" else "-"),
        "step 2: missing": [s0.text],
    }
    for expected, lines in cases.items():
        assert first_error(problem, continuation(problem, lines, wrong)) == expected, lines
    # the first departure wins: a wrong first step hides what follows
    lines = with_step(problem, 0, result=s0.result + 1)
    lines[1] = with_step(problem, 1, right=s1.right + 1)[1]
    assert first_error(problem, continuation(problem, lines, wrong)) == \
        f"step 1: result of {s0.op}"


def test_right_steps_with_a_wrong_or_missing_answer_blame_the_answer_line(problem):
    assert first_error(problem, continuation(problem, answer=problem.answer + 1)) == \
        "answer line"
    text = "".join(s.text + "\n" for s in problem.steps)  # no "The answer is" line
    assert first_error(problem, text) == "answer line"


def test_no_equation_at_all_is_a_missing_first_step(problem):
    assert first_error(problem, "I do not know.") == "step 1: missing"


def test_counts_leave_out_the_right_answers(problem):
    texts = [continuation(problem), continuation(problem, answer=problem.answer + 1),
             continuation(problem, answer=problem.answer + 2), "nothing"]
    assert error_counts([problem] * 4, texts) == {"answer line": 2, "step 1: missing": 1}


def test_the_command_line_prints_the_table_and_the_errors(tiny_world_model, capsys, tmp_path):
    out = tmp_path / "eval.json"
    assert cli(["--model", str(tiny_world_model), "--per_steps", "2", "--steps", "1,3",
                "--prompt_types", "cot_prompt", "--max_new_tokens", "6", "--batch_size", "4",
                "--errors", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| cot_prompt |" in printed and "first wrong number of the" in printed
    saved = json.loads(out.read_text())["cot_prompt"]
    assert saved["count"] == {"1": 2, "3": 2}
    assert sum(saved["first_errors"].values()) == round(4 * (1 - saved["accuracy"]))


@pytest.mark.parametrize("steps", ["5", "2,x", ","])
def test_bad_step_counts_are_refused_with_the_allowed_ones(steps, capsys):
    with pytest.raises(SystemExit):
        cli(["--model", "unused", "--steps", steps])
    assert f"--steps {steps!r}: allowed step counts [1, 2, 3, 4]" in capsys.readouterr().err
