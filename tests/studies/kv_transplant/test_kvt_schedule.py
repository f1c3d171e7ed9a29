"""The training schedule and training lines: summed steps with the epoch spill-over
(faithful) against averaged steps closed at each epoch's end (fixed), and the clamp bug of the
original's training metrics reproduced in faithful mode only."""

from __future__ import annotations

import numpy as np
import pytest

from jaxreason.studies.kv_transplant.train import step_schedule, subbatches, train_metrics


def test_subbatches_keep_the_order_and_a_short_last_one():
    assert subbatches([5, 3, 9, 1, 7], 2) == [[5, 3], [9, 1], [7]]


def test_faithful_steps_spill_leftovers_into_the_next_epoch():
    # 5 sub-batches an epoch, 2 per step: steps after sub-batch 2 and 4 of every epoch; the
    # fifth joins the next epoch's first step, and the counter restarts each epoch
    plan = step_schedule(5, 2, 4, "faithful")
    assert plan == [[(0, 0), (0, 1)], [(0, 2), (0, 3)], [(0, 4), (1, 0), (1, 1)],
                    [(1, 2), (1, 3)]]


def test_fixed_steps_close_each_epoch():
    plan = step_schedule(5, 2, 4, "fixed")
    assert plan == [[(0, 0), (0, 1)], [(0, 2), (0, 3)], [(0, 4)], [(1, 0), (1, 1)]]


def test_the_original_epoch_of_its_csv():
    # 2,473 rows in sub-batches of 2 -> 1,237 sub-batches: 19 steps, 21 spill over
    n_sub = len(subbatches(range(2473), 2))
    plan = step_schedule(n_sub, 64, 20, "faithful")
    assert n_sub == 1237
    assert all(len(p) == 64 for p in plan[:19]) and len(plan[19]) == 21 + 64
    assert plan[19][0] == (0, 1216) and plan[19][-1] == (1, 63)


@pytest.mark.parametrize("mode", ["faithful", "fixed"])
def test_training_lines_clamp_bug(mode):
    out = {"chosen_correct": np.array([True, False]), "diff": np.array([0.6, -0.2]),
           "nll": np.array([0.1, 2.0])}
    batch = {"weight": np.ones(2), "orig_correct": np.array([True, False])}
    line = train_metrics(out, batch, mode)
    # the original divides by mean(mask).clamp_min(1) == 1: joint rates summing to f_c
    assert (line["orig_f_c"], line["orig_f_c_oc"], line["orig_f_c_oi"]) == (0.5, 0.5, 0.0)
    assert line["orig_o_c"] == pytest.approx(0.3) and line["orig_o_i"] == pytest.approx(0.1)
    if mode == "faithful":
        assert "f_c_oc" not in line
    else:  # true conditional rates beside the original's
        assert (line["f_c_oc"], line["f_c_oi"]) == (1.0, 0.0)
        assert line["o_c"] == pytest.approx(0.6) and line["o_i"] == pytest.approx(0.2)
        assert line["l_c"] == pytest.approx(1.05)
