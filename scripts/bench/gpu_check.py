"""Every GPU row of the benchmarks in one run, one table and one JSON file.

Rows (each in its own subprocess with its own time limit, inside one overall budget):

  models     forward, forward + capture of every hook_resid_post, and greedy generation
             against ``transformers`` on the GPU (``bench_models.py --device cuda``)
  mfu        a ~1.1B Llama training step's model FLOPs utilisation (``bench_train.py
             --rows 3``; ``--peak-tflops``, default 989 = H100/H200 SXM dense bf16)
  decode7b   greedy decoding at a 7B Llama shape (random bf16 weights, no downloads), tokens/s
             without and with capture of every hook_resid_post, and the weight bytes read per
             second (every weight once per step) against ``--bandwidth-gbs``
  attention  ``jax.nn.dot_product_attention`` with ``implementation="cudnn"`` (fused flash
             attention) and ``"xla"`` against the explicit softmax(QK^T)V the hooks need, at
             a 7B layer's attention shape, causal, bf16
  probes     the Think-to-Talk probe fit, vmapped against one probe at a time and sklearn
             (``bench_linear_probes.py``)

A row whose prerequisite is missing (no GPU for jax, no CUDA for torch, cuDNN attention not
available) prints one line saying so and is marked "skipped"; a row that fails or runs out of
time is marked so with the end of its error, and the other rows still run.

``--dry-run`` runs the rows on whatever backend jax has (a CPU) at tiny shapes, to test the
plumbing in a few minutes; the ``models`` row runs there only with ``--dry-run-models``
(it builds GPT-2 small in torch and jax).

    bash scripts/bench/gpu_check.sh                  # on a GPU: < 8 minutes
    bash scripts/bench/gpu_check.sh --dry-run        # anywhere
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROW_LIMITS = {"models": 170, "mfu": 110, "decode7b": 120, "attention": 45, "probes": 75}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", default=",".join(ROW_LIMITS), help="comma list of rows")
    p.add_argument("--budget-s", type=float, default=470.0, help="overall time budget")
    p.add_argument("--dry-run", action="store_true", help="tiny shapes on any backend")
    p.add_argument("--dry-run-models", action="store_true", help="with --dry-run: models row too")
    p.add_argument("--peak-tflops", type=float, default=989.0)
    p.add_argument("--bandwidth-gbs", type=float, default=4800.0,
                   help="memory bandwidth of the GPU (H200: 4800 GB/s, H100 SXM: 3350)")
    p.add_argument("--out", default="gpu_check.json", help="JSON table path")
    p.add_argument("--worker", choices=("decode7b", "attention", "env"), help=argparse.SUPPRESS)
    return p.parse_args()


# ----------------------------------------------------------------------------- workers
def _median_time(fn, repeats=3):
    import statistics

    import jax
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def worker_env(a) -> dict:
    import jax
    out = {"jax_backend": jax.default_backend(), "jax_devices": [str(d) for d in jax.devices()]}
    try:
        import torch
        out["torch_cuda"] = bool(torch.cuda.is_available())
    except ImportError:
        out["torch_cuda"] = False
    return out


def worker_decode7b(a) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from bench_util import matmul_params
    from jaxreason.models import LlamaConfig, from_config
    from jaxreason.models.generate import generate

    if a.dry_run:
        cfg, b, prompt, new = LlamaConfig.tiny(dtype="bfloat16", param_dtype="bfloat16"), 2, 8, 8
    else:
        cfg = LlamaConfig(vocab_size=32000, hidden_size=4096, num_layers=32, num_heads=32,
                          kv_heads=32, intermediate_size=11008, max_position_embeddings=4096,
                          dtype="bfloat16", param_dtype="bfloat16")
        b, prompt, new = 8, 128, 64
    t0 = time.perf_counter()
    model, params = from_config(cfg, seed=0)
    jax.block_until_ready(params)
    init_s = time.perf_counter() - t0
    ids = jnp.asarray(np.random.default_rng(0).integers(3, cfg.vocab_size, (b, prompt)),
                      jnp.int32)

    def run(capture):
        return lambda: generate(model, params, ids, max_new_tokens=new, capture=capture,
                                eos_token_id=None).generated

    plain = _median_time(run(None), 2)
    cap = _median_time(run(["blocks.*.hook_resid_post"]), 2)
    weight_bytes = matmul_params(params, False, cfg.vocab_size, cfg.hidden_size) * 2
    return {"init_s": init_s, "batch": b, "prompt": prompt, "new": new,
            "tok_s": b * new / plain, "tok_s_capture": b * new / cap,
            "capture_overhead": cap / plain - 1,
            "weight_gbs": weight_bytes * new / plain / 1e9, "layers": cfg.num_layers,
            "hidden": cfg.hidden_size}


def _explicit_attention(q, k, v):
    import jax
    import jax.numpy as jnp
    t = q.shape[1]
    scores = jnp.einsum("bthe,bshe->bhts", q, k).astype(jnp.float32) / jnp.sqrt(q.shape[-1])
    causal = jnp.tril(jnp.ones((t, t), bool))
    p = jax.nn.softmax(jnp.where(causal, scores, -1e30), axis=-1).astype(q.dtype)
    return jnp.einsum("bhts,bshe->bthe", p, v)


def worker_attention(a) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    B, T, H, E = (2, 64, 4, 16) if a.dry_run else (8, 2048, 32, 128)
    ks = jax.random.split(jax.random.PRNGKey(0), 3)
    q, k, v = (jax.random.normal(kk, (B, T, H, E), jnp.bfloat16) for kk in ks)
    flop = 4 * B * H * T * T * E / 2  # causal: half of QK^T and PV
    fns = {"explicit": jax.jit(_explicit_attention)}
    for impl in ("xla", "cudnn"):
        fns[impl] = jax.jit(lambda q, k, v, impl=impl: jax.nn.dot_product_attention(
            q, k, v, is_causal=True, implementation=impl))
    ref = np.asarray(fns["explicit"](q, k, v), np.float32)
    out = {"shape": [B, T, H, E]}
    for name, fn in fns.items():
        try:
            got = np.asarray(fn(q, k, v), np.float32)
        except Exception as e:  # cudnn: not a GPU, or no cuDNN flash attention here
            out[name] = {"skipped": f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"}
            continue
        s = _median_time(lambda fn=fn: fn(q, k, v), 5)
        out[name] = {"ms": s * 1e3, "tflops": flop / s / 1e12,
                     "max_abs_diff": float(np.abs(got - ref).max())}
    return out


# ----------------------------------------------------------------------------- driver
def _run(cmd, limit, env=None):
    """(returncode or 'timeout', stdout, stderr) of a subprocess with a time limit."""
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=max(limit, 1), env=env)
        return p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired:
        return "timeout", "", f"no result within {limit:.0f} s"


def _worker(a, name, limit):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", name]
    cmd += ["--dry-run"] if a.dry_run else []
    rc, out, err = _run(cmd, limit)
    if rc != 0:
        return None, f"{'timed out' if rc == 'timeout' else 'failed'}: {err.strip()[-300:]}"
    return json.loads(out.strip().splitlines()[-1]), ""


def _script(a, args, limit):
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        path = f.name
    rc, out, err = _run([sys.executable, os.path.join(HERE, args[0]), *args[1:], "--out", path],
                        limit)
    try:
        if rc != 0:
            return None, f"{'timed out' if rc == 'timeout' else 'failed'}: {err.strip()[-300:]}"
        with open(path) as f:
            return json.load(f), ""
    finally:
        os.unlink(path)


def main():
    a = parse_args()
    if a.worker:
        fn = {"decode7b": worker_decode7b, "attention": worker_attention, "env": worker_env}
        print(json.dumps(fn[a.worker](a)))
        return
    t_start = time.perf_counter()
    left = lambda: a.budget_s - (time.perf_counter() - t_start)  # noqa: E731
    env, why = _worker(a, "env", 120)
    if env is None:
        sys.exit(f"cannot start jax: {why}")
    gpu = env["jax_backend"] in ("gpu", "cuda", "rocm")
    print(f"jax backend {env['jax_backend']} ({', '.join(env['jax_devices'][:2])}); torch CUDA: "
          f"{env['torch_cuda']}" + ("; DRY RUN at tiny shapes" if a.dry_run else ""))
    table = []

    def add(row, value, unit, ref="", status="ok", note=""):
        table.append(dict(row=row, value=value, unit=unit, reference=ref, status=status,
                          note=note))

    def skip(row, why):
        print(f"{row}: skipped ({why})")
        add(row, None, "", status="skipped", note=why)

    def fail(row, why):
        print(f"{row}: {why}")
        add(row, None, "", status="failed", note=why)

    def limit(row):
        return min(ROW_LIMITS[row], left())

    for row in [r for r in a.rows.split(",") if r]:
        if row not in ROW_LIMITS:
            sys.exit(f"--rows: unknown row {row!r}; choose from {list(ROW_LIMITS)}")
        if left() < 10:
            skip(row, "out of the overall time budget")
            continue
        if not gpu and not a.dry_run:
            skip(row, f"jax has no GPU (backend {env['jax_backend']}); --dry-run runs it anyway")
            continue
        print(f"-- {row} (limit {limit(row):.0f} s)", flush=True)
        if row == "models":
            if a.dry_run and not a.dry_run_models:
                skip(row, "dry run without --dry-run-models")
                continue
            if not env["torch_cuda"] and not a.dry_run:
                skip(row, "torch does not see CUDA: no transformers reference on the GPU")
                continue
            res, why = _script(a, ["bench_models.py"] + (
                ["--quick", "--repeats", "1"] if a.dry_run else ["--device", "cuda"]),
                limit(row))
            if res is None:
                fail(row, why)
                continue
            for name, m in res["models"].items():
                for r, v in m["rows"].items():
                    add(f"{name} {r}", v["jax_tok_s"], "tok/s",
                        f"transformers {v['torch_tok_s']:.0f}", note=f"ratio {v['ratio']:.2f}x")
                add(f"{name} capture overhead", 100 * m["capture_overhead"]["jax"], "%",
                    f"transformers {100 * m['capture_overhead']['torch']:+.1f}%")
        elif row == "mfu":
            res, why = _script(a, ["bench_train.py", "--rows", "3", "--steps", "3",
                                   "--peak-tflops", str(a.peak_tflops)]
                               + (["--mfu-tiny"] if a.dry_run else []), limit(row))
            if res is None or "mfu" not in res:
                fail(row, why or "no MFU in the output")
                continue
            m = res["mfu"]
            add("Llama-1B train step MFU", 100 * m["mfu"], "%", "MaxText ~50% on H100",
                note=f"{m['tok_s']:.0f} tok/s, batch {m['batch']}x{m['seq']}; "
                     f"{100 * m['mfu_with_attention']:.1f}% counting attention")
        elif row == "decode7b":
            res, why = _worker(a, "decode7b", limit(row))
            if res is None:
                fail(row, why)
                continue
            shape = f"{res['layers']}L x {res['hidden']}, batch {res['batch']}, {res['new']} new"
            add("decode 7B shape", res["tok_s"], "tok/s", note=shape)
            add("decode 7B shape + capture", res["tok_s_capture"], "tok/s",
                note=f"overhead {100 * res['capture_overhead']:+.1f}%")
            add("decode 7B weight reads", res["weight_gbs"], "GB/s",
                f"bandwidth {a.bandwidth_gbs:.0f} GB/s",
                note=f"{res['weight_gbs'] / a.bandwidth_gbs:.0%} of it")
        elif row == "attention":
            res, why = _worker(a, "attention", limit(row))
            if res is None:
                fail(row, why)
                continue
            for impl in ("explicit", "xla", "cudnn"):
                r = res[impl]
                if "skipped" in r:
                    skip(f"attention {impl}", r["skipped"])
                else:
                    add(f"attention {impl}", r["ms"], "ms", note=f"{r['tflops']:.1f} TFLOP/s, "
                        f"max |diff| {r['max_abs_diff']:.1e}, shape BTHE {res['shape']}")
        elif row == "probes":
            args = (["--quick", "--positions", "6"] if a.dry_run else
                    ["--n", "4000", "--d", "1024", "--steps", "2000", "--loop-positions", "1"])
            res, why = _script(a, ["bench_linear_probes.py", *args], limit(row))
            if res is None:
                fail(row, why)
                continue
            for kind in ("sgd", "logreg"):
                for name in ("loop", "sklearn"):
                    if name in res.get(kind, {}):
                        r = res[kind][name]
                        add(f"probes {kind} vmap vs {name}", r["ratio"], "x",
                            note=f"vmap {res[kind]['vmap']['fit_s']:.2f} s")
    wall = time.perf_counter() - t_start
    print(f"\n{'row':34s} {'value':>12s} {'unit':6s} {'reference':24s} note\n" + "-" * 100)
    for r in table:
        v = "-" if r["value"] is None else f"{r['value']:12.2f}"
        print(f"{r['row']:34s} {v:>12s} {r['unit']:6s} {r['reference']:24s} "
              f"{r['status'] if r['status'] != 'ok' else ''} {r['note']}")
    print(f"total {wall:.0f} s")
    tmp = a.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"env": env, "dry_run": a.dry_run, "wall_s": wall, "rows": table}, f, indent=2)
    os.replace(tmp, a.out)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
