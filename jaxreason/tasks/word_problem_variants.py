"""What the studies build from the word problems: few-shot prompt variants, incorrect chains
of thought, choice arguments and tagged steps.

**Prompt types** (the seven demonstration sets of Rai & Yao's neuron study, same names):

- ``cot_prompt``: full chains of thought.
- ``text_only``: the equations removed, the results kept in the text
  (``So Tom has 41 eggs.``).
- ``equation_only``: the text removed, one equation per line (``36 + 5 = 41.``), and no
  ``Let's think step by step`` line (in the demonstrations and after the test question).
- ``add_only`` / ``mult_only``: full chains of *other* problems whose every step is an
  addition / a multiplication.
- ``incorrect_label``: the cot_prompt problems with every result and the answer replaced by
  a wrong number; a wrong result is carried into the later equations that use it, and each
  shown result differs from what its shown operands give.
- ``incorrect_ood_label``: every result replaced by a person's name that never occurs in a
  question (``21 - 15 = Dawson``), carried into later equations (``Dawson + 4 = Cedric``),
  and the answer is the last name.

The cot_prompt, text_only, equation_only and incorrect_* sets show the same problems, as
the original's files do.

**Incorrect chains** (the K/V-transplant study): the gold chain with a wrong result at a
chosen step (the last by default); later steps recompute from the wrong value, so the error
reaches the final answer. **Choice examples** pair a correct and an incorrect chain in a
seeded random order with a short argument naming the step where they differ, which favours
the correct chain with a chosen probability.

**Tagged steps** (the memory/reasoning planning-token study): ``[rag]: <step>`` for steps
that recall a fact, ``[reason]: <step>`` for the others, in records
``{question, answer, cot_steps, split}``.

All randomness comes from ``random.Random`` objects the caller seeds.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import tempfile
from pathlib import Path
from typing import Sequence

from jaxreason.tasks import word_problem_lexicon as lex
from jaxreason.tasks.word_problems import (WordProblem, apply_op, make_splits, question_block,
                                           solution_block)

PROMPT_TYPES = ("cot_prompt", "text_only", "equation_only", "add_only", "mult_only",
                "incorrect_label", "incorrect_ood_label")
DEMO_POOLS = {"add_only": "demos_add", "mult_only": "demos_mult"}  # others: "demos"


def _check_type(prompt_type: str) -> None:
    if prompt_type not in PROMPT_TYPES:
        raise ValueError(f"unknown prompt type {prompt_type!r}; allowed: {list(PROMPT_TYPES)}")


def _shown_operands(problem: WordProblem, shown: Sequence[str], i: int) -> tuple[str, str]:
    s = problem.steps[i]
    return (shown[s.left_ref] if s.left_ref is not None else str(s.left),
            shown[s.right_ref] if s.right_ref is not None else str(s.right))


def wrong_results(problem: WordProblem, rng: random.Random) -> list[int]:
    """A wrong result per step: never the gold result, never what the shown (already wrong)
    operands give, and within 0..MAX_VALUE."""
    shown: list[str] = []
    out: list[int] = []
    for i, s in enumerate(problem.steps):
        left, right = map(int, _shown_operands(problem, shown, i))
        try:
            implied = apply_op(left, s.op, right)
        except ValueError:  # a wrong dividend need not divide: any result is then wrong
            implied = None
        choices = [v for v in range(max(0, s.result - 9), min(lex.MAX_VALUE, s.result + 9) + 1)
                   if v not in (s.result, implied)]
        out.append(rng.choice(choices))
        shown.append(str(out[-1]))
    return out


def demo_lines(problem: WordProblem, prompt_type: str, rng: random.Random) -> tuple[list, str]:
    """The step lines and the answer a demonstration of ``prompt_type`` shows."""
    _check_type(prompt_type)
    steps = problem.steps
    if prompt_type in ("cot_prompt", "add_only", "mult_only"):
        return [s.text for s in steps], str(problem.answer)
    if prompt_type == "text_only":
        return [s.text_only for s in steps], str(problem.answer)
    if prompt_type == "equation_only":
        return [s.equation + "." for s in steps], str(problem.answer)
    if prompt_type == "incorrect_label":
        shown = [str(v) for v in wrong_results(problem, rng)]
    else:
        shown = rng.sample(lex.OOD_NAMES, len(steps))
    lines = [s.shown(*_shown_operands(problem, shown, i), shown[i]) for i, s in enumerate(steps)]
    return lines, shown[-1]


def demonstration(problem: WordProblem, prompt_type: str, rng: random.Random) -> str:
    lines, answer = demo_lines(problem, prompt_type, rng)
    return question_block(problem.question, prompt_type != "equation_only") + \
        solution_block(lines, answer)


def demo_problems(prompt_type: str, n_shots: int = 4, offset: int = 0) -> list[WordProblem]:
    """The problems a prompt type demonstrates: pool problems ``offset .. offset+n_shots``
    (the pools cycle through 1..4 steps)."""
    _check_type(prompt_type)
    pool = make_splits()[DEMO_POOLS.get(prompt_type, "demos")]
    if n_shots < 1 or offset < 0 or offset + n_shots > len(pool):
        raise ValueError(f"n_shots={n_shots}, offset={offset}: the {prompt_type} pool holds "
                         f"{len(pool)} problems")
    return list(pool[offset:offset + n_shots])


def few_shot_prompt(prompt_type: str, n_shots: int = 4, offset: int = 0, seed: int = 0) -> str:
    """The demonstrations of ``prompt_type`` (``seed`` draws the wrong results / names)."""
    rng = random.Random(seed)
    return "".join(demonstration(p, prompt_type, rng)
                   for p in demo_problems(prompt_type, n_shots, offset))


def test_prompt(question: str, prompt_type: str) -> str:
    """What follows the demonstrations: the question and (but for equation_only) the
    ``Let's think step by step`` line."""
    _check_type(prompt_type)
    return question_block(question, prompt_type != "equation_only")


# ----------------------------------------------------------------------------- incorrect CoT

def _recompute(problem: WordProblem, k: int, wrong: int) -> WordProblem | None:
    steps = list(problem.steps[:k]) + [dataclasses.replace(problem.steps[k], result=wrong)]
    for s in problem.steps[k + 1:]:
        left = steps[s.left_ref].result if s.left_ref is not None else s.left
        right = steps[s.right_ref].result if s.right_ref is not None else s.right
        try:
            result = apply_op(left, s.op, right)
        except ValueError:
            return None
        if not 0 <= result <= lex.MAX_VALUE:
            return None
        steps.append(dataclasses.replace(s, left=left, right=right, result=result))
    return dataclasses.replace(problem, steps=tuple(steps), answer=steps[-1].result)


def incorrect_chain(problem: WordProblem, rng: random.Random,
                    step: int | None = None) -> WordProblem:
    """The chain with a wrong result at ``step`` (0-based; default the last, negative counts
    from the end) and the later steps recomputed from it; its answer differs from the gold."""
    n = problem.n_steps
    k = n - 1 if step is None else step
    if not -n <= k < n:
        raise ValueError(f"step={step} for a {n}-step problem; allowed: {-n}..{n - 1}")
    k %= n
    gold = problem.steps[k].result
    near = [gold + d for d in rng.sample([*range(-9, 0), *range(1, 10)], 18)]
    far = [v for v in range(lex.MAX_VALUE + 1) if abs(v - gold) > 9]
    for wrong in near + far:
        if 0 <= wrong <= lex.MAX_VALUE:
            chain = _recompute(problem, k, wrong)
            if chain is not None and chain.answer != problem.answer:
                return chain
    raise ValueError(f"no wrong result at step {k} of {problem.question!r} keeps the chain valid")


def candidate_text(chain: WordProblem) -> str:
    """A chain as one candidate string: its steps, then ``Final answer: N``."""
    return " ".join(s.text for s in chain.steps) + f" Final answer: {chain.answer}"


@dataclasses.dataclass(frozen=True)
class ChoiceExample:
    """A correct and an incorrect chain in two slots, and an argument choosing one."""

    question: str
    correct: WordProblem
    incorrect: WordProblem
    error_step: int  # 0-based step where the chains first differ
    swapped: bool  # True: the incorrect chain is candidate 1
    choice: int  # the slot (1 or 2) the argument picks
    argument: str

    @property
    def candidate_1(self) -> str:
        return candidate_text(self.incorrect if self.swapped else self.correct)

    @property
    def candidate_2(self) -> str:
        return candidate_text(self.correct if self.swapped else self.incorrect)

    @property
    def correct_slot(self) -> int:
        return 2 if self.swapped else 1

    @property
    def choice_is_correct(self) -> bool:
        return self.choice == self.correct_slot


def choice_example(problem: WordProblem, rng: random.Random, p_right: float = 0.5,
                   error_step: int | None = None) -> ChoiceExample:
    """Draw the incorrect chain, the slot order (a fair coin) and whether the argument
    favours the correct chain (probability ``p_right``), in that order from ``rng``."""
    if not 0.0 <= p_right <= 1.0:
        raise ValueError(f"p_right={p_right} must be a probability in [0, 1]")
    wrong = incorrect_chain(problem, rng, error_step)
    k = next(i for i, (a, b) in enumerate(zip(problem.steps, wrong.steps)) if a != b)
    swapped = rng.random() < 0.5
    favour_right = rng.random() < p_right
    correct_slot = 2 if swapped else 1
    choice = correct_slot if favour_right else 3 - correct_slot
    eq = {correct_slot: problem.steps[k].equation, 3 - correct_slot: wrong.steps[k].equation}
    argument = (f"The candidates differ at step {k + 1}: candidate 1 has {eq[1]} and candidate "
                f"2 has {eq[2]}. The right one is {eq[choice]}, so candidate {choice} is right.")
    return ChoiceExample(problem.question, problem, wrong, k, swapped, choice, argument)


def choice_examples(problems: Sequence[WordProblem], seed: int, p_right: float = 0.5,
                    error_step: int | None = None) -> list[ChoiceExample]:
    rng = random.Random(seed)
    return [choice_example(p, rng, p_right, error_step) for p in problems]


# ----------------------------------------------------------------------------- tagged steps

def tagged_steps(problem: WordProblem) -> list[str]:
    """``[rag]: ...`` / ``[reason]: ...`` per step."""
    return [f"[{s.tag}]: {s.text}" for s in problem.steps]


def planning_record(problem: WordProblem, split: str) -> dict:
    return {"question": problem.question, "answer": str(problem.answer),
            "cot_steps": tagged_steps(problem), "split": split}


def planning_records(splits: Sequence[str] = ("train", "test")) -> list[dict]:
    all_splits = make_splits()
    unknown = [s for s in splits if s not in all_splits]
    if unknown:
        raise ValueError(f"unknown split(s) {unknown}; known: {list(all_splits)}")
    return [planning_record(p, s) for s in splits for p in all_splits[s]]


def write_planning_json(path: str | os.PathLike,
                        splits: Sequence[str] = ("train", "test")) -> Path:
    """The records as one JSON list, written atomically."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(planning_records(splits), f, indent=1)
    os.replace(tmp, target)
    return target
