"""The order of random draws behind the Think-to-Talk problems (Kudo et al.,
github.com/keitokudo/TTT).

A seeded ``random.Random`` gives the original's problems only if every call happens in the
original's order, so this module holds that order and nothing else; ``formulas`` turns the
drawn tuples into problems. Per problem the original draws

1. ``random()``;
2. a ``sample`` of all 26 letters; each formula's variable is ``pop()``-ed from its end;
3. per formula, in definition order: a ``choice`` of the operator, a ``choice`` among the
   template's formats (a one-element choice still consumes randomness) and one ``randint``
   per literal, left to right;
4. ``random()`` and a ``choice`` of the question (one candidate: the last-defined variable).

A draw that breaks the [0, 9] range is redrawn whole. This reproduces the original's splits
exactly (for example 2step's first test problem ``z = 0 + o , o = 4 + 5``).

The 50-shot general pool and the counterfactual edits have a faithful and a fixed draw
(the faithful ones follow the original's distributions; their exact draws are not checked
against the original's output). Every draw here is independent of Python's hash seed (set
orders of small ints are fixed).
"""

from __future__ import annotations

import random

LETTERS = "abcdefghijklmnopqrstuvwxyz"
LOW, HIGH = 0, 9  # every value in a problem, its answers and its CoT

# A drawn formula: (variable, left, op, right); op None is a plain substitution ``v = left``,
# a str operand names an earlier variable.
Drawn = tuple[str, "int | str", "str | None", "int | str | None"]

# Per config: (operators, operand pattern) per formula in definition order; pattern "n" is a
# literal, "v" the variable defined just before; "=" is the substitution operator.
TEMPLATES: dict[str, tuple[tuple[str, str], ...]] = {
    "1step": (("=", "n"), ("+-", "nv")),
    "2step": (("+-", "nn"), ("+-", "nv")),
    "3step": (("+-", "nn"), ("+-", "nv"), ("+-", "nv")),
    "2step_distractor": (("+-", "nn"), ("+-", "nn"), ("+-", "nv")),
}


def _formula(var: str, op: str, args: list) -> Drawn:
    if op == "=":
        return (var, args[0], None, None)
    return (var, args[0], op, args[1])


def draw_template(config: str, rng: random.Random) -> list[Drawn]:
    """One raw draw of ``config`` (not yet range-checked), in the original's order."""
    rng.random()
    letters = rng.sample(LETTERS, len(LETTERS))
    drawn: list[Drawn] = []
    for ops, pattern in TEMPLATES[config]:
        var = letters.pop()
        op = rng.choice(ops)
        rng.choice((pattern,))  # the template offers one format; the draw still happens
        args = [rng.randint(LOW, HIGH) if c == "n" else drawn[-1][0] for c in pattern]
        drawn.append(_formula(var, op, args))
    rng.random()
    rng.choice((len(drawn) - 1,))  # the question: the last-defined variable
    return drawn


# ----------------------------------------------------------------------------- general pool

# Formula kinds of the 3-formula general pool: operand pattern and the original's weights
# (substitution of a number or of a variable, add/sub of two numbers 1/4 each; add/sub with
# a variable 1/8 per operand order).
GENERAL_KINDS = ("n", "v", "nn", "vn", "nv")
GENERAL_WEIGHTS = (2, 2, 2, 1, 1)


def draw_general_faithful(rng: random.Random) -> tuple[list[Drawn], list[int], int] | None:
    """The original's distribution of the general pool: kinds weighted as above, a variable
    operand is always the variable defined just before, the display is shuffled and the
    question asks a random variable. Returns (formulas, display order, question index), or
    None when the first formula asks for a variable (redrawn, like a range violation).

    The original sorted its formats by ``hash`` (run under ``PYTHONHASHSEED=0``); this draw
    follows its distribution, not its exact sequence of calls."""
    rng.random()
    letters = rng.sample(LETTERS, len(LETTERS))
    drawn: list[Drawn] = []
    for _ in range(3):
        var = letters.pop()
        kind = rng.choices(GENERAL_KINDS, weights=GENERAL_WEIGHTS)[0]
        if "v" in kind and not drawn:
            return None
        op = "=" if len(kind) == 1 else rng.choice("+-")
        args = [rng.randint(LOW, HIGH) if c == "n" else drawn[-1][0] for c in kind]
        drawn.append(_formula(var, op, args))
    order = list(range(3))
    rng.shuffle(order)
    return drawn, order, rng.randrange(3)


def draw_general_fixed(rng: random.Random) -> tuple[list[Drawn], list[int], int]:
    """The fixed-mode pool: kinds uniform (variable kinds from the second formula on), a
    variable operand is any earlier variable, the display shuffled, the question the
    last-defined variable (as in every test problem)."""
    names = rng.sample(LETTERS, 3)
    drawn: list[Drawn] = []
    for i, var in enumerate(names):
        kind = rng.choice(["n", "nn"] + (["v", "vn", "nv"] if i else []))
        prev = rng.choice([d[0] for d in drawn]) if i else None
        if len(kind) == 1:
            op, args = "=", [rng.randint(LOW, HIGH) if kind == "n" else prev]
        else:  # left operand, operator, right operand
            first = rng.randint(LOW, HIGH) if kind[0] == "n" else prev
            op = rng.choice("+-")
            args = [first, rng.randint(LOW, HIGH) if kind[1] == "n" else prev]
        drawn.append(_formula(var, op, args))
    order = list(range(3))
    rng.shuffle(order)
    return drawn, order, 2


# ----------------------------------------------------------------------------- edits

def _value(left: int, op: str, right: int) -> int:
    return left + right if op == "+" else left - right


def valid_edit_values(a: int, op0: str, r: int, b: int, op1: str) -> list[int]:
    """The values r' != r for v0 = a op0 r' that keep r', v0 and v1 = b op1 v0 in range."""
    return [x for x in range(LOW, HIGH + 1) if x != r and LOW <= _value(a, op0, x) <= HIGH
            and LOW <= _value(b, op1, _value(a, op0, x)) <= HIGH]


def _clip(lo: int, hi: int) -> tuple[int, int]:
    return max(lo, LOW), min(hi, HIGH)


def faithful_edit_candidates(a: int, r: int, b: int, op1: str) -> list[int]:
    """The original's candidates for v0's second operand in ``v0 = a op0 r``, ``v1 = b op1 v0``.

    The original first bounds v0 by v1's formula (``b + v0`` or ``b - v0`` in range), then
    turns that into a range of operands as if v0's operator were v1's (its bug: for
    ``v0 = a + r`` under ``v1 = b - v0`` it takes ``a - v0``), clips it to [0, 9] and gives up
    when fewer than two values remain, even if one of them differs from ``r``. The
    candidates are that range minus ``r``, in the iteration order of a Python set built from
    the range with ``r`` then removed (the original chooses from ``list`` of such a set; a
    set of small ints iterates in a fixed order, independent of the hash seed). The edited
    problem is range-checked afterwards, so a candidate that breaks v0 is rejected there."""
    if op1 == "+":
        v_lo, v_hi = _clip(LOW - b, HIGH - b)
        lo, hi = _clip(v_lo - a, v_hi - a)
    else:
        v_lo, v_hi = _clip(b - HIGH, b - LOW)
        lo, hi = _clip(a - v_hi, a - v_lo)
    if lo >= hi:
        return []
    values = set(range(lo, hi + 1))
    values.discard(r)
    return list(values)


def draw_edit_value(a: int, op0: str, r: int, b: int, op1: str, rng: random.Random,
                    faithful: bool) -> int | None:
    """v0's new second operand (None when there is no candidate): faithful, a choice among
    the original's candidates; fixed, uniform over the valid values."""
    cands = (faithful_edit_candidates(a, r, b, op1) if faithful
             else valid_edit_values(a, op0, r, b, op1))
    return rng.choice(cands) if cands else None
