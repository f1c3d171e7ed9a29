"""Planning-token data: memory/reason step records, the serialized template, the loss mask and
the answer extractors of "Disentangling Memory and Reasoning Ability in Large Language Models"
(Jin et al., ACL 2025; code ``MingyuJ666/Disentangling-Memory-and-Reasoning``).

**Records.** A record is a question, a gold answer and its chain of thought as steps, each
with a type: ``memory`` (the step recalls knowledge: tagged ``[rag]``), ``reason`` or the
fallback ``assignment``. Types and texts come from the tags through
:class:`~jaxreason.tasks.readers.PlanningRecord` (positional label alignment in faithful mode,
the step's own tag in fixed mode); ``labels=False`` makes every step ``assignment`` (the
baseline without memory/reason labels). A record without steps is dropped for StrategyQA and
the world, and gets one empty step for CommonsenseQA and TruthfulQA, as the original does.

**Token groups.** ``n_prefix`` tokens ``<prefix_i>`` and ``n_special`` tokens for each of
``answer``, ``assignment``, ``reason`` and ``memory`` (``<memory_0>`` ...), in the original's
``prompt_text.json`` order. A group's text is its token names each preceded by a space.

**Template.** The target is, for each step, the prefix group, the step's type group, a space,
the step text and a newline; then the prefix group, the answer group and
``" The answer is: " + answer + "\\n"``. The training prompt is ``"Question: " + q + "\\n "``;
the test prompt adds the prefix group, so the model writes the first step's type itself.
The sequence is right-truncated to ``max_length`` and EOS is appended after the cut (so the
answer can be cut off, as in the original).

* faithful: the strings are concatenated and tokenized as one text, as the original does;
  the spaces around the added tokens then depend on the tokenizer.
* fixed: the ids are built piece by piece: ``tok("Question: " + q + "\\n")``, then per step
  the prefix ids, the type ids and ``tok(" " + text + "\\n")``, then ``tok(" The answer is: "
  + answer + "\\n")``. ``spacers`` puts the id of ``" "`` before every planning token (the
  layout a fast tokenizer gives the faithful text).

**Loss mask.** ``loss_mask[t] = 1`` marks token t as a target. The original sets the labels
of the first ``source_len - 1`` positions to -100, so the prompt's last token is a target
(faithful); fixed masks all ``source_len`` prompt tokens. ``source_len`` counts BOS.

**Answers.** StrategyQA and the world: the first ``The answer is: (number|true|false)``
(case-insensitive, commas dropped), compared to the gold case-sensitively in faithful mode
(a generated ``true`` is wrong against ``True``) and case-insensitively in fixed mode.
CommonsenseQA (A-E) and TruthfulQA (A-N), faithful: the last piece after ``The answer is:``,
upper-cased, its first letter in range; without that string the last letter in range anywhere
in the text (the question's options included when the full sequence is scored). Fixed: the
first stand-alone capital letter in range after the last ``The answer is:``, and no fallback.
"""

from __future__ import annotations

import dataclasses
import random
import re
from typing import Callable, Iterable, Literal, Sequence

from jaxreason.tasks.readers.planning_json import ASSIGNMENT, PlanningRecord

Mode = Literal["faithful", "fixed"]
DATASETS = ("strategyqa", "commonsenseqa", "truthfulqa", "world")
#: the keys of the token groups, in the original's prompt_text order
GROUP_KEYS = ("prefix", "answer", "assignment", "reason", "memory")
STEP_TYPES = ("memory", "reason", ASSIGNMENT)
INVALID = "[invalid]"
ANSWER_LEAD = " The answer is: "
_LETTERS = {"commonsenseqa": "ABCDE", "truthfulqa": "ABCDEFGHIJKLMN"}
_NUMBER_RE = re.compile(r"The answer is: (-?[0-9.,]+|true|false)", re.IGNORECASE)


def _check(value, allowed, what: str):
    if value not in allowed:
        raise ValueError(f"{what}={value!r} is not allowed; choose one of {list(allowed)}")


# ----------------------------------------------------------------------------- records

@dataclasses.dataclass(frozen=True)
class PlanningExample:
    """One question with its typed steps (types: memory / reason / assignment)."""

    question: str
    answer: str
    step_types: tuple[str, ...]
    step_texts: tuple[str, ...]


def records_from_rows(rows: Iterable[dict], source: str = "<rows>") -> list[PlanningRecord]:
    """:class:`PlanningRecord` objects from dicts with the JSON file's fields (e.g. the world's
    ``planning_records``)."""
    return [PlanningRecord(r["question"], str(r["answer"]), tuple(r["cot_steps"]), r["split"],
                           i + 1, source) for i, r in enumerate(rows)]


def make_examples(records: Sequence[PlanningRecord], dataset: str, mode: Mode,
                  labels: bool = True) -> list[PlanningExample]:
    """Examples from records: types and texts read as ``mode`` says, every type
    ``assignment`` without ``labels``, and records without steps handled per dataset."""
    _check(dataset, DATASETS, "dataset")
    _check(mode, ("faithful", "fixed"), "mode")
    out = []
    for r in records:
        if not r.cot_steps:
            if dataset in ("strategyqa", "world"):
                continue
            out.append(PlanningExample(r.question, r.answer, (ASSIGNMENT,), ("",)))
            continue
        types = r.step_types(mode) if labels else (ASSIGNMENT,) * len(r.cot_steps)
        out.append(PlanningExample(r.question, r.answer, tuple(types), r.step_texts(mode)))
    return out


def draw_with_replacement(n: int, k: int, seed: int = 42) -> list[int]:
    """``k`` indices into ``n`` records drawn with replacement as the original draws its test
    subsets (Python's ``random`` seeded with ``seed``, then ``random.choices``)."""
    if n <= 0 or k <= 0:
        raise ValueError(f"need n > 0 and k > 0 records to draw, got n={n}, k={k}")
    return random.Random(seed).choices(range(n), k=k)


# ----------------------------------------------------------------------------- token groups

@dataclasses.dataclass(frozen=True)
class TokenGroups:
    """The planning-token names: ``n_prefix`` prefix tokens, ``n_special`` per other key."""

    n_prefix: int = 2
    n_special: int = 4

    def __post_init__(self):
        for name in ("n_prefix", "n_special"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}={v!r} must be a positive int")

    def names(self, key: str) -> tuple[str, ...]:
        _check(key, GROUP_KEYS, "token group")
        n = self.n_prefix if key == "prefix" else self.n_special
        return tuple(f"<{key}_{i}>" for i in range(n))

    def all_names(self) -> tuple[str, ...]:
        """Every token name, group after group in :data:`GROUP_KEYS` order."""
        return tuple(n for key in GROUP_KEYS for n in self.names(key))

    @property
    def count(self) -> int:
        return self.n_prefix + (len(GROUP_KEYS) - 1) * self.n_special

    def text(self, key: str) -> str:
        """The group as the original writes it: ``" <key_0> <key_1> ..."``."""
        return "".join(" " + n for n in self.names(key))

    def prompt_text(self) -> dict[str, str]:
        """What the original saves as ``prompt_text.json``: key -> the group's text."""
        return {key: self.text(key) for key in GROUP_KEYS}


# ----------------------------------------------------------------------------- template

def target_text(ex: PlanningExample, groups: TokenGroups) -> str:
    pfx = groups.text("prefix")
    steps = "".join(pfx + groups.text(t) + " " + s + "\n"
                    for t, s in zip(ex.step_types, ex.step_texts))
    return steps + pfx + groups.text("answer") + ANSWER_LEAD + ex.answer + "\n"


def train_prompt_text(question: str) -> str:
    return "Question: " + question + "\n "


def test_prompt_text(question: str, groups: TokenGroups) -> str:
    return train_prompt_text(question) + groups.text("prefix")


def plain_target_text(ex: PlanningExample) -> str:
    """The chain of thought without planning tokens (the LoRA baseline)."""
    return "".join(" " + s + "\n" for s in ex.step_texts) + ANSWER_LEAD + ex.answer + "\n"


@dataclasses.dataclass(frozen=True)
class Encoded:
    """Token ids of one training sequence (EOS last) and its prompt length (BOS counted)."""

    ids: tuple[int, ...]
    source_len: int


class Template:
    """Token ids of the training sequences and test prompts.

    Args:
      encode: text -> ids without special tokens (``tok.encode(t, add_special_tokens=False)``).
      group_ids: key -> the planning-token ids of that group (model ids).
      bos_id, eos_id: BOS prepended to every sequence (None: none), EOS appended.
      mode: faithful (tokenize the concatenated text) or fixed (ids piece by piece).
      planning: False gives the chain of thought without any planning token.
      spacers: fixed mode only; the id of ``" "`` before every planning token.
      space_id: that id (needed with ``spacers``).
    """

    def __init__(self, encode: Callable[[str], Sequence[int]], groups: TokenGroups,
                 group_ids: dict[str, Sequence[int]] | None, bos_id: int | None, eos_id: int,
                 mode: Mode, max_length: int, planning: bool = True, spacers: bool = False,
                 space_id: int | None = None):
        _check(mode, ("faithful", "fixed"), "mode")
        if max_length < 2:
            raise ValueError(f"max_length={max_length} must be at least 2")
        if planning and group_ids is None:
            raise ValueError("planning=True needs the planning-token ids (group_ids)")
        if spacers and (mode != "fixed" or space_id is None):
            raise ValueError("spacers apply to fixed mode only and need space_id")
        self.encode, self.groups, self.mode, self.max_length = encode, groups, mode, max_length
        self.bos = [] if bos_id is None else [int(bos_id)]
        self.eos, self.planning = int(eos_id), planning
        self.group_ids = {}
        for key in GROUP_KEYS if planning else ():
            ids = [int(t) for t in group_ids[key]]
            if spacers:
                ids = [t for i in ids for t in (int(space_id), i)]
            self.group_ids[key] = ids

    def _text_ids(self, text: str) -> list[int]:
        return self.bos + [int(t) for t in self.encode(text)]

    def _fixed_prompt(self, question: str) -> list[int]:
        return self._text_ids("Question: " + question + "\n")

    def _fixed_target(self, ex: PlanningExample) -> list[int]:
        out: list[int] = []
        for t, s in zip(ex.step_types, ex.step_texts):
            if self.planning:
                out += self.group_ids["prefix"] + self.group_ids[t]
            out += list(self.encode(" " + s + "\n"))
        if self.planning:
            out += self.group_ids["prefix"] + self.group_ids["answer"]
        return out + list(self.encode(ANSWER_LEAD + ex.answer + "\n"))

    def training(self, ex: PlanningExample) -> Encoded:
        """The training sequence: prompt + target, right-truncated, EOS appended."""
        _check_types(ex)
        if self.mode == "faithful":
            source = self._text_ids(train_prompt_text(ex.question))
            target = (target_text(ex, self.groups) if self.planning
                      else plain_target_text(ex))
            ids = self._text_ids(train_prompt_text(ex.question) + target)
        else:
            source = self._fixed_prompt(ex.question)
            ids = source + self._fixed_target(ex)
        ids = ids[:self.max_length] + [self.eos]
        return Encoded(tuple(ids), min(len(source), self.max_length))

    def test_prompt(self, question: str) -> list[int]:
        """The prompt generation continues: the training prompt (+ the prefix group)."""
        if self.mode == "faithful":
            text = (test_prompt_text(question, self.groups) if self.planning
                    else train_prompt_text(question))
            return self._text_ids(text)
        return self._fixed_prompt(question) + (self.group_ids["prefix"] if self.planning else [])


def _check_types(ex: PlanningExample) -> None:
    bad = [t for t in ex.step_types if t not in STEP_TYPES]
    if bad or len(ex.step_types) != len(ex.step_texts):
        raise ValueError(f"example {ex.question[:60]!r}: step types {list(ex.step_types)} must be "
                         f"one of {list(STEP_TYPES)} per step ({len(ex.step_texts)} steps)")


def loss_mask(length: int, source_len: int, mode: Mode) -> list[int]:
    """1 where token t is a target: from ``source_len - 1`` (faithful) or ``source_len``."""
    _check(mode, ("faithful", "fixed"), "mode")
    start = source_len - 1 if mode == "faithful" else source_len
    return [int(t >= start) for t in range(length)]


# ----------------------------------------------------------------------------- answers

def extract_answer(text: str, dataset: str, mode: Mode) -> str:
    """The predicted answer in ``text`` (see the module docstring), or ``[invalid]``."""
    _check(dataset, DATASETS, "dataset")
    _check(mode, ("faithful", "fixed"), "mode")
    if dataset in ("strategyqa", "world"):
        m = _NUMBER_RE.search(text)
        return m.group(1).replace(",", "") if m else INVALID
    letters = _LETTERS[dataset]
    pieces = text.split("The answer is:")
    if mode == "faithful":
        if len(pieces) > 1:
            hits = [c for c in pieces[-1].upper() if c in letters]
            return hits[0] if hits else INVALID
        hits = [c for c in text if c in letters]
        return hits[-1] if hits else INVALID
    if len(pieces) == 1:
        return INVALID
    m = re.search(rf"(?<![A-Za-z])([{letters}])(?![A-Za-z])", pieces[-1])
    return m.group(1) if m else INVALID


def gold_answer(answer: str, dataset: str, mode: Mode) -> str:
    """The gold answer read back from the target's last line with the same extractor; an
    answer the extractor cannot read is an error (the original asserts it)."""
    gold = extract_answer(ANSWER_LEAD.lstrip() + answer + "\n", dataset, mode)
    if gold == INVALID:
        kind = {"strategyqa": "True/False", "world": "a number"}.get(dataset, "a letter")
        raise ValueError(f"gold answer {answer!r} cannot be read by the {dataset} extractor; "
                         f"expected {kind}")
    return gold


def is_correct(text: str, gold: str, dataset: str, mode: Mode) -> bool:
    pred = extract_answer(text, dataset, mode)
    if pred == INVALID:
        return False
    if dataset == "strategyqa" and mode == "fixed":
        return pred.lower() == gold.lower()
    return pred == gold
