"""Callbacks of ``jaxreason.train.loop.main``: when they run, what they see, where their
metrics go, and that a resumed run does not repeat them.

The copy task with 40 rows and batches of 16 makes an epoch 2.5 steps long, so epochs end
after steps 3, 5, 8 and 10 (the step that reads row 40k-1 ends epoch k).
"""

from __future__ import annotations

import shutil

import pytest

from jaxreason.train.callbacks import Callback

SMALL = ("--data.task_args={rows: 40, length: 8, symbols: 16}", "--data.eval_fraction=0",
         "--trainer.log_every=100")


def _recorder(calls: list, metric: str | None = None):
    def fn(info):
        calls.append({"step": info.step, "epoch": info.epoch, "run_dir": info.run_dir,
                      "has_params": info.params is not None, "mesh": info.mesh,
                      "loss_in_row": "loss" in info.metrics})
        return {metric: 10.0 * info.step} if metric else None
    return fn


@pytest.fixture(scope="module")
def ten_steps(train, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("callbacks")
    every3, epochs = [], []
    result, rows = train(run_dir, *SMALL, "--trainer.steps=10",
                         callbacks=[Callback(_recorder(every3, "cb_every3"), every=3),
                                    Callback(_recorder(epochs), epoch_end=True)])
    return run_dir, every3, epochs, result, rows


def test_every_n_and_epoch_end_run_at_the_right_steps(ten_steps):
    run_dir, every3, epochs, _, _ = ten_steps
    assert [c["step"] for c in every3] == [3, 6, 9]
    assert [(c["step"], c["epoch"]) for c in epochs] == [(3, 1), (5, 2), (8, 3), (10, 4)]
    for c in every3 + epochs:
        assert c["run_dir"] == run_dir.resolve() and c["has_params"] and c["mesh"] is None
        assert c["loss_in_row"]  # the train metrics of the step are in the row already


def test_callback_metrics_land_in_metrics_jsonl(ten_steps):
    """Rows are written at the first and last step and wherever a callback ran; the every-3
    callback's value is in exactly its rows, and in the final metrics when it ran last."""
    _, _, _, result, rows = ten_steps
    assert [r["step"] for r in rows] == [1, 3, 5, 6, 8, 9, 10]
    assert {r["step"]: r["cb_every3"] for r in rows if "cb_every3" in r} == {
        3: 30.0, 6: 60.0, 9: 90.0}
    assert "cb_every3" not in result and result["final_step"] == 10


def test_resume_does_not_rerun_callbacks_for_steps_done(train, tmp_path):
    """Checkpoints at 3 and 6; with the step-6 one removed (as if killed before it), the
    resumed run restores step 3 and calls the every-2 callback at 4 and 6 only; the log holds
    each callback row once."""
    run = (*SMALL, "--trainer.steps=6", "--checkpoint.save_every=3")
    first, again = [], []
    train(tmp_path, *run, callbacks=[Callback(_recorder(first, "cb"), every=2)])
    assert [c["step"] for c in first] == [2, 4, 6]
    shutil.rmtree(tmp_path / "checkpoints" / "6")
    _, rows = train(tmp_path, *run, "--checkpoint.resume=true",
                    callbacks=[Callback(_recorder(again, "cb"), every=2)])
    assert [c["step"] for c in again] == [4, 6]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 6]
    assert [r["step"] for r in rows if "cb" in r] == [2, 4, 6]


def test_a_callback_that_never_runs_is_refused():
    with pytest.raises(ValueError, match="never runs"):
        Callback(lambda info: None)
    with pytest.raises(ValueError, match="every=-1"):
        Callback(lambda info: None, every=-1)
