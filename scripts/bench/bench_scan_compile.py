"""Compile time of the forward pass and of the training step, unrolled blocks against blocks
under scan, for 8, 16 and 32 layers.

The model is a Llama (width 256, 4 heads, 2 KV heads, MLP 688, vocab 4096) built from
shapes only: nothing is allocated or run, so the figures are pure tracing + compilation,
which is what grows with depth when the blocks are unrolled. Each cell is the best of
``--repeats`` fresh compilations (jax's caches are cleared between them). The forward is
compiled twice: plain, and capturing every ``blocks.*.hook_resid_post`` (the captures under
scan go through the per-layer buffers).

    python scripts/bench/bench_scan_compile.py                 # ~3-6 min on 2 busy cores
    python scripts/bench/bench_scan_compile.py --layers 8,16 --repeats 1 --out scan.json
"""

from __future__ import annotations

import argparse
import json

import jax

from bench_util import LoadMeter
from compiled_step import lower_forward, lower_train_step, timed_compile
from jaxreason.models import CausalLM, LlamaConfig


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layers", default="8,16,32", help="comma list of depths")
    p.add_argument("--repeats", type=int, default=2, help="compilations per cell (best kept)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--out", default=None, help="write the results as JSON to this path")
    return p.parse_args()


def config(layers: int, scan: bool) -> LlamaConfig:
    return LlamaConfig(vocab_size=4096, hidden_size=256, num_layers=layers, num_heads=4,
                       kv_heads=2, intermediate_size=688, max_position_embeddings=1024,
                       scan_layers=scan)


def measure(layers: int, scan: bool, a) -> dict:
    model = CausalLM(config(layers, scan))
    what = {"forward": lambda: lower_forward(model, a.batch, a.seq),
            "forward+capture": lambda: lower_forward(model, a.batch, a.seq,
                                                     capture={"blocks.*.hook_resid_post"}),
            "train step": lambda: lower_train_step(model, a.batch, a.seq)}
    out = {}
    for name, lower in what.items():
        best = None
        for _ in range(a.repeats):
            jax.clear_caches()
            trace_s, compile_s, _ = timed_compile(lower)
            if best is None or trace_s + compile_s < sum(best):
                best = (trace_s, compile_s)
        out[name] = {"trace_s": best[0], "compile_s": best[1], "total_s": sum(best)}
    return out


def main():
    a = parse_args()
    depths = [int(x) for x in a.layers.split(",")]
    print(f"jax {jax.__version__} on {jax.default_backend()}; Llama d=256, batch {a.batch} x "
          f"{a.seq}; trace+lower and compile seconds, best of {a.repeats}")
    load = LoadMeter()
    head = f"{'layers':>6s} {'program':16s} {'unrolled s':>11s} {'scanned s':>10s} {'ratio':>6s}"
    print("\n" + head + "\n" + "-" * len(head), flush=True)
    results = {}
    for L in depths:  # one depth at a time, printed as it finishes
        r = results[L] = {layout: measure(L, layout == "scanned", a)
                          for layout in ("unrolled", "scanned")}
        for name in r["unrolled"]:
            u, s = r["unrolled"][name]["total_s"], r["scanned"][name]["total_s"]
            print(f"{L:6d} {name:16s} {u:11.2f} {s:10.2f} {u / s:5.1f}x", flush=True)
    load_line = load.line()
    if load_line:
        print(load_line)
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"batch": a.batch, "seq": a.seq, "repeats": a.repeats,
                       "results": {str(k): v for k, v in results.items()}}, f, indent=2)
        print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
