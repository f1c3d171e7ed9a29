"""Keep XLA:CPU's scratch memory mapped from one step to the next (glibc malloc settings).

XLA's CPU runtime allocates the temporaries of each execution of a compiled program as one
large block and frees it when the execution ends. glibc serves a block above its mmap
threshold (32 MiB at most) with a fresh ``mmap`` and gives it back with ``munmap``, so every
training step touches its scratch memory for the first time again, one page fault per 4 KiB:
a run of the world base model (4-layer Llama, d=128, 7 x 672 tokens a step) spent about 30% of
its CPU time in the kernel, at ~275,000 page faults a step. Three settings keep the memory:

- one arena for every thread (``M_ARENA_MAX=1``): a thread's own arena grows in 64 MiB heaps
  and serves a larger block with ``mmap`` whatever the settings below say;
- no ``mmap`` for large blocks (``M_MMAP_MAX=0``): they come from the main heap;
- no trimming of the heap's free top (``M_TRIM_THRESHOLD`` = -1, which glibc reads as the
  largest size; the largest positive ``int``, 2 GiB, still let a training run fault in ~3x
  more pages than the setting by environment variable): a freed block stays mapped for the
  next step.

The price is memory: the process keeps every block it freed until it exits, and blocks of
other sizes (compilation, evaluation programs) do not reuse each other's space: training runs
of the world base model's shape at 7 x 672 tokens a step peaked at 8.0 GB resident, against
1.9 GB with glibc's defaults (and 3.7 GB with a 2 GiB trim threshold); the configured run
(8 x 576) peaks at 4.1 GB. ``scripts/bench/bench_host_memory.py`` measures the
speed against glibc's defaults in the same run.

:func:`tune` runs when ``jaxreason`` is imported, before NumPy or JAX start threads (the arena
limit binds only threads that have not allocated yet), on Linux with glibc. A process whose
threads started earlier (JAX imported first, pytest-xdist workers) gets the full effect from
glibc's environment variables instead, read at process start (:data:`ENVIRONMENT`;
``tests/conftest.py`` sets them for the suite's workers). It leaves the
defaults alone where ``JAXREASON_HOST_MALLOC=default`` is set, and on hosts with an NVIDIA or
TPU device (``/dev/nvidia*``, ``/dev/accel*``): there the step's scratch lives on the device,
and a checkpoint's host copy, freed after its transfer, should go back to the system.
"""

from __future__ import annotations

import ctypes
import glob
import os
import sys

ENV = "JAXREASON_HOST_MALLOC"  # "default": leave glibc's settings alone
# mallopt(3) parameter numbers (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
SETTINGS = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, -1))
ACCELERATORS = ("/dev/nvidia[0-9]*", "/dev/accel[0-9]*")
# The same settings as glibc's environment variables, which it reads at process start: for a
# process whose threads start before it imports jaxreason (see the module docstring).
ENVIRONMENT = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_MAX_": "0",
               "MALLOC_TRIM_THRESHOLD_": str(2**62)}

applied = False  # whether tune() changed the settings in this process


def skip_reason() -> str | None:
    """Why :func:`tune` leaves glibc's settings alone here, or None."""
    if os.environ.get(ENV, "").strip().lower() == "default":
        return f"{ENV}=default"
    if not sys.platform.startswith("linux"):
        return f"platform {sys.platform}"
    if any(glob.glob(pattern) for pattern in ACCELERATORS):
        return "an accelerator device is present"
    return None


def tune() -> bool:
    """Apply :data:`SETTINGS` with ``mallopt`` unless :func:`skip_reason` says not to;
    whether they were applied (False also where the C library is not glibc)."""
    global applied
    if applied or skip_reason() is not None:
        return applied
    try:
        libc = ctypes.CDLL("libc.so.6")  # glibc's soname (find_library would run ldconfig)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    applied = all(mallopt(param, value) == 1 for param, value in SETTINGS)
    return applied
