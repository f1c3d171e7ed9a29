"""Shared helpers for the training-engine tests.

* ``train(run_dir, *overrides, callbacks=())``: one in-process ``main`` run of a tiny
  copy-task config (``BASE`` + overrides), returning the result dict and the metrics.jsonl
  rows.
* ``base_args``, ``subprocess_env(**extra)``, ``python``: the same job for subprocesses.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# A tiny, fast copy-task job; tests add or override keys (later overrides win).
BASE = (
    "--model.preset=gpt2-tiny",
    "--data.task_args={rows: 512, length: 8, symbols: 16}",
    "--data.batch_size=16",
    "--data.eval_batches=1",
    "--optimizer.lr=3e-3",
    "--trainer.log_every=1",
    "--trainer.eval_every=1000",
    "--trainer.progress=false",
    "--trainer.plot=false",
)


def python_env(**extra) -> dict:
    """os.environ with the repo importable (and ``extra`` set); for subprocesses."""
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def config_for(run_dir, *overrides):
    from jaxreason.train.config import load_train_config

    return load_train_config(None, [*BASE, f"--trainer.run_dir={run_dir}", *overrides])


def read_rows(run_dir) -> list[dict]:
    from jaxreason.train.loop import MetricsLog

    return MetricsLog.read(Path(run_dir) / "metrics.jsonl")


@pytest.fixture(scope="session")
def train():
    """``train(run_dir, *overrides, callbacks=()) -> (result, rows)``: run ``main`` in this
    process."""
    from jaxreason.train.loop import main

    def run(run_dir, *overrides, callbacks=()):
        result = main(config_for(run_dir, *overrides), callbacks=callbacks)
        return result, read_rows(run_dir)

    return run


@pytest.fixture(scope="session")
def base_args():
    """The BASE overrides, e.g. for a subprocess command line."""
    return list(BASE)


@pytest.fixture(scope="session")
def subprocess_env():
    """``subprocess_env(**extra) -> env`` for ``python -m jaxreason...`` children."""
    return python_env


@pytest.fixture(scope="session")
def python():
    return sys.executable
