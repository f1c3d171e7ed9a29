"""Fixtures shared by every test folder.

``fake_devices(worker, count, *args)``: JAX fixes its device count when it starts, so tests
of sharded or data-parallel code run a worker script in a fresh Python with ``count`` fake
CPU devices (``XLA_FLAGS=--xla_force_host_platform_device_count``). The worker prints one
JSON line last; the fixture returns it parsed, or fails with the worker's stderr.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def run_on_fake_devices(worker, count: int, *args: str, timeout: int = 600):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={count}",
               JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, str(Path(worker)), *args], env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def fake_devices():
    return run_on_fake_devices
