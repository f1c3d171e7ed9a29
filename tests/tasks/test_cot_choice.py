"""The CoT-choice data: the seeded split, the metric definitions and reference policies
against hand-computed values, the masked variant, CSV round trips and the world rows."""

from __future__ import annotations

import math

import numpy as np
import pytest

from jaxreason.tasks import cot_choice as cc
from jaxreason.tasks.readers import read_cot_choice_csv
from jaxreason.tasks.readers.cot_choice_csv import CotChoiceRow


def make_row(i: int, choice: str, swapped: bool) -> CotChoiceRow:
    return CotChoiceRow(question=f"Q{i}: Sam has {i} pens.", correct_answer=float(i),
                        correct_argument=f"Sam has {i} pens.\nSo {i}.",
                        incorrect_answer=float(i + 1), incorrect_argument=f"Sam has {i + 1}.",
                        choice_answer=choice, choice_argument=f"Candidate {choice[-1]} is right.",
                        swapped=swapped, line=i + 2)


def test_split_is_the_seeded_permutation_in_order():
    for n in (10, 11, 2748):
        test, train = cc.split_indices(n)
        perm = np.random.default_rng(1).permutation(n)
        k = math.ceil(0.1 * n)
        assert list(test) == list(perm[:k]) and list(train) == list(perm[k:])
    test, train = cc.split_indices(2748)
    assert (len(test), len(train)) == (275, 2473)
    val, rest = cc.validation_split(train, 0.1)
    assert list(val) + list(rest) == list(train) and len(val) == 248
    with pytest.raises(ValueError, match="test_fraction"):
        cc.split_indices(10, 1.0)


# 5 rows: choice, swapped. correct slot = 2 if swapped else 1; GPT right iff (choice==1) xor swapped
ROWS = [make_row(0, "candidate_1", False),  # slot 1 correct, GPT right
        make_row(1, "candidate_1", True),   # slot 2 correct, GPT wrong
        make_row(2, "candidate_2", True),   # slot 2 correct, GPT right
        make_row(3, "candidate_2", False),  # slot 1 correct, GPT wrong
        make_row(4, "candidate_1", False)]  # slot 1 correct, GPT right


def test_reference_policies_by_hand():
    ref = cc.reference_policies(ROWS, batch=3)
    # always 2: right on rows 1, 2. GPT right on rows 0, 2, 4; wrong on 1, 3.
    t = ref["always_2"]["true_rate"]
    assert (t["f_c"], t["f_c_oc"], t["f_c_oi"]) == (2 / 5, 1 / 3, 1 / 2)
    assert t["o_c"] == 1.0 and t["o_i"] == 1.0
    # batches [0, 1, 2] and [3, 4]: f_c 2/3 and 0; f_c_oc (rows 0, 2 | row 4) 1/2 and 0;
    # f_c_oi (row 1 | row 3) 1 and 0
    b = ref["always_2"]["batch_mean"]
    assert b["f_c"] == pytest.approx((2 / 3 + 0) / 2)
    assert b["f_c_oc"] == pytest.approx((1 / 2 + 0) / 2)
    assert b["f_c_oi"] == pytest.approx((1 + 0) / 2)
    f = ref["follow_choice"]["true_rate"]
    assert (f["f_c"], f["f_c_oc"], f["f_c_oi"]) == (3 / 5, 1.0, 0.0)


def test_batch_mean_skips_batches_without_the_condition():
    cc_ = np.array([1, 0, 1, 1], bool)
    oc = np.array([1, 1, 1, 0], bool)
    out = cc.batch_mean_metrics(cc_, oc, batch=2)
    assert out["f_c_oi"] == 1.0  # only the second batch has an orig-wrong row
    assert out["f_c_oc"] == pytest.approx((0.5 + 1.0) / 2)


def test_clamped_training_lines_are_joint_rates():
    cc_ = np.array([1, 0], bool)
    oc = np.array([1, 0], bool)
    diff = np.array([0.8, -0.4])
    clamp = cc.clamped_metrics(cc_, oc, diff)
    true = cc.choice_metrics(cc_, oc, diff)
    assert (clamp["f_c_oc"], clamp["f_c_oi"]) == (0.5, 0.0)
    assert clamp["f_c_oc"] + clamp["f_c_oi"] == clamp["f_c"]
    assert (true["f_c_oc"], true["f_c_oi"]) == (1.0, 0.0)
    assert clamp["o_c"] == pytest.approx(0.4) and true["o_c"] == pytest.approx(0.8)
    assert clamp["o_i"] == pytest.approx(0.2) and true["o_i"] == pytest.approx(0.4)


def test_statistics_of_a_small_csv(tmp_path):
    path = cc.write_cot_choice_csv(ROWS * 4, tmp_path / "data.csv")
    rows = read_cot_choice_csv(path, unescape_newlines=True)
    assert rows[0].correct_argument == ROWS[0].correct_argument  # newline round trip
    test, train = cc.split_indices(len(rows))
    stats = cc.dataset_statistics(rows, test, train)
    assert stats["choice_correct"] == 0.6 and stats["swapped"] == 0.4
    want = np.mean([rows[i].choice_was_correct for i in test])
    assert stats["choice_correct_test"] == want and stats["test_rows"] == 2


def test_masking_rule():
    text = "Candidate 1 adds, candidate_2 subtracts; candidate_1 is right, as is candidate1."
    assert cc.mask_choice_argument(text, "candidate_1") == \
        "Candidate _ adds, candidate_2 subtracts; candidate__ is right, as is candidate_."
    assert cc.mask_choice_argument("so candidate 2 is right", "candidate_2") == \
        "so candidate _ is right"
    with pytest.raises(ValueError, match="candidate_3"):
        cc.mask_choice_argument(text, "candidate_3")


def test_world_rows_and_positive_control():
    rows = cc.world_rows(8, seed=3, steps=(1, 2))
    assert rows == cc.world_rows(8, seed=3, steps=(1, 2))
    for r in rows:
        assert r.correct_argument.endswith(f"The answer is {int(r.correct_answer)}.")
        assert r.correct_answer != r.incorrect_answer
        item = cc.positive_control_item(r)
        assert item.slots(arguer=False) == (r.correct_argument,) * 2
        marked = item.slots(arguer=True)[r.correct_slot % 2]  # the incorrect slot
        assert cc.MARKER_TO in marked and cc.MARKER_TO not in r.correct_argument
    with pytest.raises(ValueError, match="split holds"):
        cc.world_rows(10_000)
