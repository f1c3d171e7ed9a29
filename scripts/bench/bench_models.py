"""Benchmark jaxreason's forward pass, capture and generation against HuggingFace/torch.

For each model (a random GPT-2 small, 124M, and a random ~200M Llama with GQA) the script
builds the model in ``transformers`` with a fixed torch seed, saves it with
``save_pretrained``, loads the same weights into jaxreason with ``load_pretrained``, checks
the logits agree, then times, in fp32:

  forward   batch x seq tokens, logits only         torch: model(ids)
            (jaxreason: the fused attention path, jax.nn.dot_product_attention)
  explicit  the same forward on jaxreason's explicit attention path (scores and pattern
            materialised, as when an attention hook is asked for); torch: model(ids) again
  capture   the same, capturing every blocks.*.hook_resid_post
                                                     torch: output_hidden_states=True
  generate  greedy decoding of N new tokens from a short prompt
            (torch: generate(do_sample=False, min_new_tokens=N); jaxreason: eos_token_id=None)

Each row is also held against the machine's own limits, measured in the same run
(``bench_util.machine_limits``): the forwards' model FLOP rate (2 per matmul weight and token
plus causal attention) against XLA's matmul rate at 1024x768x3072 and 2048^3, and
generation's weight reads (every matmul weight once per decoded token, fp32; the time
includes the prefill) against the bandwidth of a large reduction.

Every call runs once untimed (compilation, warm-up), then ``--repeats`` times; the median is
reported. The calls of a model are timed round-robin, so background load hits them
alike. Throughput is batch*seq/time for forwards and batch*new/time for generation; "ratio"
is jaxreason/torch throughput (>1 means jaxreason is faster). "Capture overhead" is
jaxreason's capture time / plain forward time - 1. The machine should otherwise be idle: the
script reports how much CPU other processes used meanwhile and warns when it was significant.

    source /work/venv/bin/activate
    python scripts/bench/bench_models.py --quick               # ~30 s, GPT-2 only
    python scripts/bench/bench_models.py --out bench.json      # full, both models: batch 8 x 256, 64 new
    python scripts/bench/bench_models.py --device cuda --models llama

``--device auto`` runs torch on CUDA when jax's backend is a GPU and torch sees CUDA;
``--device cpu`` forces both frameworks onto the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="small sizes: batch 2 x 64, 16-token prompt, 16 new tokens; gpt2 only "
                        "unless --models is given")
    p.add_argument("--models", default=None, help="comma list of gpt2,llama (default: both)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per row (median reported)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--out", default=None, help="write the results as JSON to this path")
    a = p.parse_args()
    a.models = (a.models or ("gpt2" if a.quick else "gpt2,llama")).split(",")
    bad = set(a.models) - {"gpt2", "llama"}
    if bad:
        p.error(f"unknown models {sorted(bad)}; choose from gpt2, llama")
    a.batch, a.seq, a.prompt, a.new = (2, 64, 16, 16) if a.quick else (8, 256, 32, 64)
    return a


args = parse_args()
if args.device == "cpu":
    os.environ["JAX_PLATFORMS"] = "cpu"  # must be set before jax is imported

import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from bench_util import (cpu_line, limits_line, machine_cpu_seconds, machine_limits,  # noqa: E402
                        matmul_params, own_cpu_seconds, transformer_flops)
from jaxreason.models import CausalLM, count_params, load_pretrained  # noqa: E402
from jaxreason.models.generate import generate  # noqa: E402

HF_CONFIGS = {
    "gpt2": lambda: transformers.GPT2Config(),  # the defaults are GPT-2 small (124M)
    "llama": lambda: transformers.LlamaConfig(
        vocab_size=32000, hidden_size=1024, num_hidden_layers=12, num_attention_heads=16,
        num_key_value_heads=4, intermediate_size=2816, max_position_embeddings=2048,
        tie_word_embeddings=False),
}
CAPTURE = {"blocks.*.hook_resid_post"}


def torch_device(choice: str) -> str:
    gpu_jax = jax.default_backend() in ("gpu", "cuda", "rocm")
    if choice == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: torch does not see a CUDA device")
    if choice == "cuda" or (choice == "auto" and gpu_jax and torch.cuda.is_available()):
        return "cuda"
    return "cpu"


def timed_round_robin(fns: dict, repeats: int):
    """Run every fn once untimed (compile/warm-up), then ``repeats`` rounds timing each fn once
    per round, interleaved so that all of them see the same background load.
    Returns (name -> list of seconds, name -> warm-up result)."""
    warm = {k: fn() for k, fn in fns.items()}
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return times, warm


def cpu_seconds():
    """(CPU seconds used by the whole machine, by this process); machine is None off Linux."""
    return machine_cpu_seconds(), own_cpu_seconds()


def build(name: str, directory: str, dev: str):
    """Random HF model (seeded) saved to ``directory`` and the same weights in jaxreason."""
    torch.manual_seed(0)
    hf = transformers.AutoModelForCausalLM.from_config(
        HF_CONFIGS[name](), attn_implementation="sdpa", dtype=torch.float32)
    hf.save_pretrained(directory)
    hf = hf.to(dev).eval()
    model, params = load_pretrained(directory)
    return hf, model, params


def bench_model(name: str, a, dev: str) -> dict:
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as tmp:
        hf, model, params = build(name, tmp, dev)
    n_torch = sum(p.numel() for p in hf.parameters())
    n_jax = count_params(params)
    print(f"\n== {name}: {n_torch / 1e6:.1f}M params in torch, {n_jax / 1e6:.1f}M in jaxreason")
    rng = np.random.default_rng(0)
    ids_np = rng.integers(0, model.config.vocab_size, (a.batch, a.seq), dtype=np.int32)
    prompt_np = ids_np[:, :a.prompt]
    ids_t = torch.from_numpy(ids_np).long().to(dev)
    prompt_t = torch.from_numpy(prompt_np).long().to(dev)
    ids_j, prompt_j = jax.numpy.asarray(ids_np), jax.numpy.asarray(prompt_np)
    mask_j = jax.numpy.ones_like(prompt_j)

    # ---- parity: same weights, same logits (on a small slice, before any timing)
    small = ids_np[:2, :32]
    with torch.inference_mode():
        ref = hf(torch.from_numpy(small).long().to(dev)).logits.float().cpu().numpy()
    got = np.asarray(model.jit_apply(params, jax.numpy.asarray(small)).logits)
    diff = float(np.abs(ref - got).max())
    print(f"logits max |torch - jaxreason| = {diff:.2e} (max |logit| {np.abs(ref).max():.2f})"
          + ("" if diff < 1e-3 else "   <-- WARNING: larger than 1e-3"))

    # ---- the measured calls
    def t_forward(hidden=False):
        def fn():
            with torch.inference_mode():
                out = hf(ids_t, output_hidden_states=hidden)
            sync()
            return out
        return fn

    def j_forward(capture=None, m=model):
        return lambda: jax.block_until_ready(m.jit_apply(params, ids_j, capture=capture))

    explicit = CausalLM(model.config.replace(attention_impl="explicit"))

    def t_generate():
        with torch.inference_mode():
            out = hf.generate(prompt_t, attention_mask=torch.ones_like(prompt_t),
                              do_sample=False, max_new_tokens=a.new, min_new_tokens=a.new,
                              pad_token_id=0)
        sync()
        return out[:, a.prompt:].cpu().numpy()

    def j_generate():
        out = generate(model, params, prompt_j, mask_j, max_new_tokens=a.new, eos_token_id=None)
        return np.asarray(jax.block_until_ready(out.generated))

    fwd_tokens, gen_tokens = a.batch * a.seq, a.batch * a.new
    fns = {("forward", "torch"): t_forward(), ("forward", "jax"): j_forward(),
           ("explicit", "torch"): t_forward(), ("explicit", "jax"): j_forward(m=explicit),
           ("capture", "torch"): t_forward(True), ("capture", "jax"): j_forward(CAPTURE),
           ("generate", "torch"): t_generate, ("generate", "jax"): j_generate}
    times, warm = timed_round_robin(fns, a.repeats)
    print(f"capture: jaxreason returned {len(warm['capture', 'jax'].captured)} tensors, torch "
          f"{len(warm['capture', 'torch'].hidden_states)} hidden states (embeddings + blocks)")
    rows = {}
    for row, tokens in (("forward", fwd_tokens), ("explicit", fwd_tokens), ("capture", fwd_tokens),
                        ("generate", gen_tokens)):
        t_s, j_s = statistics.median(times[row, "torch"]), statistics.median(times[row, "jax"])
        rows[row] = dict(torch_s=t_s, jax_s=j_s, torch_tok_s=tokens / t_s,
                         jax_tok_s=tokens / j_s, ratio=t_s / j_s,
                         torch_times=times[row, "torch"], jax_times=times[row, "jax"])
        print(f"{row:9s} torch {t_s * 1e3:9.1f} ms   jaxreason {j_s * 1e3:9.1f} ms")
    # against the machine's limits: the forwards' model FLOP rate, decoding's weight reads
    cfg = model.config
    tied = getattr(cfg, "tie_word_embeddings", True)
    n_mm = matmul_params(params, tied, cfg.vocab_size, cfg.hidden_size)
    fwd_flop = transformer_flops(n_mm, fwd_tokens, cfg.num_layers, cfg.hidden_size, a.seq)
    weight_bytes = n_mm * 4 * a.new  # every weight read once per decoding step (fp32)
    for row in ("forward", "capture"):
        for fw in ("torch", "jax"):
            rows[row][f"{fw}_gflops"] = fwd_flop / rows[row][f"{fw}_s"] / 1e9
    for fw in ("torch", "jax"):
        rows["generate"][f"{fw}_weight_gbs"] = weight_bytes / rows["generate"][f"{fw}_s"] / 1e9
    agree = float((warm["generate", "torch"] == warm["generate", "jax"]).mean())
    rows["generate"]["token_agreement"] = agree
    del warm
    overhead = {"jax": rows["capture"]["jax_s"] / rows["forward"]["jax_s"] - 1,
                "torch": rows["capture"]["torch_s"] / rows["forward"]["torch_s"] - 1}
    return dict(params_torch=n_torch, params_jax=n_jax, logits_max_abs_diff=diff, rows=rows,
                capture_overhead=overhead)


def main():
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    torch.set_num_threads(threads)
    transformers.utils.logging.disable_progress_bar()
    dev = torch_device(args.device)
    print(f"jax {jax.__version__}: backend={jax.default_backend()} devices={jax.devices()}")
    print(f"torch {torch.__version__} on {dev} ({torch.get_num_threads()} threads), "
          f"transformers {transformers.__version__}")
    print(f"fp32; forward batch {args.batch} x {args.seq}; generate batch {args.batch}, "
          f"prompt {args.prompt}, {args.new} new tokens; median of {args.repeats}")
    print(cpu_line())
    limits = machine_limits()
    print(limits_line(limits))
    (machine0, own0), wall0 = cpu_seconds(), time.perf_counter()
    results = {name: bench_model(name, args, dev) for name in args.models}
    (machine1, own1), wall = cpu_seconds(), time.perf_counter() - wall0
    others = None if machine0 is None else max(0.0, (machine1 - machine0 - own1 + own0) / wall)

    peak, bw = limits["peak_gflops"], limits["read_gbs"]
    head = (f"{'model':6s} {'row':9s} {'torch tok/s':>12s} {'jaxreason tok/s':>16s} "
            f"{'ratio':>7s}   {'torch':>14s} {'jaxreason':>14s}  of the machine's limit")
    print("\n" + head + "\n" + "-" * len(head))
    for name, res in results.items():
        for row, r in res["rows"].items():
            if row == "generate":
                lim = " ".join(f"{r[f'{fw}_weight_gbs']:6.1f}GB/s {r[f'{fw}_weight_gbs'] / bw:4.0%}"
                               for fw in ("torch", "jax")) + f"  (read bandwidth {bw:.1f} GB/s)"
            else:
                lim = " ".join(f"{r[f'{fw}_gflops']:5.0f}GF/s {r[f'{fw}_gflops'] / peak:4.0%}"
                               for fw in ("torch", "jax")) + f"  (matmul peak {peak:.0f} GFLOP/s)"
            extra = (f"   (greedy tokens agree: {r['token_agreement']:.0%})"
                     if "token_agreement" in r else "")
            print(f"{name:6s} {row:9s} {r['torch_tok_s']:12.1f} {r['jax_tok_s']:16.1f} "
                  f"{r['ratio']:6.2f}x   {lim}{extra}")
    for name, res in results.items():
        o = res["capture_overhead"]
        print(f"{name}: capture overhead jaxreason {o['jax']:+.1%} "
              f"(torch output_hidden_states {o['torch']:+.1%})")
    if others is not None:
        print(f"other processes used {others:.2f} of {os.cpu_count()} cores on average during "
              f"the {wall:.0f} s run" + ("   <-- WARNING: timings are unreliable"
                                        if others > 0.25 else ""))

    if args.out:
        meta = dict(jax=jax.__version__, backend=jax.default_backend(),
                    jax_devices=[str(d) for d in jax.devices()], torch=torch.__version__,
                    torch_device=dev, torch_threads=torch.get_num_threads(),
                    transformers=transformers.__version__, batch=args.batch, seq=args.seq,
                    prompt=args.prompt, new_tokens=args.new, repeats=args.repeats,
                    quick=args.quick, wall_s=wall, other_processes_cores=others,
                    cpu=cpu_line(), limits=limits,
                    xla_flags=os.environ.get("XLA_FLAGS", ""))
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "models": results}, f, indent=2)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
