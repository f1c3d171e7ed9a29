"""A training run killed with SIGKILL and resumed logs exactly the losses of a run that never
stopped, and its metrics.jsonl holds each step once.

The interrupted run is a real ``python -m jaxreason.train`` process, killed as soon as its
step-20 checkpoint is on disk (Orbax renames ``20.orbax-checkpoint-tmp`` to ``20`` only once
it is complete). The schedule is cosine with warmup, so the resumed optimizer must also
continue the schedule's step count, not only the weights.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from jaxreason.data import TokenDataset
from jaxreason.train.__main__ import cli
from jaxreason.train.loop import MetricsLog
from run_logs import losses

RUN = ("--trainer.steps=30", "--checkpoint.save_every=10", "--schedule.kind=cosine",
       "--schedule.warmup_steps=5")


def _kill_after_checkpoint(cmd, run_dir, env, cwd, step=20, timeout=300):
    """Start ``cmd``; SIGKILL it once ``<run_dir>/checkpoints/<step>`` exists.

    Returns True when the kill landed while the process was still running, False when it had
    already finished (then the later checkpoints are deleted, which leaves the directory as a
    kill right after ``step`` would have).
    """
    target = run_dir / "checkpoints" / str(step)
    with open(cwd / "stdout.txt", "w") as out, open(cwd / "stderr.txt", "w") as err:
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=err)
        deadline = time.monotonic() + timeout
        try:
            while not target.is_dir():
                if proc.poll() is not None:
                    break
                if time.monotonic() > deadline:
                    pytest.fail(f"no checkpoint {step} after {timeout}s")
                time.sleep(0.01)
            killed = proc.poll() is None
            if killed:
                os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.wait(timeout=60)
    if not killed:
        assert proc.returncode == 0, (cwd / "stderr.txt").read_text()[-3000:]
        assert target.is_dir(), "the run finished without writing the checkpoint"
        for later in (run_dir / "checkpoints").iterdir():
            if later.name.isdigit() and int(later.name) > step:
                for p in sorted(later.rglob("*"), reverse=True):
                    p.unlink() if p.is_file() else p.rmdir()
                later.rmdir()
    else:
        assert proc.returncode == -signal.SIGKILL
    return killed


def test_killed_and_resumed_run_matches_uninterrupted(tmp_path, train, base_args, python,
                                                      subprocess_env, monkeypatch, record_property):
    """Losses of kill-at-step-20-then-``--resume`` equal the uninterrupted run's (1e-6), the
    resumed process trains only steps 21..30, and no step is logged twice."""
    _, ref_rows = train(tmp_path / "straight", *RUN)
    ref = [r["loss"] for r in ref_rows]
    assert [r["step"] for r in ref_rows] == list(range(1, 31))

    run_dir = tmp_path / "interrupted"
    work = tmp_path / "work"
    work.mkdir()
    cmd = [python, "-m", "jaxreason.train", *base_args, f"--trainer.run_dir={run_dir}", *RUN]
    killed = _kill_after_checkpoint(cmd, run_dir, subprocess_env(), work)
    record_property("killed_mid_run", killed)
    print(f"SIGKILL landed mid-run: {killed}")
    before = MetricsLog.read(run_dir / "metrics.jsonl")
    assert [r["step"] for r in before][:20] == list(range(1, 21))

    steps_run = []
    real_batch = TokenDataset.batch

    def spy(self, step, *args, **kwargs):
        if self.name.endswith("/train"):
            steps_run.append(step)
        return real_batch(self, step, *args, **kwargs)

    monkeypatch.setattr(TokenDataset, "batch", spy)
    assert cli([*base_args, f"--trainer.run_dir={run_dir}", *RUN, "--resume"]) == 0
    assert steps_run == list(range(20, 30))  # batches for steps 21..30 only

    rows = MetricsLog.read(run_dir / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 31))  # no duplicates, no gaps
    assert losses(run_dir) == pytest.approx(ref, abs=1e-6)
    assert [r["lr"] for r in rows] == pytest.approx([r["lr"] for r in ref_rows], abs=1e-9)
    assert sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir()
                  if p.name.isdigit()) == [20, 30]


def test_resuming_a_finished_run_keeps_its_final_metrics(train, tmp_path):
    """``--resume`` on a finished run trains nothing and keeps the final metrics."""
    first, _ = train(tmp_path, "--trainer.steps=2", "--checkpoint.save_every=2")
    again, rows = train(tmp_path, "--trainer.steps=2", "--checkpoint.save_every=2",
                        "--checkpoint.resume=true")
    assert [r["step"] for r in rows] == [1, 2] and again["final_step"] == 2
    saved = json.loads((tmp_path / "final_metrics.json").read_text())
    assert again.get("loss") == saved.get("loss") == first["loss"]
