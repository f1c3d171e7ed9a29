"""``--resume`` falls back to the newest checkpoint that restores.

One real run saves checkpoints 2, 4 and 6; each test copies it and damages checkpoint 6 with
plain file operations (the kinds a full disk, a killed copy or a careless cleanup leave).
The resumed run must skip step 6 with exactly one line saying so and why, restore step 4,
and then train steps 5.. with the same losses as the undamaged run (batches and dropout are
functions of the step, so the losses are an independent check of what was restored).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from jaxreason.train.checkpoint import CheckpointUnusable

RUN = ("--trainer.steps=6", "--checkpoint.save_every=2", "--checkpoint.keep_last=3")
LONGER = ("--trainer.steps=8", "--checkpoint.save_every=2", "--checkpoint.keep_last=3")


def _largest(directory: Path) -> Path:
    return max((p for p in directory.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def _ocdbt_data(state: Path) -> Path:
    return _largest(state / "ocdbt.process_0" / "d")


DAMAGE = {
    "manifest deleted": lambda s: [p.unlink() for p in s.rglob("manifest.ocdbt")],
    "data file deleted": lambda s: _ocdbt_data(s).unlink(),
    "data file truncated": lambda s: _ocdbt_data(s).write_bytes(_ocdbt_data(s).read_bytes()[:999]),
    "_METADATA deleted": lambda s: (s / "_METADATA").unlink(),
    "state/ removed": lambda s: shutil.rmtree(s),
}


@pytest.fixture(scope="module")
def reference(train, tmp_path_factory):
    """The undamaged 6-step run, and an 8-step run for the losses of steps 7 and 8."""
    run_dir = tmp_path_factory.mktemp("saved")
    train(run_dir, *RUN)
    _, long_rows = train(tmp_path_factory.mktemp("long"), *LONGER)
    return run_dir, {r["step"]: r["loss"] for r in long_rows}


def _copy(run_dir: Path, tmp_path: Path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(run_dir, target)
    return target


def _resumed_from(err: str) -> int:
    line = next(x for x in err.splitlines() if "resuming from checkpoint step" in x)
    return int(line.split("checkpoint step ")[1].split()[0])


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_damaged_latest_checkpoint_falls_back_to_previous(kind, reference, train, tmp_path,
                                                          capfd):
    saved, losses = reference
    run_dir = _copy(saved, tmp_path)
    DAMAGE[kind](run_dir / "checkpoints" / "6" / "state")
    capfd.readouterr()
    result, rows = train(run_dir, *LONGER, "--checkpoint.resume=true")
    err = capfd.readouterr().err
    skipped = [x for x in err.splitlines() if "skipping checkpoint" in x]
    assert len(skipped) == 1 and "step 6" in skipped[0] and "does not restore (" in skipped[0]
    assert len(skipped[0]) < 400 and "Traceback" not in err
    assert _resumed_from(err) == 4
    assert [r["step"] for r in rows] == list(range(1, 9))
    for r in rows[4:]:  # steps 5..8 retrained from the step-4 state
        assert r["loss"] == pytest.approx(losses[r["step"]], abs=1e-6), r["step"]
    assert result["final_step"] == 8


def test_deleted_sharding_file_still_restores_latest(reference, train, tmp_path, capfd):
    """``_sharding`` only records the saved layout; the target's own shardings are used, so
    the checkpoint is intact and step 6 is restored (nothing skipped)."""
    saved, losses = reference
    run_dir = _copy(saved, tmp_path)
    (run_dir / "checkpoints" / "6" / "state" / "_sharding").unlink()
    capfd.readouterr()
    _, rows = train(run_dir, *LONGER, "--checkpoint.resume=true")
    err = capfd.readouterr().err
    assert "skipping" not in err and _resumed_from(err) == 6
    assert [r["loss"] for r in rows[6:]] == pytest.approx([losses[7], losses[8]], abs=1e-6)


def test_no_checkpoint_restores_is_one_clear_error(reference, train, tmp_path, capfd):
    saved, _ = reference
    run_dir = _copy(saved, tmp_path)
    for step in (2, 4, 6):
        (run_dir / "checkpoints" / str(step) / "state" / "_METADATA").unlink()
    before = (run_dir / "metrics.jsonl").read_text()
    with pytest.raises(CheckpointUnusable, match=r"none of the checkpoints in .* restores: "
                                                 r"step 6: .*; step 4: .*; step 2: "):
        train(run_dir, *LONGER, "--checkpoint.resume=true")
    assert len([x for x in capfd.readouterr().err.splitlines() if "skipping" in x]) == 3
    assert (run_dir / "metrics.jsonl").read_text() == before  # nothing rewritten
