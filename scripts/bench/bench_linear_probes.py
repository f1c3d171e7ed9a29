"""Benchmark the Think-to-Talk linear probes: one layer's probes fitted at once vs one at a time.

What is timed: fitting every (position, variable) probe of ONE layer, i.e. P x J 10-way
affine probes on hidden states X (N, P, d), with :mod:`jaxreason.probe.linear`.

* ``vmap``: :func:`fit_probes`, one jitted program vmapped over positions and variables.
* ``loop``: :func:`fit_probe_loop`, the same algorithm, one probe at a time (a Python loop
  over (p, j) calling the jitted single-probe fit), which is how the original trains.
* ``sklearn`` (logreg only): ``sklearn.linear_model.LogisticRegression`` (lbfgs,
  ``C = 1 / (l2 * n_valid)``, ``tol`` = our gradient tolerance, ``max_iter`` = our
  iteration cap) per probe on the same standardised features: the same convex objective.
  It runs with BLAS/OpenMP limited to ``--sklearn-threads`` (default 1): these problems are
  small, and on a 2-core machine with any other load, sklearn's 2 OpenMP threads made each
  fit ~50-100x slower (0.8 s instead of 0.01 s), which would flatter the vmapped fit.
  The faithful sgd kind has no sklearn twin (``SGDClassifier`` is per-sample SGD with a
  different loss scaling and schedule), so sgd is compared against the loop only.

Both kinds run: ``sgd`` (faithful: raw features, full-batch GD at lr 1e-3, ``--steps``; the
original's 10,000 take minutes per layer on a CPU, and the time is linear in the steps) and
``logreg`` (the standardised L2 control, L-BFGS to convergence). Compile time is measured
separately by a warm-up call (1 step; the step count is a traced argument, so the timed
call reuses the compiled program) and is not in the fit time. ratio = loop (or sklearn)
fit time / vmap fit time (>1: vmap is faster). "cores" = process CPU time / wall time. The
vmapped fit is one program for all probes. On a CPU it runs the positions one after
another inside that program (``lockstep`` 1, the default there; ``--lockstep`` changes it):
vmapping all positions together made every batch iterate until its slowest probe converged
(logreg: 11 to 43 L-BFGS iterations with the default data, mean ~21) and streamed all
positions' features from memory at every iteration, which made it 0.37-0.58x as fast as
scikit-learn. "cpu s" is the process CPU time of the fit, the fairer figure when other
processes compete for the cores. For sgd the script also prints the FLOP rate the fit reached
(4 N d C per probe and step: the logits' and the weight gradient's products) against the
matrix-product rate of the machine measured in the same run (:mod:`bench_util`). The
accuracy columns score every variant on held-out rows with the same :func:`probe_accuracy` (missing positions count as wrong), to show that they fit the same
thing; "max |dacc|" is the largest per-probe accuracy difference from the vmapped fit.

Data (synthetic, seed 0): y (N, J) uniform over 0..9; X standard normal, plus at positions
p >= P * (j + 1) / (J + 1) the class mean ``--signal * M_j[y_j]`` (so variable j becomes
decodable later in the sequence, as in a chain of thought, and earlier positions sit at chance);
10% of the rows are shorter and miss the last 5 positions (``valid`` False). The test set
has N / 2 rows. Defaults follow Think-to-Talk's 2step shapes (57 positions, 2 variables) at a
CPU-sized N and d.

    source /work/venv/bin/activate
    python scripts/bench/bench_linear_probes.py --quick           # 2 CPU cores: ~20-30 s
    python scripts/bench/bench_linear_probes.py --out probes.json # N=2000 P=57 J=2 d=128, 1000
                                                                   # steps; 2 CPU cores: ~2 min
    python scripts/bench/bench_linear_probes.py --n 10000 --d 4096 --steps 10000 \\
        --loop-positions 4                                         # a GPU, faithful sizes
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import numpy as np
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from bench_util import cpu_line, limits_line, machine_limits, matmul_gflops, own_cpu_seconds
from jaxreason.probe import linear as lp


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="N=1000, d=64, 200 sgd steps (shapes otherwise as given)")
    p.add_argument("--n", type=int, default=None, help="training rows (default 2000, quick 1000)")
    p.add_argument("--positions", type=int, default=57, help="positions P (default 57)")
    p.add_argument("--variables", type=int, default=2, help="variables J (default 2)")
    p.add_argument("--d", type=int, default=None, help="hidden width (default 128, quick 64)")
    p.add_argument("--steps", type=int, default=None,
                   help="sgd GD steps (default 1000, quick 200; faithful 10000)")
    p.add_argument("--lr", type=float, default=1e-3, help="sgd learning rate (faithful 1e-3)")
    p.add_argument("--l2", type=float, default=1e-3, help="logreg L2 strength")
    p.add_argument("--signal", type=float, default=1.0, help="class-mean scale of the data")
    p.add_argument("--kinds", default="sgd,logreg", help="comma list of probe kinds")
    p.add_argument("--loop-positions", type=int, default=None,
                   help="time the per-probe loops on the first K positions only and scale the "
                        "time by P/K (for large runs; accuracies then compare those K)")
    p.add_argument("--no-sklearn", action="store_true", help="skip the sklearn row")
    p.add_argument("--sklearn-threads", type=int, default=1,
                   help="BLAS/OpenMP threads for sklearn (default 1; 0 = library default)")
    p.add_argument("--lockstep", default="auto",
                   help="positions vmapped together in the vmapped fit: 'auto' (1 on a CPU, all "
                        "elsewhere), 'all', or a number")
    p.add_argument("--out", default=None, help="write the results as JSON to this path")
    a = p.parse_args()
    if a.lockstep not in ("auto", "all"):
        a.lockstep = int(a.lockstep)
    elif a.lockstep == "all":
        a.lockstep = None
    a.n = a.n or (1000 if a.quick else 2000)
    a.d = a.d or (64 if a.quick else 128)
    a.steps = a.steps if a.steps is not None else (200 if a.quick else 1000)
    a.kinds = [k for k in a.kinds.split(",") if k]
    for k in a.kinds:
        if k not in lp.KINDS:
            p.error(f"--kinds: {k!r} is not one of {lp.KINDS}")
    a.loop_positions = min(a.loop_positions or a.positions, a.positions)
    return a


def timed(fn):
    """(result, wall seconds, busy cores) of one call."""
    c0, t0 = own_cpu_seconds(), time.perf_counter()
    out = fn()
    wall = time.perf_counter() - t0
    return out, wall, (own_cpu_seconds() - c0) / max(wall, 1e-9)


def sgd_gflop(X, valid, y, steps: int, C: int = 10) -> float:
    """GFLOP of the faithful fit: per probe and GD step, the (n, d) @ (d, C) logits and the
    (d, n) @ (n, C) weight gradient over its n valid rows, 2 n d C each."""
    d = X.shape[2]
    return float(valid.sum()) * y.shape[1] * steps * 4 * d * C / 1e9


def make_data(n: int, P: int, J: int, d: int, signal: float, seed: int):
    """(X, y, valid) as described in the module docstring; the class means do not depend
    on ``seed`` so train and test sets share them."""
    rng = np.random.default_rng(seed)
    means = np.random.default_rng(999).normal(size=(J, 10, d)).astype(np.float32)
    y = rng.integers(0, 10, (n, J))
    X = rng.normal(size=(n, P, d)).astype(np.float32)
    for j in range(J):
        start = int(P * (j + 1) / (J + 1))
        X[:, start:] += signal * means[j, y[:, j]][:, None, :]
    valid = np.ones((n, P), bool)
    short = rng.random(n) < 0.1
    valid[short, max(P - 5, 1):] = False
    X[~valid] = np.nan  # like the padding of a shorter sequence: must not matter
    return X, y, valid


def fit_sklearn(X, y, valid, s: lp.ProbeSettings) -> lp.LinearProbes:
    """LogisticRegression per probe on the features standardised exactly as logreg does."""
    N, P, d = X.shape
    J, C = y.shape[1], s.num_classes
    W, b = np.zeros((P, J, d, C), np.float32), np.zeros((P, J, C), np.float32)
    mean, scale = np.zeros((P, d), np.float32), np.ones((P, d), np.float32)
    for p in range(P):
        rows = valid[:, p]
        x = X[rows, p].astype(np.float64)
        mean[p], std = x.mean(0), x.std(0)
        scale[p] = np.where(std < 1e-6, 1.0, std)
        xs = (x - mean[p]) / scale[p]
        for j in range(J):
            m = LogisticRegression(C=1.0 / (s.l2 * rows.sum()), tol=s.logreg_tol,
                                   max_iter=s.logreg_steps)
            m.fit(xs, y[rows, j])
            b[p, j] = -1e9  # a class absent from the training rows is never predicted
            W[p, j][:, m.classes_], b[p, j][m.classes_] = m.coef_.T, m.intercept_
    return lp.LinearProbes(W, b, mean, scale, s)


def run_kind(kind: str, a, train, test) -> dict:
    X, y, valid = train
    K = a.loop_positions
    s = lp.ProbeSettings(kind=kind, steps=a.steps, lr=a.lr, l2=a.l2)
    warm = lp.ProbeSettings(kind=kind, steps=1, lr=a.lr, l2=a.l2, logreg_steps=1)
    what = (f"{a.steps} GD steps, lr {a.lr}" if kind == "sgd"
            else f"L-BFGS <= {s.logreg_steps} it, tol {s.logreg_tol}, l2 {a.l2}")
    print(f"\n== {kind}: {X.shape[1] * y.shape[1]} probes ({what})", flush=True)

    rows = {}
    _, c_vmap, _ = timed(lambda: lp.fit_probes(X, y, valid, warm, lockstep=a.lockstep))
    _, c_loop, _ = timed(lambda: lp.fit_probe_loop(X[:, :1], y, valid[:, :1], warm))
    fast, t, cores = timed(lambda: lp.fit_probes(X, y, valid, s, lockstep=a.lockstep))
    rows["vmap"] = dict(fit_s=t, compile_s=c_vmap, cores=cores, probes=fast)
    print(f"vmap  fit {t:8.2f} s  (compile {c_vmap:.2f} s, {cores:.1f} cores)", flush=True)
    loop, t, cores = timed(lambda: lp.fit_probe_loop(X[:, :K], y, valid[:, :K], s))
    rows["loop"] = dict(fit_s=t * X.shape[1] / K, compile_s=c_loop, cores=cores, probes=loop)
    print(f"loop  fit {t:8.2f} s  on {K} positions (compile {c_loop:.2f} s, {cores:.1f} cores)",
          flush=True)
    if kind == "logreg" and not a.no_sklearn:
        with threadpool_limits(a.sklearn_threads or None):
            sk, t, cores = timed(lambda: fit_sklearn(X[:, :K], y, valid[:, :K], s))
        rows["sklearn"] = dict(fit_s=t * X.shape[1] / K, compile_s=0.0, cores=cores, probes=sk)
        print(f"sklearn fit {t:6.2f} s  on {K} positions ({cores:.1f} cores)", flush=True)

    Xt, yt, vt = test
    acc_fast = lp.probe_accuracy(fast, Xt, yt, vt)
    out = {}
    for name, r in rows.items():
        k = r["probes"].weights.shape[0]
        acc = lp.probe_accuracy(r["probes"], Xt[:, :k], yt, vt[:, :k])
        out[name] = dict(fit_s=r["fit_s"], compile_s=r["compile_s"], cores=r["cores"],
                         cpu_s=r["fit_s"] * r["cores"],
                         cpu_ratio=r["fit_s"] * r["cores"] / (rows["vmap"]["fit_s"]
                                                              * rows["vmap"]["cores"]),
                         ms_per_probe=1e3 * r["fit_s"] / acc_fast.size,
                         ratio=r["fit_s"] / rows["vmap"]["fit_s"],
                         mean_acc=float(acc.mean()),
                         max_abs_dacc=float(np.abs(acc - acc_fast[:k]).max()),
                         timed_positions=k)
    if kind == "sgd":
        gflop = sgd_gflop(X, valid, y, a.steps)
        for name in rows:
            out[name]["gflops"] = gflop / out[name]["fit_s"]
    out["loop"]["max_abs_dweight"] = float(np.abs(loop.weights - fast.weights[:K]).max())
    chance = lp.chance_accuracy(yt)
    out["accuracy_profile"] = dict(chance=chance.tolist(),
                                   vmap_by_position=acc_fast.round(4).tolist())
    return out


def main():
    a = parse_args()
    load0 = os.getloadavg()[0]
    limits = machine_limits()
    limits["probe_shape_gflops"] = matmul_gflops(a.n, a.d, 10)
    print(f"jax {jax.__version__}: backend={jax.default_backend()} devices={jax.devices()}; "
          f"load average {load0:.1f}\n{cpu_line()}\n{limits_line(limits)}; at the probe's "
          f"{a.n}x{a.d}x10: {limits['probe_shape_gflops']:.0f} GFLOP/s\n"
          f"layer: N={a.n} train rows (+{a.n // 2} test), P={a.positions} positions, "
          f"J={a.variables} variables, d={a.d}")
    train = make_data(a.n, a.positions, a.variables, a.d, a.signal, seed=0)
    test = make_data(a.n // 2, a.positions, a.variables, a.d, a.signal, seed=1)
    res = {kind: run_kind(kind, a, train, test) for kind in a.kinds}

    print(f"\n{'kind':7s} {'method':8s} {'fit s':>9s} {'compile s':>10s} {'ms/probe':>9s} "
          f"{'cores':>6s} {'cpu s':>7s} {'ratio':>7s} {'cpu ratio':>9s} {'mean acc':>9s} "
          f"{'max |dacc|':>11s}\n" + "-" * 102)
    for kind, rows in res.items():
        for name in ("vmap", "loop", "sklearn"):
            if name not in rows:
                continue
            r = rows[name]
            note = "" if r["timed_positions"] == a.positions else (
                f"  (timed on {r['timed_positions']} positions, x{a.positions}/"
                f"{r['timed_positions']})")
            print(f"{kind:7s} {name:8s} {r['fit_s']:9.2f} {r['compile_s']:10.2f} "
                  f"{r['ms_per_probe']:9.2f} {r['cores']:6.1f} {r['cpu_s']:7.2f} "
                  f"{r['ratio']:6.2f}x {r['cpu_ratio']:8.2f}x "
                  f"{r['mean_acc']:9.4f} {r['max_abs_dacc']:11.4f}{note}")
        if "gflops" in rows["vmap"]:
            print(f"{kind:7s} vmapped fit reached {rows['vmap']['gflops']:.1f} GFLOP/s = "
                  f"{rows['vmap']['gflops'] / limits['peak_gflops']:.0%} of the measured matmul "
                  f"peak ({limits['peak_gflops']:.0f}), "
                  f"{rows['vmap']['gflops'] / limits['probe_shape_gflops']:.0%} of the rate at "
                  "the probe's own shape")
        print(f"{kind:7s} max |W_loop - W_vmap| = {rows['loop']['max_abs_dweight']:.2e}; "
              f"chance (majority rate) = {np.round(rows['accuracy_profile']['chance'], 3)}")
    print("ratio = fit time / vmap fit time, cpu ratio = the same with CPU seconds "
          "(>1: the vmapped fit is faster)")
    load1 = os.getloadavg()[0]
    if max(load0, load1) > os.cpu_count() + 0.5:
        print(f"note: load average {load0:.1f} -> {load1:.1f} on {os.cpu_count()} CPUs: other "
              "processes competed for the cores, so absolute numbers are noisy")
    if a.out:
        meta = dict(jax=jax.__version__, backend=jax.default_backend(),
                    device=str(jax.devices()[0]), cpus=os.cpu_count(), n=a.n,
                    positions=a.positions, variables=a.variables, d=a.d, steps=a.steps,
                    lr=a.lr, l2=a.l2, signal=a.signal, quick=a.quick,
                    loop_positions=a.loop_positions, sklearn_threads=a.sklearn_threads,
                    loadavg_start=load0, loadavg_end=load1, lockstep=a.lockstep,
                    cpu=cpu_line(), limits=limits)
        with open(a.out, "w") as f:
            json.dump({"meta": meta, **res}, f, indent=2)
        print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
