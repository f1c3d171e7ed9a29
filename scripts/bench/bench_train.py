"""Benchmark jaxreason's training step: against torch, across CPU meshes, and MFU on a GPU.

Row 1 (torch): a random GPT-2 small (``transformers.GPT2Config()`` defaults, 124M, with
  dropout set to 0 since jaxreason has none) is built with ``torch.manual_seed(0)``, saved
  with ``save_pretrained`` and loaded into jaxreason with ``load_pretrained``, so both start
  from the same weights. Each framework trains it in fp32 with AdamW (lr 1e-4, betas
  0.9/0.999, eps 1e-8, no weight decay) and global-norm clipping at 1.0, causal-LM loss on
  every token of one fixed random batch (8 x 128; ``--quick``: 2 layers, 4 x 64).
  jaxreason: ``jax.jit(make_train_step(...), donate_argnums=0)`` as the training loop does;
  torch: ``model(ids, labels=ids).loss.backward(); clip_grad_norm_; AdamW.step()`` (torch's
  default AdamW, single-tensor on CPU; ``--torch-adamw fused`` for its fastest CPU kernel).
  The losses of the first two steps must agree (the second checks the optimizer update).
  After 2 warm-up steps, the timed steps alternate torch/jaxreason (so both see the same
  machine load) and the median is reported as tokens/s; ratio = jaxreason/torch (>1: faster).
  "cores" = process CPU time / wall time of the timed steps. ``--breakdown`` also times
  forward-only (loss) and forward+backward (no optimizer) to show where the time goes.
  The row also gives both frameworks' model FLOP rate (3x the forward's: 2 per matmul
  weight and token plus causal attention) against XLA's matmul rate measured in the same run.
Row 2 (sharded): a 4-layer GPT-2 (width 256, vocab 8192) trained by jaxreason in
  subprocesses with ``--xla_force_host_platform_device_count`` fake CPU devices: 1 device
  (no mesh) and meshes data=8, fsdp=8, data=2/fsdp=2/tensor=2. The 8 "devices" share the
  host's cores, so this row measures partitioning/collective overhead, not scaling.
Row 3 (GPU only): model FLOPs utilisation of a ~1.1B Llama (hidden 2048, 16 layers, 32
  heads, 8 KV heads, MLP 5632, vocab 32000; bf16 compute, fp32 params), batch 8 x 1024:
  MFU = 6 * n_params * tokens/s / peak (``--peak-tflops``, default 989 = H100 SXM dense bf16).

    source /work/venv/bin/activate
    python scripts/bench/bench_train.py --quick            # 2 CPU cores: ~2 min idle, ~5 busy
    python scripts/bench/bench_train.py --out train.json   # 2 CPU cores: ~4 min idle, ~6-12 busy
    python scripts/bench/bench_train.py --rows 1 --breakdown --steps 3  # where the time goes
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


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="2-layer GPT-2, batch 4 x 64, 3 steps")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 5, quick 3)")
    p.add_argument("--rows", default="1,2,3", help="comma list of rows to run")
    p.add_argument("--breakdown", action="store_true",
                   help="row 1: also time forward-only and forward+backward")
    p.add_argument("--torch-adamw", choices=("default", "foreach", "fused"), default="default",
                   help="row 1: torch AdamW implementation (default: torch's choice on CPU)")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="row 3 peak (bf16 dense)")
    p.add_argument("--mfu-batch", default="8x1024", help="row 3 batch as BxT")
    p.add_argument("--mfu-tiny", action="store_true",
                   help="run row 3 with a tiny Llama on any backend (tests the code path)")
    p.add_argument("--out", default=None, help="write the results as JSON to this path")
    p.add_argument("--worker", choices=("sharded",), help=argparse.SUPPRESS)
    p.add_argument("--devices", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--mesh", default="", help=argparse.SUPPRESS)
    a = p.parse_args()
    a.steps = a.steps or (3 if a.quick else 5)
    a.rows = {int(r) for r in a.rows.split(",")}
    return a


args = parse_args()
if args.worker:  # fake CPU devices must be configured before jax is imported
    os.environ["JAX_PLATFORMS"] = "cpu"
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={args.devices}").strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from bench_util import (cpu_line, limits_line, machine_limits, matmul_params,  # noqa: E402
                        own_cpu_seconds, transformer_flops)
from jaxreason import sharding as sh  # noqa: E402
from jaxreason.models import GPT2Config, LlamaConfig, count_params, from_config  # noqa: E402
from jaxreason.train import objectives  # noqa: E402
from jaxreason.train.config import OptimizerSection, ScheduleSection  # noqa: E402
from jaxreason.train.loop import TrainState, make_train_step  # noqa: E402
from jaxreason.train.masks import trainable_optimizer  # noqa: E402
from jaxreason.train.optim import build_optimizer  # noqa: E402

WARMUP, LR, CLIP = 2, 1e-4, 1.0
MESHES = ("", "data=8", "fsdp=8", "data=2,fsdp=2,tensor=2")


def make_batch(vocab: int, b: int, t: int, seed: int = 0) -> dict:
    ids = np.random.default_rng(seed).integers(0, vocab, (b, t), dtype=np.int32)
    return {"tokens": ids, "attention_mask": np.ones((b, t), np.int32),
            "loss_mask": np.ones((b, t), np.float32)}


def jax_trainer(model, params, steps: int, mesh=None):
    """(jitted step, initial TrainState) exactly as ``jaxreason.train.loop.main`` builds them."""
    opt = OptimizerSection(lr=LR, weight_decay=0.0, grad_clip=CLIP)
    base, _ = build_optimizer(opt, ScheduleSection(), steps, params)
    tx = trainable_optimizer(base, params, "all")
    with sh.activation_rules(mesh):
        opt_state = jax.jit(tx.init)(params)
    state = TrainState(jnp.zeros((), jnp.int32), params, opt_state,
                       jax.random.key_data(jax.random.PRNGKey(0)))
    if mesh is not None:
        state = state.replace(step=jax.device_put(state.step, sh.replicated(mesh)),
                              rng=jax.device_put(state.rng, sh.replicated(mesh)))
    fn = make_train_step(model, tx, objectives.get("causal_lm"), {}, 1, False)
    with sh.activation_rules(mesh):
        step = jax.jit(fn, donate_argnums=0)
    return step, state


class Timer:
    """Wall and process CPU time of each call; the first ``skip`` calls (warm-up) are left
    out of ``median`` (wall seconds) and ``cores`` (CPU time / wall time: busy cores)."""

    def __init__(self, skip: int = 0):
        self.skip, self.wall, self.cpu = skip, [], []

    def __call__(self, fn):
        c0, t0 = own_cpu_seconds(), time.perf_counter()
        out = fn()
        self.wall.append(time.perf_counter() - t0)
        self.cpu.append(own_cpu_seconds() - c0)
        return out

    median = property(lambda self: statistics.median(self.wall[self.skip:]))
    cores = property(lambda self: sum(self.cpu[self.skip:]) / sum(self.wall[self.skip:]))
    cpu_median = property(lambda self: statistics.median(self.cpu[self.skip:]))


def train(step, state, batch, timed: int):
    """WARMUP + ``timed`` steps; returns (state, losses, Timer of the timed ones)."""
    box, timer = [state], Timer(skip=WARMUP)

    def run():
        box[0], m = step(box[0], batch)
        return float(m["loss"])  # blocks until the step is done

    losses = [timer(run) for _ in range(WARMUP + timed)]
    return box[0], losses, timer


# ----------------------------------------------------------------------------- row 1
def row_torch(a) -> dict:
    import torch
    import transformers

    from jaxreason.models import load_pretrained

    torch.set_num_threads(os.cpu_count())
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    b, t = (4, 64) if a.quick else (8, 128)
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                  **({"n_layer": 2} if a.quick else {}))
    hf = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa",
                                                       dtype=torch.float32)
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        hf.save_pretrained(tmp)
        model, params = load_pretrained(tmp)
    hf.train()
    n_params = count_params(params)
    print(f"\n== row 1: GPT-2 {cfg.n_layer} layers, {n_params / 1e6:.1f}M params, batch {b} x {t}"
          f", fp32, AdamW lr {LR} clip {CLIP}; torch {torch.get_num_threads()} threads, "
          f"{a.torch_adamw} AdamW")
    batch = make_batch(model.config.vocab_size, b, t)
    ids = torch.from_numpy(batch["tokens"]).long()
    impl = {} if a.torch_adamw == "default" else {a.torch_adamw: True}
    opt = torch.optim.AdamW(hf.parameters(), lr=LR, betas=(0.9, 0.999), eps=1e-8,
                            weight_decay=0.0, **impl)

    def t_step():
        opt.zero_grad(set_to_none=True)
        loss = hf(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(hf.parameters(), CLIP)
        opt.step()
        return loss.item()

    step, state = jax_trainer(model, params, WARMUP + a.steps)
    del params  # donated to the first step
    jbatch, box = {k: jnp.asarray(v) for k, v in batch.items()}, [state]

    def j_step():
        box[0], metrics = step(box[0], jbatch)
        return float(metrics["loss"])  # blocks until the step is done

    tt, jt = Timer(skip=WARMUP), Timer(skip=WARMUP)
    t_losses, j_losses = [], []
    for _ in range(WARMUP + a.steps):  # alternate so both frameworks see the same load
        t_losses.append(tt(t_step))
        j_losses.append(jt(j_step))
    for i, what in enumerate(("initial weights", "after 1 update")):
        d = abs(t_losses[i] - j_losses[i])
        print(f"step {i + 1} loss ({what}): torch {t_losses[i]:.6f}  jaxreason {j_losses[i]:.6f}"
              f"  |diff| {d:.2e}" + ("" if d < 1e-3 else "   <-- WARNING: losses disagree"))
    first = {"torch": tt.wall[0], "jax": jt.wall[0]}
    res = dict(params=n_params, batch=b, seq=t, torch_losses=t_losses, jax_losses=j_losses,
               first_step_s=first, torch_step_s=tt.median, jax_step_s=jt.median,
               cpu_s={"torch": tt.cpu_median, "jax": jt.cpu_median},
               torch_tok_s=b * t / tt.median, jax_tok_s=b * t / jt.median,
               ratio=tt.median / jt.median, cores={"torch": tt.cores, "jax": jt.cores})
    cfgj = model.config
    flop = transformer_flops(matmul_params(box[0].params, True, cfgj.vocab_size,
                                           cfgj.hidden_size),
                             b * t, cfgj.num_layers, cfgj.hidden_size, t, train=True)
    res.update(step_gflop=flop / 1e9, torch_gflops=flop / tt.median / 1e9,
               jax_gflops=flop / jt.median / 1e9)
    print(f"first step: torch {first['torch']:.2f} s, jaxreason {first['jax']:.2f} s (with "
          "compilation)\n"
          f"step time: torch {tt.median * 1e3:.0f} ms ({tt.cpu_median:.1f} CPU-s, {tt.cores:.2f} "
          f"cores busy), jaxreason {jt.median * 1e3:.0f} ms ({jt.cpu_median:.1f} CPU-s, "
          f"{jt.cores:.2f} cores); last losses torch "
          f"{t_losses[-1]:.4f} jaxreason {j_losses[-1]:.4f}")
    if not a.breakdown:
        return res
    # forward-only and forward+backward (no optimizer), to see where a step's time goes
    params, obj = box[0].params, objectives.get("causal_lm")
    j_fwd = jax.jit(lambda p, bt: obj(model, p, bt, None)[0])
    j_grad = jax.jit(jax.grad(lambda p, bt: obj(model, p, bt, None)[0]))

    def t_fwd():
        with torch.no_grad():
            hf(input_ids=ids, labels=ids).loss.item()

    def t_grad():
        hf.zero_grad(set_to_none=True)
        hf(input_ids=ids, labels=ids).loss.backward()

    rows = {"forward": (t_fwd, lambda: float(j_fwd(params, jbatch))),
            "fwd+bwd": (t_grad, lambda: jax.block_until_ready(j_grad(params, jbatch)))}
    for name, (tf, jf) in rows.items():
        ti, ji = Timer(skip=1), Timer(skip=1)  # one warm-up (compile) call each
        for _ in range(1 + a.steps):
            ti(tf), ji(jf)
        rows[name] = (ti, ji)
    rows["full step"] = (tt, jt)
    print(f"{'breakdown':10s} {'torch ms':>9s} {'jaxreason ms':>13s} {'jax/torch':>10s} "
          f"{'CPU-s torch/jax':>16s} {'cores torch/jax':>16s}")
    for name, (ti, ji) in rows.items():
        print(f"{name:10s} {ti.median * 1e3:9.0f} {ji.median * 1e3:13.0f} "
              f"{ji.median / ti.median:10.2f} {ti.cpu_median:10.2f}/{ji.cpu_median:<5.2f} "
              f"{ti.cores:10.2f}/{ji.cores:.2f}")
    res["breakdown"] = {k: dict(torch_s=ti.median, jax_s=ji.median, torch_cpu_s=ti.cpu_median,
                                jax_cpu_s=ji.cpu_median, torch_cores=ti.cores,
                                jax_cores=ji.cores) for k, (ti, ji) in rows.items()}
    return res


# ----------------------------------------------------------------------------- row 2
def sharded_worker(a) -> None:
    """One mesh configuration; prints one JSON line (run by ``row_sharded`` in a subprocess)."""
    b, t = (8, 64) if a.quick else (16, 128)
    cfg = GPT2Config(vocab_size=8192, hidden_size=256, num_layers=4, num_heads=8,
                     intermediate_size=1024, max_position_embeddings=256)
    model, params = from_config(cfg, seed=0)
    mesh = None
    if a.mesh:
        sizes = {k: int(v) for k, v in (kv.split("=") for kv in a.mesh.split(","))}
        mesh = sh.make_mesh(sh.MeshConfig(**{"data": 1, **sizes}))
    params = sh.place(params, sh.model_shardings(model, mesh))
    step, state = jax_trainer(model, params, WARMUP + a.steps, mesh)
    batch = {k: sh.global_batch(v, mesh) for k, v in make_batch(cfg.vocab_size, b, t).items()}
    with sh.activation_rules(mesh):
        state, losses, timer = train(step, state, batch, a.steps)
    print(json.dumps(dict(mesh=a.mesh or "1 device", devices=jax.device_count(), batch=b, seq=t,
                          params=count_params(state.params), step_s=timer.median,
                          tok_s=b * t / timer.median, cores=timer.cores, cpu_s=timer.cpu_median,
                          first_loss=losses[0])))


def row_sharded(a) -> dict:
    print("\n== row 2: 4-layer GPT-2 (width 256, vocab 8192) on fake CPU devices. The 8 "
          "'devices' share this host's cores,\n   so no speed-up is expected: the row measures "
          "the overhead of partitioning and collectives")
    out = {}
    for spec in MESHES:
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", "sharded", "--devices",
               "8" if spec else "1", "--mesh", spec, "--steps", str(a.steps)]
        proc = subprocess.run(cmd + (["--quick"] if a.quick else []), capture_output=True,
                              text=True, timeout=900)
        if proc.returncode != 0:
            print(f"mesh {spec or '1 device'}: FAILED\n{proc.stderr[-3000:]}")
            continue
        r = out.setdefault(spec or "1 device", json.loads(proc.stdout.strip().splitlines()[-1]))
        print(f"{r['mesh']:24s} {r['devices']} dev {r['step_s'] * 1e3:7.0f} ms/step "
              f"{r['tok_s']:6.0f} tok/s {r['cpu_s']:6.2f} CPU-s/step {r['cores']:5.2f} cores  "
              f"first loss {r['first_loss']:.6f}")
    for r in out.values():
        r["ratio_vs_1"] = r["tok_s"] / out["1 device"]["tok_s"] if "1 device" in out else None
    return out


# ----------------------------------------------------------------------------- row 3
def row_mfu(a) -> dict:
    cfg = LlamaConfig(vocab_size=32000, hidden_size=2048, num_layers=16, num_heads=32,
                      kv_heads=8, intermediate_size=5632, max_position_embeddings=2048,
                      dtype="bfloat16", param_dtype="float32")
    b, t = (int(x) for x in a.mfu_batch.lower().split("x"))
    if a.mfu_tiny:
        cfg, b, t = LlamaConfig.tiny(dtype="bfloat16", param_dtype="float32"), 4, 64
    n = count_params(jax.eval_shape(lambda: from_config(cfg, seed=0)[1]))
    print(f"\n== row 3: Llama {n / 1e9:.3f}B params ({cfg.num_layers} layers, hidden "
          f"{cfg.hidden_size}), bf16 compute / fp32 params, on {jax.devices()[0]}")
    while True:  # halve the batch on out-of-memory (fresh state: a failed step may donate it)
        step, state = jax_trainer(*from_config(cfg, seed=0), WARMUP + a.steps)
        batch = {k: jnp.asarray(v) for k, v in make_batch(cfg.vocab_size, b, t).items()}
        try:
            state, losses, timer = train(step, state, batch, a.steps)
            break
        except Exception as e:  # XlaRuntimeError: RESOURCE_EXHAUSTED
            if "RESOURCE_EXHAUSTED" not in str(e) or b == 1:
                raise
            print(f"batch {b} x {t} does not fit; trying {b // 2} x {t}")
            del state, step
            b //= 2
    tok_s, peak = b * t / timer.median, a.peak_tflops * 1e12
    attn = 12 * cfg.num_layers * cfg.num_heads * cfg.head_dim * t  # attention FLOPs per token
    res = dict(params=n, batch=b, seq=t, step_s=timer.median, tok_s=tok_s, loss=losses[-1],
               mfu=6 * n * tok_s / peak, mfu_with_attention=(6 * n + attn) * tok_s / peak,
               peak_tflops=a.peak_tflops)
    print(f"batch {b} x {t}: {timer.median * 1e3:.0f} ms/step, {tok_s:.0f} tok/s, MFU "
          f"{res['mfu']:.1%} (6N; {res['mfu_with_attention']:.1%} counting attention) of "
          f"{a.peak_tflops:.0f} TFLOP/s")
    return res


def main():
    if args.worker:
        return sharded_worker(args)
    load0 = os.getloadavg()[0]
    print(f"jax {jax.__version__}: backend={jax.default_backend()} devices={jax.devices()}; "
          f"{os.cpu_count()} CPUs, load average {load0:.1f}\n"
          f"median of {args.steps} timed steps after {WARMUP} warm-up steps\n{cpu_line()}")
    limits = machine_limits() if jax.default_backend() == "cpu" and 1 in args.rows else None
    if limits:
        print(limits_line(limits))
    res = {}
    if 1 in args.rows:
        res["torch"] = row_torch(args)
    if 2 in args.rows:
        res["sharded"] = row_sharded(args)
    if 3 in args.rows and (jax.default_backend() == "gpu" or args.mfu_tiny):
        res["mfu"] = row_mfu(args)
    elif 3 in args.rows:
        print(f"\n== row 3: skipped (MFU needs a GPU; jax backend is {jax.default_backend()})")

    print(f"\n{'row':38s} {'tok/s':>10s} {'ratio':>8s}\n" + "-" * 58)
    if "torch" in res:
        r = res["torch"]
        of = (lambda g: f"   {g:5.0f} GFLOP/s = {g / limits['peak_gflops']:.0%} of the matmul "
              f"peak") if limits else (lambda g: f"   {g:5.0f} GFLOP/s")
        print(f"{'1 GPT-2 train step, torch':38s} {r['torch_tok_s']:10.0f}         "
              f"{of(r['torch_gflops'])}\n"
              f"{'1 GPT-2 train step, jaxreason':38s} {r['jax_tok_s']:10.0f} {r['ratio']:7.2f}x"
              f"{of(r['jax_gflops'])}  (ratio: jaxreason/torch)")
    for name, r in res.get("sharded", {}).items():
        print(f"{'2 sharded, ' + name:38s} {r['tok_s']:10.0f} {r['ratio_vs_1']:7.2f}x"
              "  (vs 1 device)")
    if "mfu" in res:
        print(f"{'3 Llama-1B, MFU ' + format(res['mfu']['mfu'], '.1%'):38s} "
              f"{res['mfu']['tok_s']:10.0f}")
    load1 = os.getloadavg()[0]
    if max(load0, load1) > os.cpu_count() + 0.5:
        print(f"note: load average {load0:.1f} -> {load1:.1f} on {os.cpu_count()} CPUs: other "
              "processes competed for the cores, so absolute numbers are noisy (ratios less so)")
    if args.out:
        meta = dict(jax=jax.__version__, backend=jax.default_backend(), cpus=os.cpu_count(),
                    torch_adamw=args.torch_adamw,
                    steps=args.steps, warmup=WARMUP, quick=args.quick, loadavg_start=load0,
                    loadavg_end=load1, cpu=cpu_line(), limits=limits,
                    xla_flags=os.environ.get("XLA_FLAGS", ""))
        with open(args.out, "w") as f:
            json.dump({"meta": meta, **res}, f, indent=2)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
