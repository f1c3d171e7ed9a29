"""Prompt variants, incorrect chains, choice arguments and tagged steps of the world."""

import json
import random
import re

import pytest

from jaxreason.tasks import word_problem_lexicon as lex
from jaxreason.tasks import word_problem_variants as wv
from jaxreason.tasks.word_problems import check_problem, make_splits

EQ = re.compile(r"(\w+) ([-+*/]) (\w+) = (\w+)")
SHOTS = 8


def _value(a, op, b):
    a, b = int(a), int(b)
    if op == "/":
        return a // b if b and a % b == 0 else None
    return {"+": a + b, "-": a - b, "*": a * b}[op]


def blocks(prompt):
    """Demonstrations as (question, step lines, answer)."""
    out = []
    for block in prompt.split("\n\n")[:-1]:
        lines = block.split("\n")
        assert lines[0].startswith("Question: ")
        m = re.fullmatch(r"The answer is (\w+)\.", lines[-1])
        assert m, lines[-1]
        out.append((lines[0], lines[1:-1], m.group(1)))
    return out


@pytest.fixture(scope="module")
def prompts():
    return {t: wv.few_shot_prompt(t, SHOTS, seed=7) for t in wv.PROMPT_TYPES}


def test_every_type_has_n_shots_well_formed(prompts):
    for t, prompt in prompts.items():
        assert prompt.count("The answer is ") == SHOTS and prompt.endswith("\n\n"), t
        for _, lines, _ in blocks(prompt):
            has_think = lines[0] == "Let's think step by step"
            assert has_think == (t != "equation_only"), t


def test_cot_prompt_is_the_gold_text(prompts):
    gold = "".join(p.text for p in wv.demo_problems("cot_prompt", SHOTS))
    assert prompts["cot_prompt"] == gold


def test_text_only_and_equation_only(prompts):
    gold = wv.demo_problems("cot_prompt", SHOTS)
    for (q, lines, ans), p in zip(blocks(prompts["text_only"]), gold):
        assert q == "Question: " + p.question and ans == str(p.answer)
        steps = lines[1:]
        assert len(steps) == p.n_steps
        for line, s in zip(steps, p.steps):
            assert "=" not in line and not re.search(r"\d [-+*/] \d", line)
            assert str(s.result) in line
    for (q, lines, ans), p in zip(blocks(prompts["equation_only"]), gold):
        assert lines == [f"{s.left} {s.op} {s.right} = {s.result}." for s in p.steps]
        assert all(not re.search(r"[A-Za-z]", line) for line in lines)


def test_add_only_and_mult_only(prompts):
    for t, op in (("add_only", "+"), ("mult_only", "*")):
        for _, lines, ans in blocks(prompts[t]):
            eqs = [EQ.search(line).groups() for line in lines[1:]]
            assert eqs and all(e[1] == op for e in eqs)
            assert all(_value(a, o, b) == int(r) for a, o, b, r in eqs)
            assert ans == eqs[-1][3]
    cot_qs = {q for q, _, _ in blocks(prompts["cot_prompt"])}
    assert not cot_qs & {q for q, _, _ in blocks(prompts["add_only"])}


def test_incorrect_label_results_are_all_wrong(prompts):
    gold = wv.demo_problems("cot_prompt", SHOTS)
    for (q, lines, ans), p in zip(blocks(prompts["incorrect_label"]), gold):
        shown = [EQ.search(line).groups() for line in lines[1:]]
        for (a, op, b, r), s in zip(shown, p.steps):
            assert _value(a, op, b) != int(r), (a, op, b, r)
            assert int(r) != s.result and 0 <= int(r) <= lex.MAX_VALUE
        assert ans == shown[-1][3] and int(ans) != p.answer
        # the text around each equation is the gold text
        gold_lines = [EQ.sub("", s.text) for s in p.steps]
        assert [EQ.sub("", line) for line in lines[1:]] == gold_lines


def test_incorrect_ood_label_uses_names_and_carries_them(prompts):
    gold = wv.demo_problems("cot_prompt", SHOTS)
    for (q, lines, ans), p in zip(blocks(prompts["incorrect_ood_label"]), gold):
        shown = [EQ.search(line).groups() for line in lines[1:]]
        names = [r for _, _, _, r in shown]
        assert all(n in lex.OOD_NAMES for n in names) and len(set(names)) == len(names)
        assert ans == names[-1]
        for (a, _, b, _), s in zip(shown, p.steps):
            for got, value, ref in ((a, s.left, s.left_ref), (b, s.right, s.right_ref)):
                assert got == (names[ref] if ref is not None else str(value))


def test_test_prompt_matches_demo_layout():
    p = make_splits()["test"][0]
    assert wv.test_prompt(p.question, "cot_prompt") == p.prompt
    assert wv.test_prompt(p.question, "equation_only") == f"Question: {p.question}\n"
    with pytest.raises(ValueError, match="unknown prompt type"):
        wv.test_prompt(p.question, "cot")


def test_incorrect_chain_differs_from_the_chosen_step_on():
    rng = random.Random(0)
    for p in make_splits()["test"][:200]:
        for k in [None, *range(p.n_steps)]:
            bad = wv.incorrect_chain(p, rng, k)
            at = p.n_steps - 1 if k is None else k
            assert bad.question == p.question and bad.n_steps == p.n_steps
            assert bad.steps[:at] == p.steps[:at]
            assert bad.steps[at].result != p.steps[at].result
            assert bad.steps[at].equation.split(" =")[0] == p.steps[at].equation.split(" =")[0]
            assert bad.answer != p.answer and bad.answer == bad.steps[-1].result
            with pytest.raises(ValueError):
                check_problem(bad)
            for s in bad.steps[at + 1:]:  # later steps are right, given the wrong value
                assert _value(s.left, s.op, s.right) == s.result
    with pytest.raises(ValueError, match="step=4"):
        wv.incorrect_chain(make_splits()["test"][0], rng, 4)


@pytest.mark.parametrize("p_right", [0.0, 0.3, 0.8, 1.0])
def test_choice_argument_favours_the_right_chain_with_p(p_right):
    problems = make_splits()["train"][:2000]
    ex = wv.choice_examples(problems, seed=11, p_right=p_right)
    rate = sum(e.choice_is_correct for e in ex) / len(ex)
    swapped = sum(e.swapped for e in ex) / len(ex)
    # fixed seeds: deterministic; 0.04 is > 3.5 binomial standard deviations at n=2000
    assert abs(rate - p_right) < 0.04 and abs(swapped - 0.5) < 0.04
    for e in ex[:200]:
        chosen = e.correct if e.choice_is_correct else e.incorrect
        assert e.argument.endswith(f"The right one is {chosen.steps[e.error_step].equation}, "
                                   f"so candidate {e.choice} is right.")
        right_slot = e.candidate_2 if e.swapped else e.candidate_1
        assert right_slot.endswith(f"Final answer: {e.correct.answer}")
        assert e.correct_slot == (2 if e.swapped else 1)


def test_choice_is_seeded():
    problems = make_splits()["test"][:50]
    a = wv.choice_examples(problems, 3, 0.6)
    assert a == wv.choice_examples(problems, 3, 0.6) != wv.choice_examples(problems, 4, 0.6)
    with pytest.raises(ValueError, match="p_right"):
        wv.choice_examples(problems, 3, 1.5)


def test_planning_records(tmp_path):
    path = wv.write_planning_json(tmp_path / "world_train.json", ("train", "test"))
    records = json.loads(path.read_text())
    splits = make_splits()
    assert len(records) == len(splits["train"]) + len(splits["test"])
    for r, p in zip(records, splits["train"]):
        assert set(r) == {"question", "answer", "cot_steps", "split"} and r["split"] == "train"
        assert r["question"] == p.question and r["answer"] == str(p.answer)
        tags = [re.match(r"^\[(rag|reason)\]: ", s).group(1) for s in r["cot_steps"]]
        assert tags == list(p.tags)
        assert [s.split("]: ", 1)[1] for s in r["cot_steps"]] == [s.text for s in p.steps]
    assert {r["split"] for r in records[len(splits["train"]):]} == {"test"}
