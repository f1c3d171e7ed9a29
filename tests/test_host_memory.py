"""The glibc malloc tuning applied at import (jaxreason.host_memory): applied by default on a
CPU host, left alone on request, and with the effect it exists for: a large block freed and
allocated again is not faulted in again. Each case runs in a fresh Python, since malloc's
settings are per process and the arena limit binds only before threads start."""

from __future__ import annotations

import ctypes.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from jaxreason import host_memory

ROOT = Path(__file__).resolve().parents[1]

# Touch a 64 MiB block, free it, allocate and touch one again: the minor page faults of the
# second round (16,384 4 KiB pages if the block was unmapped in between).
PROBE = """
import ctypes, json, resource, sys
import jaxreason
from jaxreason import host_memory
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
size = 64 << 20
def touch():
    p = libc.malloc(size)
    ctypes.memset(p, 1, size)
    return p
libc.free(touch())
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
p = touch()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
libc.free(p)
print(json.dumps({"applied": host_memory.applied, "faults": faults}))
"""


def probe(**env) -> dict:
    full = {k: v for k, v in os.environ.items()  # glibc's own MALLOC_* variables too
            if k != host_memory.ENV and not k.startswith("MALLOC_")}
    full.update(env, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", PROBE], env=full, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


needs_glibc_cpu_host = pytest.mark.skipif(
    ctypes.util.find_library("c") != "libc.so.6" or host_memory.skip_reason() is not None,
    reason="the tuning applies on Linux hosts with glibc and without an accelerator")


@needs_glibc_cpu_host
def test_a_freed_block_stays_mapped_once_tuned_and_not_by_default():
    tuned, default = probe(), probe(**{host_memory.ENV: "default"})
    assert tuned["applied"] and not default["applied"]
    pages = (64 << 20) // os.sysconf("SC_PAGE_SIZE")
    assert default["faults"] > pages // 2, default  # unmapped on free, faulted in again
    assert tuned["faults"] < pages // 20, tuned  # reused where it was


def test_skip_reasons(monkeypatch):
    monkeypatch.setenv(host_memory.ENV, "Default")
    assert host_memory.skip_reason() == f"{host_memory.ENV}=default"
    monkeypatch.delenv(host_memory.ENV)
    monkeypatch.setattr(host_memory.sys, "platform", "darwin")
    assert host_memory.skip_reason() == "platform darwin"
    monkeypatch.setattr(host_memory.sys, "platform", "linux")
    monkeypatch.setattr(host_memory.glob, "glob",
                        lambda pattern: ["/dev/nvidia0"] if "nvidia" in pattern else [])
    assert host_memory.skip_reason() == "an accelerator device is present"
