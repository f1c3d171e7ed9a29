"""Where does a tiny model's training step spend its time? The world base model's training
step (``configs/world_base.yaml``: 4-layer Llama, d=128) at other shapes, each row against the
config's own shape as a ratio, in one run.

The question behind it is the base model's training budget: which change to the shape buys
tokens per second without costing what the model must learn. Each row is the training loop's
jitted step (``make_train_step``, the causal-LM objective, AdamW with clipping, state donated)
on random token ids with a full attention mask; the median of ``--repeats`` steps after one
untimed (compiling) step. Rows alternate for ``--rounds`` rounds so background load hits
them alike, and the table keeps each row's best round. A row is written as comma-separated
``key=value`` pairs over ``hidden``, ``layers``, ``heads``, ``mlp``, ``batch``, ``seq``.

On the 2-core CPU (AMD EPYC, AVX-512, quiet) the number of heads moves the step more than the
width: at rows of 576 tokens two heads instead of four make the step 1.28x faster (618 against
794 ms) and eight heads 2x slower (1,588 ms), while 1.5x the width with two heads costs about as
much as four heads at d=128 (809 ms); rows of 288 at the same tokens per step are 1.42x faster. The
scores and the softmax (B x H x T x T per layer) are a large share of a step this small.

    source /work/venv/bin/activate
    python scripts/bench/bench_step_shapes.py                                  # ~3 min
    python scripts/bench/bench_step_shapes.py --rows "heads=2" "seq=288,batch=16"
"""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np

from bench_util import LoadMeter, cpu_line, median_seconds
from jaxreason.train import objectives
from jaxreason.train.build import build_model
from jaxreason.train.config import ModelSection, OptimizerSection, ScheduleSection
from jaxreason.train.loop import TrainState, make_train_step
from jaxreason.train.optim import build_optimizer

#: configs/world_base.yaml's shape; every other row overrides some of these
BASE = {"hidden": 128, "layers": 4, "heads": 4, "mlp": 512, "batch": 8, "seq": 640}
DEFAULT_ROWS = ("seq=576", "seq=576,heads=2", "seq=576,heads=8", "seq=576,mlp=384,heads=2",
                "seq=288,batch=16", "seq=160,batch=32", "seq=576,hidden=192,heads=2")


def parse_row(text: str) -> dict:
    """``"seq=576,heads=2"`` -> BASE with those two keys replaced (integers only)."""
    row = dict(BASE)
    for part in filter(None, text.split(",")):
        key, sep, value = part.partition("=")
        if not sep or key.strip() not in BASE:
            raise SystemExit(f"--rows: bad entry {part!r} in {text!r}; write key=value with "
                             f"keys from {sorted(BASE)}")
        row[key.strip()] = int(value)
    return row


def label(row: dict) -> str:
    diff = [f"{k}={v}" for k, v in row.items() if v != BASE[k]]
    return ",".join(diff) or "world_base (" + ",".join(f"{k}={v}" for k, v in BASE.items()) + ")"


def make_step(row: dict):
    """A zero-argument callable that runs one training step and waits for it."""
    overrides = {"vocab_size": 256, "hidden_size": row["hidden"], "num_layers": row["layers"],
                 "num_heads": row["heads"], "kv_heads": row["heads"],
                 "intermediate_size": row["mlp"], "max_position_embeddings": 1024}
    model, params = build_model(ModelSection(preset="llama", overrides=overrides), 0)
    tx, _ = build_optimizer(OptimizerSection(lr=3e-3), ScheduleSection(), 100, params)
    state = [TrainState(jnp.zeros((), jnp.int32), params, tx.init(params),
                        jax.random.key_data(jax.random.PRNGKey(0)))]
    step = jax.jit(make_train_step(model, tx, objectives.get("causal_lm"), {}, 1, False),
                   donate_argnums=0)
    shape = (row["batch"], row["seq"])
    ids = np.random.default_rng(0).integers(0, 256, shape)
    batch = {"tokens": jnp.asarray(ids, jnp.int32), "attention_mask": jnp.ones(shape, jnp.int32),
             "loss_mask": jnp.ones(shape, jnp.int32)}

    def run():
        state[0], metrics = step(state[0], batch)
        jax.block_until_ready(metrics)
    return run


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", nargs="*", default=list(DEFAULT_ROWS),
                   help="shapes against the world base model's (key=value,...)")
    p.add_argument("--repeats", type=int, default=8)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out", help="also write the table as JSON here")
    a = p.parse_args()
    rows = [dict(BASE)] + [parse_row(r) for r in a.rows]
    print(cpu_line())
    print(f"jax {jax.__version__} on {jax.default_backend()}; training step of a random "
          f"Llama (vocab 256), median of {a.repeats} steps, best of {a.rounds} rounds")
    load = LoadMeter()
    steps = [make_step(r) for r in rows]
    best = [float("inf")] * len(rows)
    for _ in range(a.rounds):
        for i, run in enumerate(steps):
            best[i] = min(best[i], median_seconds(run, a.repeats))
    head = f"{'shape':58s} {'ms/step':>8s} {'tokens/s':>9s} {'vs base':>8s}"
    print("\n" + head + "\n" + "-" * len(head))
    base_rate = rows[0]["batch"] * rows[0]["seq"] / best[0]
    table = []
    for row, s in zip(rows, best):
        rate = row["batch"] * row["seq"] / s
        table.append({"shape": row, "ms_per_step": s * 1e3, "tokens_per_s": rate,
                      "tokens_per_s_vs_base": rate / base_rate})
        print(f"{label(row):58s} {s * 1e3:8.0f} {rate:9.0f} {rate / base_rate:7.2f}x")
    load_line = load.line()
    if load_line:
        print(load_line)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(table, f, indent=1)


if __name__ == "__main__":
    main()
