"""Curves and ``report.md`` of the K/V-transplant study, beside the original's logged runs.

The original (MMacDougall06, cot-correctness-detection-test) logged two runs of a LLaMA-7B
Alpaca chooser on its 2,748-row CSV: unmasked, best test f_c 0.787 (mean over its 194 tests
0.690), and masked, best 0.640 (mean over 99 tests 0.540), both as the mean of the per-batch
ratios over five test batches. Its first test (after one step) logged f_c 0.482, f_c_oc 0.227,
f_c_oi 1.0: exactly what a policy that always answers "2" scores on its split.
"""

from __future__ import annotations

from pathlib import Path

from jaxreason.plotting import new_figure, save_png
from jaxreason.studies.world_model import check_sentence

ORIGINAL = {"unmasked": {"best": 0.787, "mean": 0.690, "tests": 194},
            "masked": {"best": 0.640, "mean": 0.540, "tests": 99},
            "always_2_first_test": {"f_c": 0.482, "f_c_oc": 0.227, "f_c_oi": 1.0}}


def plot_curves(out: Path, log: list[dict], metrics: dict) -> list[Path]:
    """Test f_c per step and condition, as true rates and as the original's mean of batch
    means, with the reference policies and chance marked."""
    refs = metrics["dataset"]["reference_policies_test"]
    fig = new_figure((11, 4.2))
    for ax, key, title in ((fig.add_subplot(1, 2, 1), "test_f_c", "true rate"),
                           (fig.add_subplot(1, 2, 2), "test_orig_f_c", "mean of batch means")):
        for condition in metrics["conditions"]:
            pts = [(r["step"], r[key]) for r in log if r["condition"] == condition and key in r]
            if pts:
                ax.plot(*zip(*pts), marker=".", label=condition)
        agg = "true_rate" if key == "test_f_c" else "batch_mean"
        for name, style in (("follow_choice", "--"), ("always_2", ":")):
            ax.axhline(refs[name][agg]["f_c"], color="gray", ls=style, label=f"{name} policy")
        ax.axhline(0.5, color="black", lw=0.6, label="chance")
        ax.set(xlabel="optimizer step", ylabel="test f_c", ylim=(0, 1.02),
               title=f"test f_c ({title}, {metrics['mode']} mode)")
        ax.legend(fontsize=7)
    return [save_png(fig, out / "test_f_c.png")]


def _f(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def write_report(path: Path, m: dict, config) -> Path:
    ds = m["dataset"]
    mode = m["mode"]
    variant = "masked" if m["masked"] else "unmasked"
    lines = [f"# CoT correctness by K/V transplant ({mode} mode, {variant})", "",
             f"Data: {m['data']}. Model: {m.get('model', 'not loaded (stats_only)')}. Every number "
             f"below was produced in `{mode}` mode; `orig` columns use the original's "
             "aggregation (mean of per-batch ratios over test batches of "
             f"{config.test_batch}), the others are true rates over the whole split."
             + check_sentence(m.get("model_check")), "",
             "## Data", "",
             f"{ds['rows']} rows: {ds['train_rows']} train (of which {ds['val_rows']} held out "
             f"for validation), {ds['test_rows']} test. The choice argument picks the correct "
             f"chain in {_f(ds['choice_correct'])} of rows ({_f(ds['choice_correct_test'])} on "
             f"the test split; the original: 0.594 and 0.640); slot 1 is the incorrect chain in "
             f"{_f(ds['swapped'])} ({_f(ds['swapped_test'])} on test).", "",
             "| reference policy (test) | f_c | f_c_oc | f_c_oi | orig f_c | orig f_c_oc | "
             "orig f_c_oi |", "|---|---|---|---|---|---|---|"]
    for name, r in ds["reference_policies_test"].items():
        t, b = r["true_rate"], r["batch_mean"]
        lines.append(f"| {name} | {_f(t['f_c'])} | {_f(t['f_c_oc'])} | {_f(t['f_c_oi'])} | "
                     f"{_f(b['f_c'])} | {_f(b['f_c_oc'])} | {_f(b['f_c_oi'])} |")
    o = ORIGINAL["always_2_first_test"]
    lines += ["", f"On the original's CSV the always-2 policy scores orig f_c {o['f_c']}, f_c_oc "
              f"{o['f_c_oc']}, f_c_oi {o['f_c_oi']}: exactly its logged first test.", ""]
    if m["conditions"]:
        lines += ["## Training", "",
                  f"LoRA r={config.lora_rank}, alpha={config.lora_alpha:g} on q, k, v, o "
                  f"({config.adapters} adapter for arguer and chooser); AdamW lr {config.lr:g}, "
                  f"eps {config.eps:g}; {config.subbatches_per_step} sub-batches of "
                  f"{config.subbatch} per step, gradients "
                  f"{'summed, leftovers spilling into the next epoch' if mode == 'faithful' else 'averaged'}; "
                  f"{config.steps} steps per condition, a test after every step.", "",
                  "| condition | test f_c at step 0 | final test f_c | test f_c at best val "
                  "(step) | orig: best test f_c | orig: mean over tests |",
                  "|---|---|---|---|---|---|"]
        for name, c in m["conditions"].items():
            sel = c.get("selected")
            pick = f"{_f(sel['test_f_c'])} ({sel['step']})" if sel else "n/a"
            lines.append(f"| {name} | {_f(c['initial'].get('test_f_c'))} | "
                         f"{_f(c['final'].get('test_f_c'))} | {pick} | "
                         f"{_f(c.get('best_test_orig_f_c'))} | {_f(c.get('mean_test_orig_f_c'))} |")
        pc = m["conditions"].get("positive_control")
        if pc:
            wo = pc["without_transplant"]["test_f_c"]
            lines += ["", f"Positive control: the incorrect chain carries a marker that only its "
                      f"arguer reads (both chooser slots show the correct chain). With the "
                      f"transplant the chooser reaches test f_c {_f(pc['final']['test_f_c'])}; the "
                      f"same model without it scores {_f(wo)} (its inputs then do not depend on "
                      f"the answer, so it scores the share of whichever slot it prefers)."]
        orig = ORIGINAL[variant]
        lines += ["", f"The original ({variant}, LLaMA-7B Alpaca on its CSV): best test f_c "
                  f"{orig['best']} and mean {orig['mean']} over {orig['tests']} tests (mean of "
                  "batch means; the best is a maximum over every test pass, with no validation "
                  "split).", ""]
    lines += ["Deviations from the original in every mode: the residual stream is float32 (the "
              "original: float64, cast to fp16 before each norm); position ids follow the "
              "attention mask (the original used 0..T-1 under left padding, which RoPE's "
              "relative form and its padding-free attention make equivalent); a sub-batch that "
              "runs out of memory is an error, not skipped.", ""]
    for f in m.get("figures", []):
        lines.append(f"![{f}]({f})")
    lines += ["", f"Run time: {m['seconds']:.0f} s. Per-step rows: `metrics.jsonl`; all numbers: "
              "`metrics.json`.", ""]
    path.write_text("\n".join(lines))
    return path
