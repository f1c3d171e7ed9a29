"""Shared helpers for the training-engine tests.

* A persistent XLA compilation cache for the session (and the subprocesses it starts, through
  ``JAX_COMPILATION_CACHE_DIR``): ``main`` jits a fresh closure on every call, so without it
  two runs of the same config compile the same program twice. Set ``JAX_COMPILATION_CACHE_DIR``
  yourself to keep the cache between sessions.
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


@pytest.fixture(scope="session", autouse=True)
def _compilation_cache(tmp_path_factory):
    """Turn the persistent cache on for these tests (and their subprocesses), then restore."""
    import jax
    from jax.experimental.compilation_cache import compilation_cache

    names = ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS")
    old_env = {k: os.environ.get(k) for k in names}
    old_cfg = (jax.config.jax_compilation_cache_dir,
               jax.config.jax_persistent_cache_min_compile_time_secs)
    cache = old_env[names[0]] or str(tmp_path_factory.mktemp("xla"))
    os.environ.update(dict(zip(names, (cache, "0"))))
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    compilation_cache.reset_cache()  # take effect even if something compiled before
    yield
    for k, v in old_env.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    jax.config.update("jax_compilation_cache_dir", old_cfg[0])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", old_cfg[1])
    compilation_cache.reset_cache()


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
