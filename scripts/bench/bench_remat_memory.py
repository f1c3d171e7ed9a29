"""Peak temporary memory of a GPT-2-medium-sized training step under each activation
checkpointing setting (``remat``: none, block, dots), from the compiled step's
``memory_analysis()``.

GPT-2 medium's shape (24 layers, width 1024, 16 heads, MLP 4096, vocab 50257), fp32, AdamW,
batch ``--batch`` x ``--seq``; compiled from shapes only, nothing is allocated or run. The
temporary bytes are what the step needs beyond its arguments (parameters, optimizer state,
batch) and outputs: the activations kept for the backward pass and the work buffers, which
checkpointing trades for recomputation. At 24 layers the blocks run under scan by default;
``--layouts unrolled,scanned`` measures both.

    python scripts/bench/bench_remat_memory.py                   # ~1-2 min on 2 cores
    python scripts/bench/bench_remat_memory.py --layouts unrolled,scanned --out remat.json
"""

from __future__ import annotations

import argparse
import json

import jax

from compiled_step import lower_train_step, timed_compile
from jaxreason.models import CausalLM, GPT2Config


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--layouts", default="scanned", help="comma list of unrolled, scanned")
    p.add_argument("--out", default=None, help="write the results as JSON to this path")
    return p.parse_args()


def main():
    a = parse_args()
    gib = 1024 ** 3
    print(f"jax {jax.__version__} on {jax.default_backend()}; GPT-2 medium shape, fp32, AdamW, "
          f"batch {a.batch} x {a.seq}")
    head = f"{'layout':9s} {'remat':6s} {'temp GiB':>9s} {'args GiB':>9s} {'out GiB':>8s} " \
           f"{'compile s':>10s}"
    print(head + "\n" + "-" * len(head))
    rows = []
    for layout in a.layouts.split(","):
        for remat in ("none", "block", "dots"):
            model = CausalLM(GPT2Config.small(num_layers=24, hidden_size=1024, num_heads=16,
                                              intermediate_size=4096, remat=remat,
                                              scan_layers=layout == "scanned"))
            jax.clear_caches()
            trace_s, compile_s, compiled = timed_compile(
                lambda: lower_train_step(model, a.batch, a.seq))
            mem = compiled.memory_analysis()
            row = dict(layout=layout, remat=remat, temp_bytes=mem.temp_size_in_bytes,
                       argument_bytes=mem.argument_size_in_bytes,
                       output_bytes=mem.output_size_in_bytes, compile_s=trace_s + compile_s)
            rows.append(row)
            print(f"{layout:9s} {remat:6s} {row['temp_bytes'] / gib:9.2f} "
                  f"{row['argument_bytes'] / gib:9.2f} {row['output_bytes'] / gib:8.2f} "
                  f"{row['compile_s']:10.1f}")
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"batch": a.batch, "seq": a.seq, "rows": rows}, f, indent=2)
        print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
