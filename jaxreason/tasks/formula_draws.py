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

The counterfactual edits and the 50-shot general pool have a faithful and a fixed draw.
Faithful edits are the original's: its candidate range (bounded through v1's operator, its
bug) in its set order, giving its 2,000 edit pairs (operator mix ++/+-/-+/-- 505/304/315/876).
The faithful general pool follows the original's draws, including the order its formats
take when sorted by ``hash`` under PYTHONHASHSEED=0 (fixed here per string-hash algorithm,
so the draw itself does not depend on this process's hash seed). Fixed edits are uniform
over the valid values; fixed draws do not depend on the hash seed either (set orders of
small ints are fixed).
"""

from __future__ import annotations

import itertools
import random
import sys

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

# The original's general pool is 32 templates drawn uniformly: the first formula is a
# substitution of a number ("n") or an add/sub of two numbers ("nn"); each later one is one
# of "n", a substitution of the variable defined just before ("v"), "nn", or an add/sub of
# that variable and a number ("vn", shown in either operand order). Templates in the
# original's order (first formula outermost).
GENERAL_TEMPLATES = tuple(itertools.product(("n", "nn"), ("n", "v", "nn", "vn"),
                                            ("n", "v", "nn", "vn")))

# The original offers the two operand orders of "vn" as a list sorted by ``hash``; the
# hashes of ``(i, "num")`` and ``("num", i)`` (i: the index of the previous variable) depend
# on Python's string hash, which the original fixes with PYTHONHASHSEED=0 and which still
# differs between CPython's algorithms. Per ``sys.hash_info.algorithm``, per formula index,
# the orders that sorting gives under PYTHONHASHSEED=0 ("vn": variable first).
VN_ORDERS_UNDER_HASHSEED_0 = {
    "siphash13": {1: ("vn", "nv"), 2: ("nv", "vn")},  # CPython 3.11 and later
    "siphash24": {1: ("nv", "vn"), 2: ("nv", "vn")},  # CPython 3.8 to 3.10
}


def vn_orders(algorithm: str | None = None) -> dict[int, tuple[str, str]]:
    """The operand orders the original's sort gives under PYTHONHASHSEED=0 on an interpreter
    whose string hash is ``algorithm`` (default: this one's; an unknown algorithm falls back
    to SipHash-1-3, CPython's current default)."""
    algorithm = algorithm or sys.hash_info.algorithm
    return VN_ORDERS_UNDER_HASHSEED_0.get(algorithm, VN_ORDERS_UNDER_HASHSEED_0["siphash13"])


def draw_general_faithful(rng: random.Random) -> tuple[list[Drawn], list[int], int]:
    """One raw general-pool draw in the original's order: ``choices`` of the template (32
    weights of 1.0), a ``sample`` of the 26 letters (popped from the end), per formula a
    ``choice`` of the operator (add/sub only), a ``choice`` among its formats (the two
    operand orders of "vn", otherwise one) and a ``randint`` per literal; then the question:
    a weighted ``choices`` of its one operator and a ``choice`` of any of the three
    variables; then the display: a ``sample`` of range(3) that gives each formula its
    display slot. Returns (formulas, display order, question index).

    This is the original's pool under PYTHONHASHSEED=0 on the same kind of interpreter (see
    ``vn_orders``), whatever this process's hash seed is."""
    kinds = rng.choices(GENERAL_TEMPLATES, weights=[1.0] * len(GENERAL_TEMPLATES))[0]
    letters = rng.sample(LETTERS, len(LETTERS))
    orders = vn_orders()
    drawn: list[Drawn] = []
    for i, kind in enumerate(kinds):
        var = letters.pop()
        op = rng.choice("+-") if len(kind) == 2 else "="
        pattern = rng.choice(orders[i]) if kind == "vn" else rng.choice((kind,))
        args = [rng.randint(LOW, HIGH) if c == "n" else drawn[-1][0] for c in pattern]
        drawn.append(_formula(var, op, args))
    rng.choices(("check",), weights=[1.0])  # the question's operator: one, still drawn
    question = rng.choice(range(len(drawn)))
    slots = rng.sample(range(len(drawn)), len(drawn))
    return drawn, sorted(range(len(drawn)), key=slots.__getitem__), question


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
