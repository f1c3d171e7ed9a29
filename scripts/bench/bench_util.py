"""Measurement helpers shared by the benchmarks in this folder.

A benchmark on a shared CPU is only honest when it says how busy the machine was, so each
script records the CPU seconds its own process used (all threads) and, on Linux, the seconds
the whole machine was busy over the same interval: ``own / wall`` is the cores this process
kept busy, ``(machine - own) / wall`` the cores something else took.

A ratio against another framework also depends on the processor (torch's and XLA's matrix
kernels are tuned differently per vector extension), so every benchmark prints the CPU model
and its vector extensions (:func:`cpu_description`), and measures in the same run the two
limits a row can be held against (:func:`machine_limits`): the rate of XLA's matrix products
at the model's own shapes (a forward or a training step is mostly matmuls, so its achieved
GFLOP/s over this rate is its efficiency) and the memory bandwidth of a large reduction
(greedy decoding at a small batch reads every weight once per token, so the weight bytes read
per second over this bandwidth is its efficiency).
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import time

# extensions that decide which matrix kernels XLA (oneDNN / XNNPACK / Eigen) and torch pick
_VECTOR_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl",
                 "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile", "asimd",
                 "sve", "sve2")


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


class LoadMeter:
    """How busy other processes kept the machine between construction and :meth:`line`."""

    def __init__(self):
        self.machine, self.own, self.wall = (machine_cpu_seconds(), own_cpu_seconds(),
                                             time.perf_counter())

    def line(self) -> str | None:
        """"other processes used X of N cores ..." (None off Linux, where it is unknown)."""
        if self.machine is None:
            return None
        wall = time.perf_counter() - self.wall
        others = max(0.0, (machine_cpu_seconds() - self.machine - own_cpu_seconds()
                           + self.own) / wall)
        return (f"other processes used {others:.2f} of {os.cpu_count()} cores on average "
                f"during the {wall:.0f} s run")


def cpu_description() -> dict:
    """{"model": ..., "cores": n, "vector": [extensions present]} of this machine's CPU,
    read from ``/proc/cpuinfo`` (Linux); elsewhere the model is ``platform.processor()`` and
    the extension list is empty."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "Model") and model in ("", platform.machine(),
                                                                platform.processor()):
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"model": model, "cores": cores, "vector": [f for f in _VECTOR_FLAGS if f in flags]}


def cpu_line() -> str:
    """One printable line: the CPU model, its usable cores and vector extensions."""
    d = cpu_description()
    vector = " ".join(d["vector"]) or "?"
    return f"CPU: {d['model']}, {d['cores']} cores, vector extensions: {vector}"


def median_seconds(fn, repeats: int) -> float:
    """Median wall seconds of ``repeats`` calls of ``fn`` after one untimed (compiling) call."""
    fn()  # compile and warm up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def matmul_gflops(m: int, k: int, n: int, dtype="float32", repeats: int = 5) -> float:
    """GFLOP/s (2*m*k*n per product) of one jitted (m, k) @ (k, n) product on jax's default
    device, median of ``repeats`` after a warm-up."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.PRNGKey(0), (m, k), dtype)
    b = jax.random.normal(jax.random.PRNGKey(1), (k, n), dtype)
    f = jax.jit(jnp.matmul)
    s = median_seconds(lambda: f(a, b).block_until_ready(), repeats)
    return 2 * m * k * n / s / 1e9


def read_bandwidth_gbs(megabytes: int = 512, repeats: int = 5) -> float:
    """GB/s of a jitted sum over a float32 array of ``megabytes`` MB (every byte read once,
    far larger than the caches): the bound that weight-reading decoding runs against."""
    import jax
    import jax.numpy as jnp

    n = megabytes * 2**20 // 4
    x = jnp.ones((n // 1024, 1024), jnp.float32)
    f = jax.jit(lambda a: jnp.sum(a, axis=0))
    s = median_seconds(lambda: f(x).block_until_ready(), repeats)
    return n * 4 / s / 1e9


def machine_limits(shapes=((1024, 768, 3072), (2048, 2048, 2048)), megabytes: int = 512,
                   dtype="float32") -> dict:
    """The machine's own limits, measured now: ``matmul_gflops`` per "MxKxN" shape, their
    best as ``peak_gflops``, and ``read_gbs``. A few seconds on a CPU."""
    rates = {f"{m}x{k}x{n}": matmul_gflops(m, k, n, dtype) for m, k, n in shapes}
    return {"matmul_gflops": rates, "peak_gflops": max(rates.values()),
            "read_gbs": read_bandwidth_gbs(megabytes), "dtype": str(dtype)}


def limits_line(limits: dict) -> str:
    rates = ", ".join(f"{s} {g:.0f}" for s, g in limits["matmul_gflops"].items())
    return (f"machine limits ({limits['dtype']}): XLA matmul GFLOP/s {rates}; "
            f"read bandwidth {limits['read_gbs']:.1f} GB/s")


def transformer_flops(n_matmul_params: int, tokens: int, layers: int = 0, width: int = 0,
                      seq: int = 0, train: bool = False) -> float:
    """Model FLOPs of a forward (``train``: forward + backward, 3x) over ``tokens`` tokens:
    2 per weight of every matrix product (embedding lookups excluded, the unembedding
    included), plus the causal attention products, 2 * 2 * T/2 * D per token and layer."""
    per_token = 2 * n_matmul_params + 2 * layers * seq * width
    return per_token * tokens * (3 if train else 1)


def matmul_params(params, tied_unembedding: bool, vocab: int, width: int) -> int:
    """Weights that take part in a matrix product per token: every ``kernel`` leaf (stacked
    layer layouts included), plus the unembedding when it is the tied embedding table."""
    import jax

    n = sum(int(v.size) for k, v in jax.tree_util.tree_leaves_with_path(params)
            if "kernel" in jax.tree_util.keystr(k))
    return n + (vocab * width if tied_unembedding else 0)
