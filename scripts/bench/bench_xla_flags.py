"""Do XLA CPU flags speed up the whole model? A/B of ``XLA_FLAGS`` on a forward and a step.

XLA reads ``XLA_FLAGS`` once, when jax starts its backend, so every setting runs in its own
subprocess (a worker). Each worker builds the same random GPT-2 small (seed 0), times a
jitted forward (logits) and a jitted forward + backward of the causal-LM loss, median of
``--repeats`` calls after one untimed (compiling) call, and records both the wall time and
the process CPU time of a call: on a shared machine the CPU time moves less with the load.
Workers of the different settings run in alternation for ``--rounds`` rounds, so background
load hits them alike; the table gives the best round of each. "safe" compares a setting's
logits with the baseline's (max |diff| relative to the largest logit).

    source /work/venv/bin/activate
    python scripts/bench/bench_xla_flags.py                    # 2 CPU cores: ~3-6 min
    python scripts/bench/bench_xla_flags.py --batch 8 --seq 256 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

SETTINGS = {
    "baseline": "",
    "xnn greedy": "--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY",
    "vector width 512": "--xla_cpu_prefer_vector_width=512",
}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--layers", type=int, default=12, help="GPT-2 small has 12")
    p.add_argument("--settings", default=",".join(SETTINGS),
                   help=f"comma list of {', '.join(SETTINGS)}")
    p.add_argument("--out", default=None, help="write the results as JSON to this path")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--logits", default=None, help=argparse.SUPPRESS)
    return p.parse_args()


def worker(a) -> None:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from bench_util import own_cpu_seconds
    from jaxreason.models import GPT2Config, from_config
    from jaxreason.train import objectives

    cfg = GPT2Config(vocab_size=50257, hidden_size=768, num_layers=a.layers, num_heads=12,
                     intermediate_size=3072, max_position_embeddings=1024)
    model, params = from_config(cfg, seed=0)
    ids = np.random.default_rng(0).integers(0, model.config.vocab_size, (a.batch, a.seq),
                                            dtype=np.int32)
    batch = {"tokens": jnp.asarray(ids), "attention_mask": jnp.ones_like(jnp.asarray(ids)),
             "loss_mask": jnp.ones(ids.shape, jnp.float32)}
    obj = objectives.get("causal_lm")
    fwd = jax.jit(lambda p, x: model.apply(p, x).logits)
    grad = jax.jit(jax.grad(lambda p, bt: obj(model, p, bt, None)[0]))
    calls = {"forward": lambda: fwd(params, batch["tokens"]),
             "fwd+bwd": lambda: grad(params, batch)}
    out = {}
    for name, fn in calls.items():
        first = jax.block_until_ready(fn())
        wall, cpu = [], []
        for _ in range(a.repeats):
            c0, t0 = own_cpu_seconds(), time.perf_counter()
            jax.block_until_ready(fn())
            wall.append(time.perf_counter() - t0)
            cpu.append(own_cpu_seconds() - c0)
        out[name] = {"wall_s": statistics.median(wall), "cpu_s": statistics.median(cpu)}
        if name == "forward":
            logits = np.asarray(first[:, -4:], np.float32)
            if a.logits and os.path.exists(a.logits):
                ref = np.load(a.logits)
                out["max_rel_diff"] = float(np.abs(logits - ref).max() / np.abs(ref).max())
            elif a.logits:
                np.save(a.logits, logits)
    print(json.dumps(out))


def main():
    a = parse_args()
    if a.worker is not None:
        return worker(a)
    from bench_util import cpu_line

    names = [n for n in a.settings.split(",") if n]
    bad = set(names) - set(SETTINGS)
    if bad:
        sys.exit(f"--settings: unknown {sorted(bad)}; choose from {list(SETTINGS)}")
    print(f"{cpu_line()}\nGPT-2 small shape, {a.layers} layers (random), fp32, batch "
          f"{a.batch} x {a.seq}; "
          f"{a.rounds} rounds, median of {a.repeats} calls per worker; load average "
          f"{os.getloadavg()[0]:.1f}")
    results = {n: [] for n in names}
    with tempfile.TemporaryDirectory() as tmp:
        ref = os.path.join(tmp, "logits.npy")
        for _ in range(a.rounds):
            for n in ["baseline"] + [m for m in names if m != "baseline"]:
                env = dict(os.environ, XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + " "
                                                  + SETTINGS[n]).strip(), JAX_PLATFORMS="cpu")
                cmd = [sys.executable, os.path.abspath(__file__), "--worker", n, "--logits", ref,
                       "--batch", str(a.batch), "--seq", str(a.seq), "--repeats",
                       str(a.repeats), "--layers", str(a.layers)]
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
                if proc.returncode != 0:
                    print(f"{n}: FAILED\n{proc.stderr[-2000:]}")
                    continue
                if n in results:
                    results[n].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    base = {k: min(r[k]["cpu_s"] for r in results["baseline"]) for k in ("forward", "fwd+bwd")}
    base_w = {k: min(r[k]["wall_s"] for r in results["baseline"]) for k in ("forward", "fwd+bwd")}
    print(f"\n{'setting':18s} {'forward ms':>11s} {'cpu-s':>7s} {'fwd+bwd ms':>11s} {'cpu-s':>7s}"
          f" {'speed-up (cpu)':>15s} {'max rel diff':>13s}\n" + "-" * 88)
    summary = {}
    for n, runs in results.items():
        if not runs:
            continue
        best = {k: {m: min(r[k][m] for r in runs) for m in ("wall_s", "cpu_s")}
                for k in ("forward", "fwd+bwd")}
        diff = max((r.get("max_rel_diff", 0.0) for r in runs), default=0.0)
        speed = {k: base[k] / best[k]["cpu_s"] for k in best}
        speed_wall = {k: base_w[k] / best[k]["wall_s"] for k in best}
        summary[n] = dict(flags=SETTINGS[n], best=best, speedup_cpu=speed,
                          speedup_wall=speed_wall, max_rel_diff=diff)
        print(f"{n:18s} {best['forward']['wall_s'] * 1e3:11.0f} {best['forward']['cpu_s']:7.2f} "
              f"{best['fwd+bwd']['wall_s'] * 1e3:11.0f} {best['fwd+bwd']['cpu_s']:7.2f} "
              f"{speed['forward']:6.2f}x/{speed['fwd+bwd']:.2f}x {diff:13.1e}")
    print(f"speed-up = baseline CPU seconds / setting's (forward / fwd+bwd); load average now "
          f"{os.getloadavg()[0]:.1f}")
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"cpu": cpu_line(), "batch": a.batch, "seq": a.seq, "results": summary},
                      f, indent=2)
        print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
