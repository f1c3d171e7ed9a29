"""Does keeping XLA:CPU's scratch memory mapped speed up training? glibc defaults vs tuned.

``jaxreason.host_memory.tune`` (applied when ``jaxreason`` is imported) sets glibc's malloc so
that the block of temporaries each execution of a compiled program allocates stays mapped
between steps instead of being unmapped and faulted in again. malloc reads its arena limit
before threads start, so each setting runs in its own subprocess (a worker) with
``JAXREASON_HOST_MALLOC=default`` (glibc's defaults, the peer) or unset (tuned).

Each worker builds the world base model's shape (a 4-layer Llama, d=128, vocab 256, random
weights, seed 0) and times one jitted AdamW training step (forward, backward and update of
the causal-LM loss) on random tokens of ``--batch`` x ``--seq`` (the configured 8 x 576 by
default): median over ``--steps`` steps after two untimed ones (compiling and first touch).
It also reports the step's system CPU time and minor page faults (``getrusage``): the cost
the tuning removes. Workers of the two settings alternate for ``--rounds`` rounds, so
background load hits both alike; the table gives each setting's best round and the ratio
default / tuned (>1: tuned is faster).

    source /work/venv/bin/activate
    python scripts/bench/bench_host_memory.py                 # 2 CPU cores: ~2-3 min
    python scripts/bench/bench_host_memory.py --batch 8 --seq 576 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

SETTINGS = {"default": {"JAXREASON_HOST_MALLOC": "default"}, "tuned": {}}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=576)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out", default=None, help="write the results as JSON to this path")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args()


def worker(a) -> dict:
    import resource

    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from jaxreason import host_memory
    from jaxreason.models import LlamaConfig, from_config
    from jaxreason.train import objectives

    config = LlamaConfig(vocab_size=256, hidden_size=128, num_layers=4, num_heads=4,
                         kv_heads=4, intermediate_size=512, max_position_embeddings=1024)
    model, params = from_config(config, seed=0)
    ids = np.random.default_rng(0).integers(3, 256, (a.batch, a.seq), dtype=np.int32)
    batch = {"tokens": jnp.asarray(ids), "attention_mask": jnp.ones_like(jnp.asarray(ids)),
             "loss_mask": jnp.ones(ids.shape, jnp.float32)}
    objective = objectives.get("causal_lm")
    optimizer = optax.adamw(3e-3, weight_decay=0.01)

    @jax.jit
    def step(p, opt_state):
        grads = jax.grad(lambda q: objective(model, q, batch, None)[0])(p)
        updates, opt_state = optimizer.update(grads, opt_state, p)
        return optax.apply_updates(p, updates), opt_state

    state = (params, optimizer.init(params))
    for _ in range(2):
        state = jax.block_until_ready(step(*state))
    wall, sys_s, faults = [], [], []
    for _ in range(a.steps):
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        state = jax.block_until_ready(step(*state))
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        wall.append(time.perf_counter() - t0)
        sys_s.append(r1.ru_stime - r0.ru_stime)
        faults.append(r1.ru_minflt - r0.ru_minflt)
    return {"applied": host_memory.applied, "step_s": statistics.median(wall),
            "sys_s": statistics.median(sys_s), "faults": statistics.median(faults),
            "tokens_per_s": a.batch * a.seq / statistics.median(wall)}


def run_worker(a, env_extra: dict) -> dict:
    env = {k: v for k, v in os.environ.items()  # and glibc's own MALLOC_* settings
           if k != "JAXREASON_HOST_MALLOC" and not k.startswith("MALLOC_")}
    env.update(env_extra, JAX_PLATFORMS="cpu")
    here = os.path.dirname(os.path.abspath(__file__))
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(os.path.dirname(here)), here,
                                         env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--batch", str(a.batch),
           "--seq", str(a.seq), "--steps", str(a.steps)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    a = parse_args()
    if a.worker:
        print(json.dumps(worker(a)))
        return
    from bench_util import cpu_line

    print(cpu_line())
    print(f"one AdamW step of a 4-layer Llama (d=128) on {a.batch} x {a.seq} tokens, "
          f"median of {a.steps} steps, best of {a.rounds} rounds")
    rounds = {name: [] for name in SETTINGS}
    for r in range(a.rounds):
        for name, env in SETTINGS.items():
            rounds[name].append(run_worker(a, env))
            print(f"  round {r + 1} {name}: {rounds[name][-1]['step_s']:.3f} s/step",
                  flush=True)
    best = {name: min(rs, key=lambda x: x["step_s"]) for name, rs in rounds.items()}
    if best["default"]["applied"] or not best["tuned"]["applied"]:
        raise SystemExit(f"the tuning was not applied as intended (applied: default "
                         f"{best['default']['applied']}, tuned {best['tuned']['applied']}); "
                         "see jaxreason.host_memory for where it stands aside")
    print(f"{'setting':<9} {'s/step':>8} {'tokens/s':>9} {'sys s/step':>11} "
          f"{'faults/step':>12}")
    for name, b in best.items():
        print(f"{name:<9} {b['step_s']:>8.3f} {b['tokens_per_s']:>9.0f} {b['sys_s']:>11.3f} "
              f"{b['faults']:>12.0f}")
    ratio = best["default"]["step_s"] / best["tuned"]["step_s"]
    print(f"ratio default / tuned step time: {ratio:.2f}x")
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"args": vars(a), "rounds": rounds, "ratio": ratio}, f, indent=1)


if __name__ == "__main__":
    main()
