"""The training-engine fixtures of ``tests/train/conftest.py`` (the tiny copy-task
``train(run_dir, *overrides)`` runner, ``config_for``, ``read_rows``), loaded from that file
so both test folders share one definition."""

import importlib.util
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "train_engine_fixtures", Path(__file__).resolve().parents[2] / "train" / "conftest.py")
_engine = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_engine)

train = _engine.train
base_args = _engine.base_args


@pytest.fixture(scope="session")
def config_for():
    """``config_for(run_dir, *overrides) -> TrainConfig`` of the tiny copy-task job."""
    return _engine.config_for
