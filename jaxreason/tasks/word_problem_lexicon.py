"""The closed lexicon of the arithmetic word-problem world: people, objects, containers and the
fixed table of facts that some steps recall.

Everything is a tuple (never a set), so every draw from it is a pure function of the seed.
A fact is a quantity a model must remember rather than compute (a dozen is 12, a week has 7
days); a step that uses one is tagged ``rag`` (memory), every other step ``reason``.
"""

from __future__ import annotations

import dataclasses

MAX_VALUE = 99  # every operand, intermediate result and answer lies in 0..MAX_VALUE
# What one sentence gives or takes away: one digit, so a sum or difference with the count is
# one of ~800 (count, change) pairs whose units digit comes from a 10 x 8 table. With changes
# up to 20 (given) and 30 (taken) the 4-layer base model still wrote 54% of its additions and
# 61% of its subtractions wrong after its 1,000-step budget (mostly the units digit: "60 + 3
# = 65"); with one digit, 13% and 19%, and its multiplications stayed right (98-99.6%).
MAX_CHANGE = 9

NAMES = ("Tom", "Anna", "Ben", "Mia", "Sam", "Lily", "Jack", "Emma", "Leo", "Zoe", "Max",
         "Ella", "Noah", "Ava", "Finn", "Ruby")
# results of the incorrect_ood_label demonstrations: names that never occur in a question
OOD_NAMES = ("Dawson", "Cedric", "Hendricks", "Marlow", "Quincy", "Thorne", "Barrett",
             "Wexley")

CONTAINERS = ("boxes", "bags", "jars", "baskets")
OBJECTS = ("marbles", "stickers", "cards", "shells", "coins", "stamps", "beads", "books")
DOZEN_OBJECTS = ("eggs", "cookies", "apples", "pencils", "muffins", "roses")
PAIR_OBJECTS = ("socks", "shoes", "gloves")
ALL_OBJECTS = OBJECTS + DOZEN_OBJECTS + PAIR_OBJECTS

# The opening word(s) of the 1st, 2nd, ... sentence after the first, and of the step that
# uses that sentence's number: "Next Tom gives 4 eggs to Anna." ... "Next Tom has 16 - 4 = 12
# eggs left." The shared word is the key by which the step finds its sentence's number;
# without it a step must count sentences to find it (see word_problems' docstring).
CONNECTIVES = ("Then", "Next", "Later", "After that")

GIVE_VERBS = ("finds", "gets", "wins", "buys")  # "Then Tom finds 5 more marbles."
TAKE_VERBS = ("gives", "sells")  # "Then Tom gives 4 marbles to Anna."


@dataclasses.dataclass(frozen=True)
class UnitFact:
    """A counting unit: ``{g} dozen eggs`` is ``g * 12`` eggs."""

    name: str  # "dozen"
    value: int
    statement: str  # "A dozen is 12"
    phrase: str  # how g units of an object are written: "{g} dozen {obj}"
    objects: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class TimeFact:
    """A span of time in smaller periods: ``{g} weeks`` is ``g * 7`` days."""

    name: str  # "weeks" (always plural: g >= 2)
    value: int
    statement: str  # "A week has 7 days"
    small: str  # "days"
    every: str  # "every day"


@dataclasses.dataclass(frozen=True)
class PartFact:
    """Parts of a thing: ``{g} spiders`` have ``g * 8`` legs."""

    singular: str
    plural: str
    value: int
    part: str  # "legs" or "wheels"
    statement: str  # "A spider has 8 legs"


UNIT_FACTS = (
    UnitFact("dozen", 12, "A dozen is 12", "{g} dozen {obj}", DOZEN_OBJECTS),
    UnitFact("pair", 2, "A pair is 2", "{g} pairs of {obj}", PAIR_OBJECTS),
)
TIME_FACTS = (
    TimeFact("weeks", 7, "A week has 7 days", "days", "every day"),
    TimeFact("years", 12, "A year has 12 months", "months", "every month"),
    TimeFact("fortnights", 14, "A fortnight has 14 days", "days", "every day"),
)
PART_FACTS = (
    PartFact("spider", "spiders", 8, "legs", "A spider has 8 legs"),
    PartFact("dog", "dogs", 4, "legs", "A dog has 4 legs"),
    PartFact("bird", "birds", 2, "legs", "A bird has 2 legs"),
    PartFact("ant", "ants", 6, "legs", "An ant has 6 legs"),
    PartFact("bike", "bikes", 2, "wheels", "A bike has 2 wheels"),
    PartFact("car", "cars", 4, "wheels", "A car has 4 wheels"),
    PartFact("tricycle", "tricycles", 3, "wheels", "A tricycle has 3 wheels"),
)
PART_PLACES = {"legs": "in the garden", "wheels": "in the shop"}

# activities that collect objects at a rate: "Tom saves 5 coins every day for 2 weeks."
RATE_ACTIVITIES = (("saves", "coins"), ("collects", "shells"), ("bakes", "cookies"),
                   ("picks", "apples"), ("finds", "stamps"), ("makes", "beads"))


def fact_table() -> dict[str, int]:
    """Every fact's statement and the number it states (what ``rag`` steps recall)."""
    return {f.statement: f.value for f in UNIT_FACTS + TIME_FACTS + PART_FACTS}
