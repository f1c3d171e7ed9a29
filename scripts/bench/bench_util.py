"""Measurement helpers shared by the benchmarks in this folder.

A benchmark on a shared CPU is only honest when it says how busy the machine was, so each
script records the CPU seconds its own process used (all threads) and, on Linux, the seconds
the whole machine was busy over the same interval: ``own / wall`` is the cores this process
kept busy, ``(machine - own) / wall`` the cores something else took.
"""

from __future__ import annotations

import os
import resource


def own_cpu_seconds() -> float:
    """User + system CPU seconds of this process, summed over its threads."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def machine_cpu_seconds() -> float | None:
    """Busy CPU seconds of the whole machine since boot (all but idle and iowait); None off
    Linux, where ``/proc/stat`` does not exist."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(x) for x in f.readline().split()[1:9]]
    except OSError:
        return None
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")
