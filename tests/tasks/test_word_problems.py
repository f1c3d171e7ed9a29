"""The word-problem world: exact arithmetic, correct facts, disjoint splits, determinism."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from jaxreason.tasks import word_problem_lexicon as lex
from jaxreason.tasks.word_problems import (SPLITS, check_problem, held_out_questions,
                                           make_splits, sample_problems)

ROOT = Path(__file__).resolve().parents[2]
EQUATION = re.compile(r"(\d+) ([-+*/]) (\d+) = (\d+)")
# the facts as written down independently of the lexicon
KNOWN_FACTS = {"A dozen is 12": 12, "A pair is 2": 2, "A week has 7 days": 7,
               "A year has 12 months": 12, "A fortnight has 14 days": 14,
               "A spider has 8 legs": 8, "A dog has 4 legs": 4, "A bird has 2 legs": 2,
               "An ant has 6 legs": 6, "A bike has 2 wheels": 2, "A car has 4 wheels": 4,
               "A tricycle has 3 wheels": 3}


def _eval(a, op, b):
    return {"+": a + b, "-": a - b, "*": a * b, "/": a / b}[op]


@pytest.fixture(scope="module")
def splits():
    return make_splits()


def all_problems(splits):
    return [p for ps in splits.values() for p in ps]


def test_split_sizes_and_step_balance(splits):
    for name, (_, size, _) in SPLITS.items():
        ps = splits[name]
        assert len(ps) == size
        counts = [sum(p.n_steps == n for p in ps) for n in (1, 2, 3, 4)]
        assert max(counts) - min(counts) <= 1, (name, counts)


def test_splits_never_share_a_question(splits):
    names = list(splits)
    for i, a in enumerate(names):
        qa = [p.question for p in splits[a]]
        assert len(set(qa)) == len(qa), f"{a} repeats a question"
        for b in names[i + 1:]:
            assert not set(qa) & {p.question for p in splits[b]}, (a, b)
    held = held_out_questions()
    assert not held & {p.question for p in splits["train"]}
    assert {p.question for p in splits["test"]} <= held


def test_every_step_and_answer_is_exact_arithmetic(splits):
    for p in all_problems(splits):
        check_problem(p)
        for s in p.steps:
            lines = [m.groups() for m in EQUATION.finditer(s.text)]
            assert len(lines) == 1, s.text
            a, op, b, r = lines[0]
            assert _eval(int(a), op, int(b)) == int(r), s.text
            assert 0 <= int(r) <= 99 and 0 <= int(a) <= 99 and 0 <= int(b) <= 99
        assert p.text.endswith(f"The answer is {p.steps[-1].result}.\n\n")
        assert p.answer == p.steps[-1].result


def test_operands_come_from_the_question_earlier_steps_or_facts(splits):
    for p in all_problems(splits):
        given = {int(x) for x in re.findall(r"\d+", p.question)}
        for s in p.steps:
            for value, ref in ((s.left, s.left_ref), (s.right, s.right_ref)):
                if ref is not None:
                    assert p.steps[ref].result == value
                elif s.tag == "rag" and value == KNOWN_FACTS[s.before.split(",")[0]]:
                    pass
                else:
                    assert value in given, (p.question, s.text)


def test_a_step_shares_its_opening_with_the_sentence_whose_number_it_uses(splits):
    """Sentences after the first open with Then, Next, Later, After that, in that order; a
    step opening with one of them takes its question operand from that very sentence."""
    openings = ("Then", "Next", "Later", "After that")
    keyed = 0
    for p in all_problems(splits):
        sentences = re.split(r"(?<=\.) ", p.question)[:-1]  # the last asks the question
        opened = [next((w for w in openings if t.startswith(w + " ")), None)
                  for t in sentences[1:]]
        assert None not in opened and opened == list(openings[:len(opened)]), p.question
        for i, s in enumerate(p.steps):
            word = next((w for w in openings if s.before.startswith(w + " ")), None)
            if word is None:
                continue
            numbers = {int(x) for x in re.findall(r"\d+", sentences[1 + openings.index(word)])}
            # the sentence's number is an operand of this step, or of the fact recall
            # just before it ("Then Tom buys 3 more dozen eggs": "3 * 12", then "Then ...")
            used = {s.left, s.right}
            if i and p.steps[i - 1].tag == "rag":
                used |= {p.steps[i - 1].left}
            assert numbers and numbers <= used, (p.question, s.text)
            keyed += 1
    assert keyed > 1000


def test_facts_are_true_and_tagged(splits):
    assert lex.fact_table() == KNOWN_FACTS
    seen = set()
    for p in all_problems(splits):
        for s in p.steps:
            fact = s.before.split(",")[0]
            if s.tag == "rag":
                assert fact in KNOWN_FACTS, s.text
                assert s.right == KNOWN_FACTS[fact] and s.op == "*", s.text
                seen.add(fact)
            else:
                assert s.tag == "reason" and not any(f in s.text for f in KNOWN_FACTS)
    assert seen == set(KNOWN_FACTS)  # every fact is used somewhere


def test_operator_filtered_pools(splits):
    assert all(set(p.ops) == {"+"} for p in splits["demos_add"])
    assert all(set(p.ops) == {"*"} for p in splits["demos_mult"])
    ops = {o for p in splits["train"] for o in p.ops}
    assert ops == {"+", "-", "*", "/"}


def test_ood_names_never_in_questions(splits):
    words = {w for p in all_problems(splits) for w in re.findall(r"[A-Za-z]+", p.question)}
    assert not words & set(lex.OOD_NAMES)
    assert not set(lex.NAMES) & set(lex.OOD_NAMES)


def test_sample_problems_rejects_bad_input():
    with pytest.raises(ValueError, match="n_steps=5"):
        sample_problems(1, 0, step_counts=(5,))
    with pytest.raises(ValueError, match="operators"):
        sample_problems(1, 0, ops=("^",))
    with pytest.raises(ValueError, match="unknown split"):
        make_splits({"tset": 3})


DIGEST = """
import hashlib, json, random
from jaxreason.tasks.word_problems import make_splits
from jaxreason.tasks import word_problem_variants as wv
parts = [p.text for ps in make_splits().values() for p in ps]
parts += [wv.few_shot_prompt(t, 4, seed=3) for t in wv.PROMPT_TYPES]
parts += [c.argument + c.candidate_1 for c in wv.choice_examples(make_splits()["test"], 5, 0.7)]
print(hashlib.sha256(json.dumps(parts).encode()).hexdigest())
"""


def test_deterministic_across_hash_seeds():
    digests = []
    for hash_seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=hash_seed,
                   PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        out = subprocess.run([sys.executable, "-c", DIGEST], env=env, capture_output=True,
                             text=True, check=True, cwd=ROOT)
        digests.append(out.stdout.strip())
    assert digests[0] == digests[1] and len(digests[0]) == 64
