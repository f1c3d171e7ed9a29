"""Multi-step arithmetic formulas for the Think-to-Talk study (Kudo et al., arXiv 2412.01113;
github.com/keitokudo/TTT).

A problem defines variables by formulas over single digits (``o = 4 + 5``, ``z = 0 + o``)
and asks for the last-defined one. The model answers with a chain of thought that resolves
the query depth first; the values of the variables (in definition order) are the probe
targets ("intermediate answers").

Configs: ``1step``, ``2step``, ``3step``, ``2step_distractor``, ``2step_in_order`` (2step's
problems shown in definition order) and ``general_3formulas`` (random 3-formula
compositions with shuffled display, the pool of the 50-shot general prompt).

Everything is a pure function of the seeds: each split draws from its own
``random.Random(seed)`` (train 42, valid 43, test 44, probing 45, edit pairs 44) in the
original's order of draws (``formula_draws``), so the five configs' splits and their 3-shot
prompts are the original's own problems, split for split and in order. ``mode`` matters for
two parts only. The edit pairs: both modes draw them as the original does (two generators of
seed 44, the edit drawn before the base is checked, every edit kept off the later bases);
``faithful`` uses the original's candidates for the new operand (their range follows v1's
operator) and gives the original's 2,000 pairs, ``fixed`` draws uniformly over the valid
values. The general pool: ``faithful`` follows the original's draws (32 templates, a
random variable asked, references to the previous variable only) and is its pool under
PYTHONHASHSEED=0; ``fixed`` asks the last-defined variable like every test problem. No
draw here depends on this process's hash seed.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Iterable, Sequence

import numpy as np

from jaxreason.tasks import formula_draws as draws
from jaxreason.tasks.formula_draws import HIGH, LETTERS, LOW  # noqa: F401  (the module's API)

CONFIGS = ("1step", "2step", "3step", "2step_distractor", "2step_in_order")
ALL_CONFIGS = CONFIGS + ("general_3formulas",)
SPLIT_SEEDS = {"train": 42, "valid": 43, "test": 44, "probing_train": 45}
SPLIT_SIZES = {"train": 100, "valid": 2000, "test": 2000, "probing_train": 10000}
SPLIT_EXCLUDES = {"train": (), "valid": ("train",), "test": ("train", "valid"),
                  "probing_train": ("train", "valid", "test")}
EDIT_SEED, EDIT_SIZE = 44, 2000
MODES = ("faithful", "fixed")


@dataclasses.dataclass(frozen=True)
class Formula:
    """``var = left [op right]``; operands are ints (literals) or variable names."""

    var: str
    left: int | str
    op: str | None = None  # "+", "-" or None (a plain substitution)
    right: int | str | None = None

    @property
    def refs(self) -> tuple[str, ...]:
        return tuple(x for x in (self.left, self.right) if isinstance(x, str))

    def text(self, env: dict | None = None) -> str:
        """The formula with the variables in ``env`` substituted."""
        env = env or {}
        show = lambda x: str(env.get(x, x)) if isinstance(x, str) else str(x)  # noqa: E731
        rhs = show(self.left) if self.op is None else f"{show(self.left)} {self.op} {show(self.right)}"
        return f"{self.var} = {rhs}"

    def value(self, env: dict) -> int:
        get = lambda x: env[x] if isinstance(x, str) else x  # noqa: E731
        a = get(self.left)
        if self.op is None:
            return a
        return a + get(self.right) if self.op == "+" else a - get(self.right)


@dataclasses.dataclass(frozen=True)
class Problem:
    """Formulas in definition order, the display order and the asked formula (the
    last-defined one except in the faithful general pool)."""

    config: str
    formulas: tuple[Formula, ...]
    display: tuple[int, ...]  # indices into formulas, in the order they are shown
    question: int = -1  # index into formulas of the asked variable

    @property
    def query(self) -> str:
        return self.formulas[self.question].var

    @property
    def values(self) -> dict[str, int]:
        env: dict[str, int] = {}
        for f in self.formulas:
            env[f.var] = f.value(env)
        return env

    @property
    def intermediate_answers(self) -> tuple[int, ...]:
        """The probe targets: every variable's value, in definition order."""
        env = self.values
        return tuple(env[f.var] for f in self.formulas)

    @property
    def passage(self) -> str:
        return ", ".join(self.formulas[i].text() for i in self.display)

    @property
    def key(self) -> tuple[str, str]:
        """What the exclusions compare: (passage, question)."""
        return (self.passage, f"{self.query} =")

    @property
    def source(self) -> str:
        return f"{char_format(self.passage)} ; {char_format(self.query + ' =')}?"

    @property
    def cot(self) -> list[str]:
        return backtracking_cot(self.formulas, self.query)

    @property
    def target(self) -> str:
        return " " + char_format(" , ".join(self.cot)) + "\n"

    @property
    def answer(self) -> int:
        return self.values[self.query]


def char_format(text: str) -> str:
    """Delete every space, then put one space between every pair of characters."""
    return " ".join(text.replace(" ", ""))


def backtracking_cot(formulas: Sequence[Formula], query: str) -> list[str]:
    """The gold chain of thought: depth-first resolution of ``query``.

    Write a variable's formula; if it references variables, resolve them first (the last
    reference first, as a stack would pop it), then write the formula again, substitute the
    references one at a time and finish with ``v = value``. A formula of literals is
    followed by its value unless it already is a single number."""
    by_var = {f.var: f for f in formulas}
    env: dict[str, int] = {}
    lines: list[str] = []

    def resolve(var: str) -> None:
        f = by_var[var]
        lines.append(f.text())
        if f.refs:
            for ref in reversed(f.refs):
                if ref not in env:
                    resolve(ref)
            lines.append(f.text())
            shown: dict[str, int] = {}
            for ref in f.refs:
                shown[ref] = env[ref]
                lines.append(f.text(shown))
        env[var] = f.value(env)
        if f.op is not None:
            lines.append(f"{var} = {env[var]}")

    resolve(query)
    return lines


# ----------------------------------------------------------------------------- sampling

def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is not a formula mode; allowed: {list(MODES)}")


def _problem(config: str, drawn, display, question: int = -1) -> Problem:
    return Problem(config, tuple(Formula(*d) for d in drawn), tuple(display), question)


def draw_problem(config: str, rng: random.Random, mode: str = "fixed") -> Problem:
    """One raw draw of ``config`` in the original's order of draws, not yet range-checked."""
    _check_mode(mode)
    if config == "general_3formulas":
        draw = draws.draw_general_faithful if mode == "faithful" else draws.draw_general_fixed
        return _problem(config, *draw(rng))
    base = "2step" if config == "2step_in_order" else config
    if base not in draws.TEMPLATES:
        raise ValueError(f"unknown formula config {config!r}; known: {list(ALL_CONFIGS)}")
    drawn = draws.draw_template(base, rng)
    n = len(drawn)
    return _problem(config, drawn, range(n) if config == "2step_in_order" else reversed(range(n)))


def in_range(problem: Problem) -> bool:
    """The NumberRangeConstraint: every value (literals and results) lies in [0, 9]."""
    env: dict[str, int] = {}
    for f in problem.formulas:
        for x in (f.left, f.right):
            if isinstance(x, int) and not LOW <= x <= HIGH:
                return False
        env[f.var] = f.value(env)
        if not LOW <= env[f.var] <= HIGH:
            return False
    return True


def sample_problem(config: str, rng: random.Random, mode: str = "fixed") -> Problem:
    """One problem of ``config`` that satisfies the constraint (a violating draw is redrawn
    whole, as the original does)."""
    while True:
        p = draw_problem(config, rng, mode)
        if in_range(p):
            return p


def sample_problems(config: str, n: int, seed: int, exclude: Iterable = (),
                    max_tries: int | None = None, mode: str = "fixed") -> list[Problem]:
    """``n`` distinct problems whose (passage, question) is not in ``exclude``.

    ``2step_in_order`` draws 2step's problems (same seeds, same problems) and shows them in
    definition order; exclusions then compare the 2step keys."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(seed)
    base = "2step" if config == "2step_in_order" else config
    seen = set(exclude)
    out: list[Problem] = []
    tries, limit = 0, max_tries or 200 * n + 1000
    while len(out) < n:
        tries += 1
        if tries > limit:
            raise ValueError(f"{config}: only {len(out)} of {n} distinct problems after {limit} "
                             "draws; the exclusions leave too few")
        p = sample_problem(base, rng, mode)
        if p.key in seen:
            continue
        seen.add(p.key)
        out.append(_as_in_order(p) if config == "2step_in_order" else p)
    return out


def make_splits(config: str, sizes: dict | None = None,
                mode: str = "fixed") -> dict[str, list[Problem]]:
    """train / valid / test / probing_train with the original's seeds (42-45), sizes (100, 2,000,
    2,000, 10,000) and exclusions (each split avoids the problems of the splits before it).
    ``mode`` changes the general pool only."""
    if config not in ALL_CONFIGS:
        raise ValueError(f"unknown formula config {config!r}; known: {list(ALL_CONFIGS)}")
    _check_mode(mode)
    sizes = {**SPLIT_SIZES, **(sizes or {})}
    unknown = sorted(set(sizes) - set(SPLIT_SIZES))
    if unknown:
        raise ValueError(f"unknown split(s) {unknown}; known: {list(SPLIT_SIZES)}")
    splits: dict[str, list[Problem]] = {}
    for name in SPLIT_SIZES:
        exclude = {p.key if config != "2step_in_order" else _as_2step(p).key
                   for other in SPLIT_EXCLUDES[name] for p in splits[other]}
        splits[name] = sample_problems(config, sizes[name], SPLIT_SEEDS[name], exclude, mode=mode)
    return splits


def _as_2step(p: Problem) -> Problem:
    return Problem("2step", p.formulas, tuple(reversed(range(len(p.formulas)))))


def _as_in_order(p: Problem) -> Problem:
    return Problem("2step_in_order", p.formulas, tuple(range(len(p.formulas))))


def few_shot_prompt(train: Sequence[Problem], shots: int = 3) -> str:
    """source+target of the first ``shots`` train problems, concatenated (no instruction)."""
    if len(train) < shots:
        raise ValueError(f"few-shot prompt needs {shots} train problems, got {len(train)}")
    return "".join(p.source + p.target for p in train[:shots])


def general_prompt(shots: int = 50, mode: str = "fixed") -> str:
    """The 50-shot general prompt: the first ``shots`` problems of the general train set."""
    return few_shot_prompt(sample_problems("general_3formulas", max(shots, 100),
                                           SPLIT_SEEDS["train"], mode=mode), shots)


# ----------------------------------------------------------------------------- edit pairs

@dataclasses.dataclass(frozen=True)
class EditPair:
    """A 2step problem and its counterfactual: v0's second operand changed."""

    base: Problem
    edited: Problem


def edit_second_operand(problem: Problem, rng: random.Random,
                        mode: str = "fixed") -> Problem | None:
    """v0's right operand changed (None when there is no candidate). ``fixed``: uniform over
    the other values that keep every value in range; ``faithful``: the original's choice,
    whose candidates follow v1's operator and may break the range (checked by the caller)."""
    _check_mode(mode)
    v0, v1 = problem.formulas
    new = draws.draw_edit_value(v0.left, v0.op, v0.right, v1.left, v1.op, rng,
                                faithful=mode == "faithful")
    if new is None:
        return None
    return Problem(problem.config, (dataclasses.replace(v0, right=new), v1), problem.display)


def make_edit_pairs(n: int = EDIT_SIZE, seed: int = EDIT_SEED, exclude: Iterable = (),
                    mode: str = "fixed") -> list[EditPair]:
    """``n`` (base, edited) 2step pairs in the original's order of checks: the bases and the
    edits draw from two generators of one seed; the edit is drawn before the base is
    checked (a rejected base still advances the edit generator, an edit without candidates
    rejects its base unchecked); the base must be in range and off ``exclude`` (train and
    valid keys) and the earlier pairs; then the edited problem likewise. Both the base and
    the edit join the keys to avoid, so no edited problem equals another pair's base. In
    faithful mode these are the original's 2,000 pairs, in order."""
    _check_mode(mode)
    bases, edits = random.Random(seed), random.Random(seed)
    seen = set(exclude)
    out: list[EditPair] = []
    while len(out) < n:
        base = draw_problem("2step", bases)
        edited = edit_second_operand(base, edits, mode)
        if edited is None or not in_range(base) or base.key in seen:
            continue
        if not in_range(edited) or edited.key in seen:
            continue
        assert len(base.source) == len(edited.source)
        seen.update((base.key, edited.key))
        out.append(EditPair(base, edited))
    return out


def edit_pairs_for(splits: dict[str, list[Problem]], n: int = EDIT_SIZE,
                   mode: str = "fixed") -> list[EditPair]:
    """The original's ``test_2step_v2_edit`` (seed 44): excluded from train and valid (not
    from test or probing_train: the original's overlap, kept)."""
    exclude = {p.key for name in ("train", "valid") for p in splits[name]}
    return make_edit_pairs(n, EDIT_SEED, exclude, mode)


def answers_array(problems: Sequence[Problem]) -> np.ndarray:
    """(N, J) intermediate answers."""
    return np.asarray([p.intermediate_answers for p in problems], np.int32)


def exact_match(generated: str, problem: Problem) -> bool:
    """The original's scoring: the generated text equals the gold CoT, spaces deleted."""
    return generated.replace(" ", "").strip("\n") == problem.target.replace(" ", "").strip("\n")
