"""The planning-token template, loss mask, extractors and test-subset draw, on tiny data."""

from __future__ import annotations

import random

import pytest

from jaxreason.tasks import planning as pl
from jaxreason.tasks.readers.planning_json import PlanningRecord

GROUPS = pl.TokenGroups(n_prefix=2, n_special=2)
NAMES = GROUPS.all_names()
# a toy word-level "tokenizer": every whitespace-separated word and every newline is one id;
# planning-token names are found first, as an added token would be
VOCAB: dict[str, int] = {}


def toy_encode(text: str) -> list[int]:
    out = []
    for line_i, line in enumerate(text.split("\n")):
        if line_i:
            out.append(VOCAB.setdefault("\n", len(VOCAB) + 10))
        for word in line.split(" "):
            if word:
                out.append(VOCAB.setdefault(word, len(VOCAB) + 10))
    return out


def ids(text: str) -> list[int]:
    return toy_encode(text)


GROUP_IDS = {key: tuple(ids(GROUPS.text(key))) for key in pl.GROUP_KEYS}
EX = pl.PlanningExample("Is it wet?", "True", ("memory", "reason"),
                        ("Water is wet.", "So yes."))


def test_groups_and_prompt_text():
    assert NAMES[:4] == ("<prefix_0>", "<prefix_1>", "<answer_0>", "<answer_1>")
    assert GROUPS.count == 2 + 4 * 2 == len(NAMES)
    assert GROUPS.prompt_text()["memory"] == " <memory_0> <memory_1>"


def test_faithful_template_is_the_concatenated_text():
    t = pl.Template(toy_encode, GROUPS, GROUP_IDS, bos_id=1, eos_id=2, mode="faithful",
                    max_length=100)
    enc = t.training(EX)
    text = ("Question: Is it wet?\n  <prefix_0> <prefix_1> <memory_0> <memory_1> Water is wet.\n"
            " <prefix_0> <prefix_1> <reason_0> <reason_1> So yes.\n"
            " <prefix_0> <prefix_1> <answer_0> <answer_1> The answer is: True\n")
    assert list(enc.ids) == [1] + ids(text) + [2]
    assert enc.source_len == 1 + len(ids("Question: Is it wet?\n "))
    assert t.test_prompt(EX.question) == [1] + ids("Question: Is it wet?\n  <prefix_0> <prefix_1>")


def test_fixed_template_token_for_token():
    t = pl.Template(toy_encode, GROUPS, GROUP_IDS, bos_id=1, eos_id=2, mode="fixed",
                    max_length=100)
    P, M, R, A = (list(GROUP_IDS[k]) for k in ("prefix", "memory", "reason", "answer"))
    want = ([1] + ids("Question: Is it wet?\n") + P + M + ids(" Water is wet.\n") + P + R
            + ids(" So yes.\n") + P + A + ids(" The answer is: True\n") + [2])
    enc = t.training(EX)
    assert list(enc.ids) == want
    assert enc.source_len == 1 + len(ids("Question: Is it wet?\n"))
    assert t.test_prompt(EX.question) == [1] + ids("Question: Is it wet?\n") + P
    spaced = pl.Template(toy_encode, GROUPS, GROUP_IDS, 1, 2, "fixed", 100, spacers=True,
                         space_id=99)
    assert spaced.test_prompt(EX.question)[-4:] == [99, P[0], 99, P[1]]
    plain = pl.Template(toy_encode, GROUPS, None, 1, 2, "fixed", 100, planning=False)
    assert list(plain.training(EX).ids) == ([1] + ids("Question: Is it wet?\n")
                                            + ids(" Water is wet.\n") + ids(" So yes.\n")
                                            + ids(" The answer is: True\n") + [2])


def test_truncation_then_eos_and_loss_mask():
    t = pl.Template(toy_encode, GROUPS, GROUP_IDS, 1, 2, "fixed", max_length=12)
    enc = t.training(EX)
    full = pl.Template(toy_encode, GROUPS, GROUP_IDS, 1, 2, "fixed", 100).training(EX)
    assert list(enc.ids) == list(full.ids[:12]) + [2]  # the answer is cut, EOS still last
    assert pl.loss_mask(6, 3, "faithful") == [0, 0, 1, 1, 1, 1]  # the prompt's last token counts
    assert pl.loss_mask(6, 3, "fixed") == [0, 0, 0, 1, 1, 1]


def test_examples_fallbacks_and_labels():
    recs = [PlanningRecord("q1", "True", ("[rag]: a", "[reasoning]: b", "c"), "test", 1, "f"),
            PlanningRecord("q2", "B", (), "test", 2, "f")]
    faithful = pl.make_examples(recs, "commonsenseqa", "faithful")
    # faithful: [reasoning] is not a usable tag, so the labels shift; c gets assignment
    assert faithful[0].step_types == ("memory", "assignment", "assignment")
    assert faithful[1].step_texts == ("",)  # CSQA keeps an empty record with one empty step
    assert pl.make_examples(recs, "commonsenseqa", "fixed")[0].step_types == (
        "memory", "reason", "assignment")
    assert len(pl.make_examples(recs, "strategyqa", "fixed")) == 1  # StrategyQA drops it
    assert pl.make_examples(recs, "strategyqa", "fixed", labels=False)[0].step_types == (
        "assignment",) * 3


@pytest.mark.parametrize("dataset,mode,text,want", [
    ("strategyqa", "faithful", "x The answer is: true\n", "true"),
    ("strategyqa", "faithful", "The answer is: 1,234 and The answer is: False", "1234"),
    ("strategyqa", "faithful", "the answer is true", pl.INVALID),
    ("world", "fixed", "... The answer is: 45\n</s>", "45"),
    ("commonsenseqa", "faithful", "Options: A.x B.y The answer is: the best is C", "E"),
    ("commonsenseqa", "fixed", "Options: A.x B.y The answer is: the best is C", "C"),
    ("commonsenseqa", "faithful", "Options: A.x B.y so I pick b", "B"),
    ("commonsenseqa", "fixed", "Options: A.x B.y so I pick b", pl.INVALID),
    ("truthfulqa", "faithful", "The answer is: (m)", "M"),
    ("truthfulqa", "fixed", "The answer is: (M)", "M"),
    ("truthfulqa", "faithful", "The answer is: Z", pl.INVALID),
])
def test_extractors_on_tricky_strings(dataset, mode, text, want):
    assert pl.extract_answer(text, dataset, mode) == want


def test_strategyqa_case_and_gold():
    assert not pl.is_correct("The answer is: true", "True", "strategyqa", "faithful")
    assert pl.is_correct("The answer is: true", "True", "strategyqa", "fixed")
    assert pl.gold_answer("True", "strategyqa", "faithful") == "True"
    with pytest.raises(ValueError, match="cannot be read"):
        pl.gold_answer("maybe", "strategyqa", "faithful")


def test_draw_with_replacement_reproduces_the_original():
    draw = pl.draw_with_replacement(1221, 1200, seed=42)
    # the original's released CommonsenseQA outputs hold 781 unique questions of 1200 draws
    assert len(set(draw)) == 781
    rng = random.Random(42)  # random.choices is floor(random() * n) per draw
    assert draw[:50] == [int(rng.random() * 1221) for _ in range(50)]
