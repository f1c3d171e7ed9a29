"""Fixtures shared by every test folder.

``fake_devices(worker, count, *args)``: JAX fixes its device count when it starts, so tests
of sharded or data-parallel code run a worker script in a fresh Python with ``count`` fake
CPU devices (``XLA_FLAGS=--xla_force_host_platform_device_count``). The worker prints one
JSON line last; the fixture returns it parsed, or fails with the worker's stderr.

A persistent XLA compilation cache for the whole session (every xdist worker and every
subprocess a test starts, through ``JAX_COMPILATION_CACHE_DIR``): tests build fresh models and
``jit`` fresh closures, so without it the same program compiles again in each test, worker and
subprocess. The directory is made at the start and removed at the end; set
``JAX_COMPILATION_CACHE_DIR`` yourself to keep a cache between sessions.

The suite compiles its tiny programs for compile speed, not run speed (``TEST_XLA_FLAGS``,
added to ``XLA_FLAGS`` for the workers and every subprocess): the models here are tiny, so at
XLA's defaults the tests spent about half their CPU time in XLA's compiler (616 of ~1,260 s in
one run). Backend optimization level 0 cut that to 354 s; XLA's CPU backend then emitting its
fusions with the older elemental IR emitter instead of the MLIR fusion emitters
(``--xla_cpu_use_fusion_emitters=false``) halves it again (a tiny Llama's and GPT-2's forward,
gradient and decoding programs: 3.4 s against 5.9-7.4 s to compile). Neither enables
fast-math, and every test passes with and without them. ``JAXREASON_TEST_XLA_OPT=default``
runs the suite with the compiler's defaults.
``xla_flags(*more)`` gives the ``XLA_FLAGS`` value for a subprocess that needs more flags
(fake devices).

``tiny_world_model``: the HF directory (weights plus the world's tokenizer) of a one-layer
world base model trained for a few steps from ``configs/world_base.yaml``, once per test
session (per xdist worker). Study tests that only need a model of the world's shape and
tokenizer share it instead of training their own.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest


TEST_XLA_FLAGS = ("--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false")
_CACHE_VARIABLE = "JAX_COMPILATION_CACHE_DIR"
_OWN_CACHE = []  # the cache directory this process made (removed at the end)


def pytest_configure(config):
    """In the controller, before xdist starts its workers (they and every subprocess inherit
    the environment):

    * jaxreason's malloc settings as glibc's environment variables. Workers run execnet threads
      before they import jaxreason, so the settings made at import would bind only some of
      their threads (see jaxreason.host_memory).
    * the session's compilation cache, every program cached however fast it compiled.
    * ``TEST_XLA_FLAGS`` (XLA reads ``XLA_FLAGS`` when JAX starts its backend, after this).
    """
    from jaxreason import host_memory

    if host_memory.skip_reason() is None:
        for key, value in host_memory.ENVIRONMENT.items():
            os.environ.setdefault(key, value)
    if not os.environ.get(_CACHE_VARIABLE):
        _OWN_CACHE.append(tempfile.mkdtemp(prefix="jaxreason-xla-cache-"))
        os.environ[_CACHE_VARIABLE] = _OWN_CACHE[0]
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    if os.environ.get("JAXREASON_TEST_XLA_OPT") != "default":  # a flag the user set wins
        given = os.environ.get("XLA_FLAGS", "")
        os.environ["XLA_FLAGS"] = xla_flags(*_known_to_xla(
            [f for f in TEST_XLA_FLAGS if f.split("=")[0] not in given]))
    if "jax" in sys.modules:  # imported before this hook (-p plugins): JAX read its env already
        import jax

        jax.config.update("jax_compilation_cache_dir", os.environ[_CACHE_VARIABLE])
        jax.config.update("jax_persistent_cache_min_compile_time_secs",
                          float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))


def _known_to_xla(flags: list[str]) -> list[str]:
    """The ``flags`` this jaxlib's XLA accepts. XLA aborts the process on a flag it does not
    know, and its flags come and go between releases (the fusion-emitter switch is slated for
    removal), so each is tried in a bare JAX process first (about a second for all of them;
    one at a time only if they fail together)."""
    def accepted(candidates):
        env = dict(os.environ, XLA_FLAGS=xla_flags(*candidates), JAX_PLATFORMS="cpu")
        probe = subprocess.run([sys.executable, "-c", "import jax; jax.devices()"], env=env,
                               capture_output=True, timeout=120)
        return probe.returncode == 0

    if not flags or accepted(flags):
        return flags
    return [f for f in flags if accepted([f])]


def pytest_unconfigure(config):
    for directory in _OWN_CACHE:
        shutil.rmtree(directory, ignore_errors=True)


def xla_flags(*more: str) -> str:
    """This process's ``XLA_FLAGS`` with ``more`` appended."""
    return " ".join([os.environ.get("XLA_FLAGS", ""), *more]).strip()


def run_on_fake_devices(worker, count: int, *args: str, timeout: int = 600):
    env = dict(os.environ, XLA_FLAGS=xla_flags(f"--xla_force_host_platform_device_count={count}"),
               JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, str(Path(worker)), *args], env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


TINY_WORLD_OVERRIDES = ("trainer.steps=4", "schedule.warmup_steps=1", "trainer.eval_every=0",
                        "checkpoint.save_every=4", "data.task_args.rows=40",
                        "model.overrides.hidden_size=32", "model.overrides.intermediate_size=64",
                        "model.overrides.num_layers=1", "model.overrides.num_heads=2",
                        "model.overrides.kv_heads=2")


def tiny_world_overrides(directory) -> list[str]:
    """Dotted overrides that turn ``configs/world_base.yaml`` into a seconds-long training run
    writing under ``directory``."""
    directory = Path(directory)
    return ["--" + o for o in (f"trainer.run_dir={directory / 'run'}",
                               f"data.task_args.tokenizer_dir={directory / 'tok'}",
                               f"checkpoint.export_tokenizer={directory / 'tok'}",
                               *TINY_WORLD_OVERRIDES)]


@pytest.fixture(scope="session")
def world_overrides():
    """:func:`tiny_world_overrides` for tests that train their own tiny world model."""
    return tiny_world_overrides


@pytest.fixture(scope="session")
def tiny_world_model(tmp_path_factory):
    from jaxreason.studies.world_model import world_base_model

    root = Path(__file__).resolve().parents[1]
    directory = tmp_path_factory.mktemp("tiny_world")
    return world_base_model(str(root / "configs/world_base.yaml"), tiny_world_overrides(directory),
                            check_problems=0)  # a few training steps: no bar to check


@pytest.fixture(scope="session", name="xla_flags")
def xla_flags_fixture():
    """:func:`xla_flags`, for tests that start a JAX subprocess with extra flags."""
    return xla_flags


@pytest.fixture(scope="session")
def fake_devices():
    return run_on_fake_devices
