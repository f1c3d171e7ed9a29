"""Arithmetic word problems in the style of GSM8K, with their gold chains of thought.

A problem is a few sentences about people and objects (``Tom buys 3 dozen eggs. Then Anna
gives Tom 5 more eggs. How many eggs does Tom have?``) solved in 1 to 4 steps of
``+ - * /``. Every step is one line with one equation and its exact integer result, and
every operand, result and answer lies in 0..99 with exact divisions, small enough for a
tiny model to learn from scratch. A step that needs a remembered fact from the lexicon's
fact table (a dozen is 12, a week has 7 days, a spider has 8 legs) states it first and is
tagged ``rag``; the others are tagged ``reason``::

    Question: Tom buys 3 dozen eggs. Then Anna gives Tom 5 more eggs. How many eggs does Tom have?
    Let's think step by step
    A dozen is 12, so 3 dozen eggs is 3 * 12 = 36 eggs.
    Then Tom has 36 + 5 = 41 eggs.
    The answer is 41.

This is the layout of the few-shot prompts of Rai & Yao's neuron study (``Question: ``, the
``Let's think step by step`` line, one step per line, ``The answer is N.``, a blank line
between demonstrations), and the layout of the training rows, so demonstrations steer the
format the model was trained on.

The sentences after the first open with a connective of their own (``Then``, ``Next``,
``Later``, ``After that``: the lexicon's ``CONNECTIVES``, in order), and the step that uses a
sentence's number opens with the same word(s). That shared key is what lets a small model
find the number a step needs: without it (every sentence opening with ``Then``, every step
with ``So``), the step must count the sentences already used, which the 4-layer base model
learnt late and only in some runs (teacher forced, a run that stalled copied the right
operand of steps after the first correctly 26% of the time, against 100% for a run that
learnt it; the other operands and the results differed far less). The other steps that
name a person open with ``So``. Either way the name follows a word, so it is the same token
as in the question (the tokenizer writes a word at the start of a line without its leading
space).

Each step records which earlier step an operand came from (``left_ref``/``right_ref``), so
variants can change a result and carry the change into later equations.

Splits are pure functions of their seeds (one ``random.Random`` each, no ``hash()``, no set
iteration), balanced over 1..4 steps, and never share a question: each split skips the
questions of every split drawn before it.
"""

from __future__ import annotations

import dataclasses
import functools
import random
from typing import Callable, Sequence

from jaxreason.tasks import word_problem_lexicon as lex

QUESTION = "Question: "
THINK = "Let's think step by step"
SEPARATOR = "\n\n"  # after every solution: a blank line before the next question
STEP_COUNTS = (1, 2, 3, 4)
OPS = ("+", "-", "*", "/")

# split name -> (seed, size, kind of problem); drawn in this order, each excluding the earlier
SPLITS = {
    "demos": (11, 100, "any"),  # few-shot demonstration pool (cot, text_only, ... variants)
    "demos_add": (14, 40, "add"),  # addition-only demonstrations
    "demos_mult": (15, 40, "mult"),  # multiplication-only demonstrations
    "test": (13, 1000, "any"),
    "valid": (12, 400, "any"),
    "train": (10, 4000, "any"),
}
KIND_OPS = {"any": OPS, "add": ("+",), "mult": ("*",)}


def apply_op(left: int, op: str, right: int) -> int:
    """The exact integer result; a division must be exact."""
    if op == "+":
        return left + right
    if op == "-":
        return left - right
    if op == "*":
        return left * right
    if op == "/":
        if right == 0 or left % right:
            raise ValueError(f"{left} / {right} is not an exact division")
        return left // right
    raise ValueError(f"unknown operator {op!r}; allowed: {list(OPS)}")


@dataclasses.dataclass(frozen=True)
class Step:
    """One line of the chain of thought: ``before + "l op r = result" + after``."""

    before: str  # "So Tom has " (a rag step states its fact here)
    after: str  # " eggs."
    left: int
    op: str
    right: int
    result: int
    tag: str  # "rag" (recalls a fact) or "reason" (computes only)
    left_ref: int | None = None  # index of the earlier step whose result is the left operand
    right_ref: int | None = None

    @property
    def equation(self) -> str:
        return f"{self.left} {self.op} {self.right} = {self.result}"

    @property
    def text(self) -> str:
        return self.before + self.equation + self.after

    @property
    def text_only(self) -> str:
        """The line with its equation removed: only the result stays in the text."""
        return f"{self.before}{self.result}{self.after}"

    def shown(self, left: str, right: str, result: str) -> str:
        """The line with other strings shown for the operands and the result."""
        return f"{self.before}{left} {self.op} {right} = {result}{self.after}"


@dataclasses.dataclass(frozen=True)
class WordProblem:
    """A question, its gold steps and its answer (the last step's result)."""

    question: str
    steps: tuple[Step, ...]
    answer: int
    family: str  # "possession" (a count that changes) or "parts" (legs or wheels)

    @property
    def n_steps(self) -> int:
        return len(self.steps)

    @property
    def ops(self) -> tuple[str, ...]:
        return tuple(s.op for s in self.steps)

    @property
    def tags(self) -> tuple[str, ...]:
        return tuple(s.tag for s in self.steps)

    @property
    def prompt(self) -> str:
        """What a few-shot prompt ends with before the model answers."""
        return question_block(self.question)

    @property
    def solution(self) -> str:
        """The gold continuation of :attr:`prompt`: the steps, the answer line, a blank line."""
        return solution_block([s.text for s in self.steps], str(self.answer))

    @property
    def text(self) -> str:
        return self.prompt + self.solution


def question_block(question: str, think: bool = True) -> str:
    return QUESTION + question + "\n" + (THINK + "\n" if think else "")


def solution_block(lines: Sequence[str], answer: str) -> str:
    return "".join(line + "\n" for line in lines) + answer_line(answer) + SEPARATOR


def answer_line(answer: str) -> str:
    return f"The answer is {answer}."


def check_problem(p: WordProblem) -> None:
    """Raise unless every step's arithmetic, operand links and range hold."""
    for i, s in enumerate(p.steps):
        for value, ref in ((s.left, s.left_ref), (s.right, s.right_ref)):
            if ref is not None and not (0 <= ref < i and p.steps[ref].result == value):
                raise ValueError(f"step {i} of {p.question!r}: operand {value} does not match "
                                 f"step {ref}")
        if apply_op(s.left, s.op, s.right) != s.result:
            raise ValueError(f"step {i} of {p.question!r}: {s.equation} is wrong")
        if not all(0 <= v <= lex.MAX_VALUE for v in (s.left, s.right, s.result)):
            raise ValueError(f"step {i} of {p.question!r}: {s.equation} leaves 0..{lex.MAX_VALUE}")
    if not p.steps or p.answer != p.steps[-1].result:
        raise ValueError(f"{p.question!r}: the answer {p.answer} is not the last step's result")


# ----------------------------------------------------------------------------- drawing

class _Builder:
    """A problem under construction: a subject who holds ``count`` objects."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.sentences: list[str] = []
        self.steps: list[Step] = []
        self.people: list[str] = []
        self.subject = self.obj = ""
        self.count, self.count_ref = 0, None
        self.moves = 0  # sentences after the first, each opened by its own connective

    def connective(self) -> str:
        """The next move sentence's opening word(s): ``Then``, ``Next``, ..."""
        self.moves += 1
        return lex.CONNECTIVES[self.moves - 1]

    def person(self) -> str:
        name = self.rng.choice([n for n in lex.NAMES if n not in self.people])
        self.people.append(name)
        return name

    def step(self, before, after, left, op, right, tag, left_ref=None, right_ref=None) -> int:
        self.steps.append(Step(before, after, left, op, right, apply_op(left, op, right), tag,
                               left_ref, right_ref))
        return len(self.steps) - 1

    def set_count(self, ref: int) -> None:
        self.count, self.count_ref = self.steps[ref].result, ref

    def pick(self, lo: int, hi: int) -> int | None:
        return self.rng.randint(lo, hi) if lo <= hi else None


def _start_given(b: _Builder) -> bool:
    b.subject, b.obj = b.person(), b.rng.choice(lex.ALL_OBJECTS)
    b.count = b.rng.randint(2, 60)
    b.sentences.append(f"{b.subject} has {b.count} {b.obj}.")
    return True


def _start_groups(b: _Builder) -> bool:
    b.subject, b.obj = b.person(), b.rng.choice(lex.OBJECTS + lex.DOZEN_OBJECTS)
    cont, g = b.rng.choice(lex.CONTAINERS), b.rng.randint(2, 9)
    k = b.rng.randint(2, min(12, lex.MAX_VALUE // g))
    b.sentences.append(f"{b.subject} has {g} {cont} with {k} {b.obj} in each.")
    b.set_count(b.step(f"So {b.subject} has ", f" {b.obj}.", g, "*", k, "reason"))
    return True


def _start_unit(b: _Builder) -> bool:
    fact = b.rng.choice(lex.UNIT_FACTS)
    b.subject, b.obj = b.person(), b.rng.choice(fact.objects)
    g = b.rng.randint(2, min(9, lex.MAX_VALUE // fact.value))
    phrase = fact.phrase.format(g=g, obj=b.obj)
    b.sentences.append(f"{b.subject} buys {phrase}.")
    b.set_count(b.step(f"{fact.statement}, so {phrase} is ", f" {b.obj}.", g, "*", fact.value,
                       "rag"))
    return True


def _start_rate(b: _Builder) -> bool:
    fact = b.rng.choice(lex.TIME_FACTS)
    verb, b.obj = b.rng.choice(lex.RATE_ACTIVITIES)
    b.subject = b.person()
    g = b.rng.randint(2, lex.MAX_VALUE // (2 * fact.value))
    days = g * fact.value
    k = b.rng.randint(2, lex.MAX_VALUE // days)
    b.sentences.append(f"{b.subject} {verb} {k} {b.obj} {fact.every} for {g} {fact.name}.")
    span = b.step(f"{fact.statement}, so {g} {fact.name} is ", f" {fact.small}.", g, "*",
                  fact.value, "rag")
    b.set_count(b.step(f"So {b.subject} {verb} ", f" {b.obj}.", k, "*", days, "reason",
                       right_ref=span))
    return True


def _add(b: _Builder) -> bool:
    n = b.pick(2, min(lex.MAX_CHANGE, lex.MAX_VALUE - b.count))
    if n is None:
        return False
    then = b.connective()
    if b.rng.random() < 0.5:
        b.sentences.append(f"{then} {b.person()} gives {b.subject} {n} more {b.obj}.")
    else:
        b.sentences.append(f"{then} {b.subject} {b.rng.choice(lex.GIVE_VERBS)} {n} more "
                           f"{b.obj}.")
    b.set_count(b.step(f"{then} {b.subject} has ", f" {b.obj}.", b.count, "+", n, "reason",
                       left_ref=b.count_ref))
    return True


def _add_unit(b: _Builder) -> bool:
    facts = [f for f in lex.UNIT_FACTS if b.obj in f.objects]
    if not facts:
        return False
    fact = facts[0]
    g = b.pick(2, min(9, (lex.MAX_VALUE - b.count) // fact.value))
    if g is None:
        return False
    then = b.connective()
    b.sentences.append(f"{then} {b.subject} buys "
                       f"{fact.phrase.format(g=f'{g} more', obj=b.obj)}.")
    bought = b.step(f"{fact.statement}, so {fact.phrase.format(g=g, obj=b.obj)} is ",
                    f" {b.obj}.", g, "*", fact.value, "rag")
    b.set_count(b.step(f"{then} {b.subject} has ", f" {b.obj}.", b.count, "+",
                       b.steps[bought].result, "reason", left_ref=b.count_ref,
                       right_ref=bought))
    return True


def _sub(b: _Builder) -> bool:
    n = b.pick(2, min(lex.MAX_CHANGE, b.count - 1))
    if n is None:
        return False
    then = b.connective()
    b.sentences.append(f"{then} {b.subject} {b.rng.choice(lex.TAKE_VERBS)} {n} {b.obj} to "
                       f"{b.person()}.")
    b.set_count(b.step(f"{then} {b.subject} has ", f" {b.obj} left.", b.count, "-", n, "reason",
                       left_ref=b.count_ref))
    return True


def _mul(b: _Builder) -> bool:
    k = b.pick(2, min(5, lex.MAX_VALUE // max(b.count, 1)))
    if k is None or b.count < 1:
        return False
    other, then = b.person(), b.connective()
    b.sentences.append(f"{then} {other} has {k} times as many {b.obj} as {b.subject}.")
    b.subject = other
    b.set_count(b.step(f"{then} {other} has ", f" {b.obj}.", k, "*", b.count, "reason",
                       right_ref=b.count_ref))
    return True


def _div(b: _Builder) -> bool:
    ks = [k for k in range(2, 6) if b.count % k == 0 and b.count // k >= 1]
    if not ks:
        return False
    k, cont = b.rng.choice(ks), b.rng.choice(lex.CONTAINERS)
    then = b.connective()
    b.sentences.append(f"{then} {b.subject} puts the {b.obj} equally into {k} {cont} and "
                       "keeps one of them.")
    b.set_count(b.step(f"{then} {b.subject} keeps ", f" {b.obj}.", b.count, "/", k, "reason",
                       left_ref=b.count_ref))
    return True


# name -> (build, steps it adds, operators it uses)
_STARTS: dict[str, tuple[Callable, int, tuple]] = {
    "given": (_start_given, 0, ()), "groups": (_start_groups, 1, ("*",)),
    "unit": (_start_unit, 1, ("*",)), "rate": (_start_rate, 2, ("*",)),
}
_MOVES: dict[str, tuple[Callable, int, tuple]] = {
    "add": (_add, 1, ("+",)), "add_unit": (_add_unit, 2, ("*", "+")), "sub": (_sub, 1, ("-",)),
    "mul": (_mul, 1, ("*",)), "div": (_div, 1, ("/",)),
}


def _parts_problem(rng: random.Random, n_steps: int) -> WordProblem:
    """Legs or wheels: one kind (1 rag step) or two kinds added up (2 rag + 1 reason)."""
    b = _Builder(rng)
    part = rng.choice(sorted(lex.PART_PLACES))
    kinds = rng.sample([f for f in lex.PART_FACTS if f.part == part], 1 if n_steps == 1 else 2)
    counts: list[int] = []
    for f in kinds:  # the first of two kinds keeps at most half of the range
        budget = lex.MAX_VALUE // 2 if len(kinds) == 2 and not counts else \
            lex.MAX_VALUE - sum(b.steps[r].result for r in counts)
        g = rng.randint(2, min(12, budget // f.value))
        counts.append(b.step(f"{f.statement}, so {g} {f.plural} have ", f" {part}.", g, "*",
                             f.value, "rag"))
    place = lex.PART_PLACES[part]
    shown = " and ".join(f"{b.steps[r].left} {f.plural}" for r, f in zip(counts, kinds))
    if len(kinds) == 1:
        question = f"There are {shown} {place}. How many {part} do they have?"
    else:
        a, c = (b.steps[r].result for r in counts)
        b.step("So there are ", f" {part} in total.", a, "+", c, "reason", counts[0], counts[1])
        question = f"There are {shown} {place}. How many {part} are there in total?"
    return WordProblem(question, tuple(b.steps), b.steps[-1].result, "parts")


def sample_problem(rng: random.Random, n_steps: int, ops: Sequence[str] = OPS) -> WordProblem:
    """One problem of exactly ``n_steps`` steps whose operators all lie in ``ops``."""
    if n_steps not in STEP_COUNTS:
        raise ValueError(f"n_steps={n_steps}; allowed: {list(STEP_COUNTS)}")
    bad = [o for o in ops if o not in OPS]
    if bad or not ops:
        raise ValueError(f"ops={list(ops)}: allowed operators are {list(OPS)}")
    allowed = lambda used: all(o in ops for o in used)  # noqa: E731
    for _ in range(1000):
        if n_steps in (1, 3) and allowed(("*", "+")[:1 if n_steps == 1 else 2]) \
                and rng.random() < 0.25:
            p = _parts_problem(rng, n_steps)
            if p.answer <= lex.MAX_VALUE:
                return p
            continue
        b = _Builder(rng)
        starts = [k for k, (_, n, used) in _STARTS.items() if n <= n_steps and allowed(used)]
        _STARTS[rng.choice(starts)][0](b)
        left, ok = n_steps - len(b.steps), True
        while left > 0 and ok:
            moves = [k for k, (_, n, used) in _MOVES.items() if n <= left and allowed(used)]
            rng.shuffle(moves)
            ok = any(_MOVES[m][0](b) for m in moves)  # the first move that fits the count
            left = n_steps - len(b.steps)
        if ok and b.steps:
            question = " ".join(b.sentences) + f" How many {b.obj} does {b.subject} have?"
            return WordProblem(question, tuple(b.steps), b.count, "possession")
    raise RuntimeError(f"no {n_steps}-step problem with operators {list(ops)} in 1000 draws")


def sample_problems(n: int, seed: int, ops: Sequence[str] = OPS, exclude=(),
                    step_counts: Sequence[int] = STEP_COUNTS) -> list[WordProblem]:
    """``n`` problems with distinct questions outside ``exclude``; problem i has
    ``step_counts[i % len(step_counts)]`` steps."""
    rng = random.Random(seed)
    seen = set(exclude)
    out: list[WordProblem] = []
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > 100 * n + 1000:
            raise ValueError(f"only {len(out)} of {n} distinct problems after {tries} draws")
        p = sample_problem(rng, step_counts[len(out) % len(step_counts)], ops)
        if p.question not in seen:
            seen.add(p.question)
            out.append(p)
    return out


@functools.lru_cache(maxsize=4)
def _splits(sizes: tuple) -> dict[str, tuple[WordProblem, ...]]:
    sizes_d = dict(sizes)
    out: dict[str, tuple[WordProblem, ...]] = {}
    seen: set[str] = set()
    for name, (seed, size, kind) in SPLITS.items():
        out[name] = tuple(sample_problems(sizes_d.get(name, size), seed, KIND_OPS[kind], seen))
        seen |= {p.question for p in out[name]}
    return out


def make_splits(sizes: dict | None = None) -> dict[str, tuple[WordProblem, ...]]:
    """Every split of :data:`SPLITS` (sizes overridable), disjoint by question text."""
    unknown = sorted(set(sizes or {}) - set(SPLITS))
    if unknown:
        raise ValueError(f"unknown split(s) {unknown}; known: {list(SPLITS)}")
    return dict(_splits(tuple(sorted((sizes or {}).items()))))


def held_out_questions(sizes: dict | None = None) -> set[str]:
    """Questions that training must never see: every split but ``train``."""
    return {p.question for name, ps in make_splits(sizes).items() if name != "train" for p in ps}
