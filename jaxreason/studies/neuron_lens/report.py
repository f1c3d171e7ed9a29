"""Tables, figures and ``report.md`` of the neuron-lens study.

Every number names the mode (faithful/fixed) and the parser that produced it; the
original's published figures sit beside ours. They come from a secondary source (the paper's
body was not available): GSM8K accuracy of Llama-2-7B, 8-shot cot_prompt, 16.83% clean,
4.54% with the reasoning neurons corrupted, 11.37% with random neurons corrupted; the
per-concept neuron counts 54, 21, 7, 6, 8, 8, 10 are from a comment in the original code.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from jaxreason import atomic
from jaxreason.plotting import new_figure, save_png
from jaxreason.studies.neuron_lens.concepts import CONCEPTS
from jaxreason.studies.world_model import check_sentence

PUBLISHED = {
    "model": "Llama-2-7B, GSM8K test (1,319), 8-shot cot_prompt, greedy, fp16",
    "accuracy_clean": 0.1683, "accuracy_concept_corrupted": 0.0454,
    "accuracy_random_corrupted": 0.1137,
    "concept_counts": dict(zip(CONCEPTS, (54, 21, 7, 6, 8, 8, 10))),
    "source": "accuracies: a secondary source (the paper body was not available); counts: "
              "a comment in the original code (unverified)",
}
WAY_NAMES = {"corrupt_faithful": "corruption, faithful (cumulative drift, layer de-dup)",
             "corrupt_clean": "corruption, clean (noise once per neuron)",
             "zero": "zeroed activations"}


def layer_histogram(concept_lists: dict, num_layers: int) -> dict[str, list[int]]:
    """Per concept, how many of its neurons each layer holds."""
    return {c: np.bincount([n.layer for n in ns], minlength=num_layers).tolist()
            for c, ns in concept_lists.items()}


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def summary(m: dict) -> dict:
    base = m["analysis_prompt"]
    out = {"mode": m["mode"], "accuracy": {t: round(a[m["mode"]], 4)
                                           for t, a in m["accuracy"].items()},
           "concept_neurons": m["concepts"]["counts"],
           "labeller": m["concepts"]["labeller"]}
    out["ablation"] = {w: {k: round(v[m["mode"]], 4) for k, v in rows.items()}
                       for w, rows in m["ablation"].items()}
    out["analysis_prompt"] = base
    out["seconds"] = round(m["seconds"], 1)
    return out


# ----------------------------------------------------------------------------- figures

def figures(out: Path, m: dict) -> list[Path]:
    paths = [_histogram(out / "concept_layers.png", m)]
    if m["ablation"]:
        paths.append(_ablation_plot(out / "ablation.png", m))
    if m["variants"]:
        paths.append(_variant_plot(out / "prompt_variants.png", m))
    return paths


def _histogram(path: Path, m: dict) -> Path:
    hist = m["concepts"]["histogram"]
    L = m["num_layers"]
    fig = new_figure((7, 3.5))
    ax = fig.add_subplot(1, 1, 1)
    bottom = np.zeros(L)
    for c in CONCEPTS:
        counts = np.asarray(hist.get(c, [0] * L), float)
        ax.bar(np.arange(L), counts, bottom=bottom, label=c)
        bottom += counts
    ax.axvspan(-0.5, m["concepts"]["skipped_layers"] - 0.5, color="grey", alpha=0.2,
               label="skipped layers")
    ax.set_xlabel("layer")
    ax.set_ylabel("concept neurons")
    ax.set_title(f"concept neurons per layer ({m['concepts']['labeller']} labeller, "
                 f"{m['mode']} mode)")
    ax.legend(fontsize=7, ncol=2)
    return save_png(fig, path)


def _ablation_plot(path: Path, m: dict) -> Path:
    mode = m["mode"]
    ways = list(m["ablation"])
    targets = [k for k in ("none", "concept", "original", "same_count")
               if any(k in r for r in m["ablation"].values())]
    fig = new_figure((7, 3.5))
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / len(targets)
    for j, t in enumerate(targets):
        vals = [100 * m["ablation"][w].get(t, {}).get(mode, np.nan) for w in ways]
        ax.bar(np.arange(len(ways)) + j * width, vals, width, label=t)
    ax.set_xticks(np.arange(len(ways)) + width * (len(targets) - 1) / 2)
    ax.set_xticklabels(ways)
    ax.set_ylabel(f"accuracy (%), {mode} parser")
    ax.set_title(f"ablation on {m['analysis_prompt']} ({mode} mode)")
    ax.legend(fontsize=7)
    return save_png(fig, path)


def _variant_plot(path: Path, m: dict) -> Path:
    mode = m["mode"]
    types = list(m["variants"])
    fig = new_figure((8, 3.8))
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / len(CONCEPTS)
    for j, c in enumerate(CONCEPTS):
        ax.bar(np.arange(len(types)) + j * width,
               [m["variants"][t][c]["per_step"] for t in types], width, label=c)
    ax.set_xticks(np.arange(len(types)) + 0.4 - width / 2)
    ax.set_xticklabels(types, rotation=20, fontsize=8)
    ax.set_ylabel("concept neurons in the top-k per step")
    acc_ax = ax.twinx()
    acc_ax.plot(np.arange(len(types)) + 0.4 - width / 2,
                [100 * m["accuracy"][t][mode] for t in types], "k-o", label="accuracy")
    acc_ax.set_ylabel(f"accuracy (%), {mode} parser")
    ax.set_title(f"concept-neuron activity and accuracy per prompt type ({mode} mode)")
    ax.legend(fontsize=6, ncol=4, loc="upper left")
    return save_png(fig, path)


# ----------------------------------------------------------------------------- tables

def write_tables(out: Path, m: dict, all_neurons) -> None:
    """``neurons.tsv`` (every dominant neuron) and ``concept_neurons.tsv``."""
    header = "layer\tindex\tname\tscore\tcount\tbest\tconcepts\tpromoted\n"

    def row(n) -> str:
        promoted = " ".join(repr(t.strip()) for t in n.tokens)
        return (f"{n.layer}\t{n.index}\t{n.name}\t{n.score:.4g}\t{n.count}\t{n.best:.4g}\t"
                f"{','.join(n.concepts) or '-'}\t{promoted}\n")
    atomic.write_text(out / "neurons.tsv", header + "".join(map(row, all_neurons)))
    atomic.write_text(out / "concept_neurons.tsv",
                      header + "".join(row(n) for n in all_neurons if n.concepts))


def _accuracy_table(m: dict) -> list[str]:
    lines = ["| prompt type | accuracy, faithful parser | accuracy, fixed parser |",
             "|---|---|---|"]
    for t, a in m["accuracy"].items():
        lines.append(f"| {t} | {_pct(a['faithful'])} | {_pct(a['fixed'])} |")
    return lines


def _ablation_table(m: dict) -> list[str]:
    mode = m["mode"]
    lines = ["| way | no ablation | concept neurons | random (original's 10) | random (same "
             "count) | concept vs same count: only concept right / only random right, p | "
             "original, published |", "|---|---|---|---|---|---|---|"]
    for way, rows in m["ablation"].items():
        cells = [_pct(rows.get(k, {}).get(mode)) for k in ("none", "concept", "original",
                                                             "same_count")]
        t = m.get("ablation_tests", {}).get(way, {}).get("concept_vs_same_count")
        test = "-" if t is None else f"{t['only_first']} / {t['only_second']}, p = {t['p']:.2g}"
        published = ("16.83% / 4.54% / 11.37%" if way == "corrupt_faithful" else "-")
        lines.append(f"| {WAY_NAMES.get(way, way)} | " + " | ".join(cells)
                     + f" | {test} | {published} |")
    return lines


def _variant_table(m: dict) -> list[str]:
    mode = m["mode"]
    lines = ["| prompt type | accuracy | pairs | any concept: hit rate | per step | mean score | "
             + " | ".join(f"{c} per step" for c in CONCEPTS) + " |",
             "|---|---|---|---|---|---|" + "---|" * len(CONCEPTS)]
    for t, v in m["variants"].items():
        cells = [f"{v[c]['per_step']:.2f}" for c in CONCEPTS]
        lines.append(f"| {t} | {_pct(m['accuracy'][t][mode])} | {v['pairs']} | "
                     f"{_pct(v['all']['hit_rate'])} | {v['all']['per_step']:.2f} | "
                     f"{v['all']['mean_score']:.3g} | " + " | ".join(cells) + " |")
    return lines


def _concept_table(m: dict) -> list[str]:
    c = m["concepts"]
    lines = ["| concept | seed words | candidates (seed filter) | concept neurons | original "
             "(GPT-4, Llama-2-7B) |", "|---|---|---|---|---|"]
    for k in CONCEPTS:
        seeds = " ".join(f"`{w}`" for w in c["seeds"][k])
        lines.append(f"| {k} | {seeds} | {c['candidates'][k]} | {c['counts'][k]} | "
                     f"{PUBLISHED['concept_counts'][k]} |")
    return lines


def write_report(path: Path, m: dict) -> Path:
    mode, c = m["mode"], m["concepts"]
    base = m["analysis_prompt"]
    d = m["dominant"]
    L = m["num_layers"]
    lines = [
        f"# Neuron lens (Rai & Yao, ACL 2024): {mode} mode",
        "",
        f"Data: {m['data']}; {m['problems']} problems per prompt type. Model: `{m['model']}` "
        f"({L} layers, F = {m['width']}), compute dtype {m['dtype']}. Every accuracy below "
        f"is from {mode}-mode decoding; the parser is named in each column (the mode's own "
        f"parser, `{mode}`, counts for the sample, the ablation and the claims)."
        + check_sentence(m.get("model_check")),
        "",
        "## Accuracy per prompt type",
        "",
        *_accuracy_table(m),
        "",
        f"Published (secondary source): {PUBLISHED['model']}: "
        f"{_pct(PUBLISHED['accuracy_clean'])} with cot_prompt.",
        "",
        "## Dominant neurons (Algorithm One and Two)",
        "",
        f"{d['examples']} correctly answered {base} problems (random.seed({42}) shuffle), "
        f"{d['steps']} decoding positions from the last prompt token, top {d['top_k']} per "
        f"(position, layer) by |a_i| * ||W_down[:, i]||, computed inside the compiled decoding "
        f"step; {d['valid_pairs']} (example, position) pairs count in {mode} mode. "
        f"{d['neurons']} distinct dominant neurons (per layer {d['per_layer']}). Their value "
        f"vectors are projected through the unembedding "
        f"({'with' if c['projection'] == 'final_norm' else 'without'} the final norm, as used "
        f"for labelling); the final-norm variant shares {100 * d['final_norm_overlap']:.0f}% "
        f"of the top tokens on average. Tables: `neurons.tsv`, `concept_neurons.tsv`, "
        f"`neurons.json`.",
        "",
        "## Concept neurons",
        "",
        f"Labeller: **{c['labeller']}**; seed words: {c['seed_words']}; layers 0.."
        f"{c['skipped_layers'] - 1} skipped (the original skips 0-5 of 32; here "
        f"{c['skipped_layers']} of {L}); a candidate needs at least {c['min_seed_hits']} "
        f"promoted tokens in the seed list.",
        "",
        *_concept_table(m),
        "",
        f"Per-layer histogram: `concept_layers.png` ({c['histogram']}).",
        "",
        "## Ablation",
        "",
        f"Accuracy on {base} ({mode} parser) with the neurons knocked out; noise "
        f"N({m['noise']['mean']}, {m['noise']['std']}) from RandomState({m['noise']['seed']}). "
        f"Concept list: {sum(c['counts'].values())} entries; random controls: "
        f"{ {k: len(v) for k, v in m['targets'].items() if k != 'concept'} } neurons. "
        f"The faithful way hooks {m['faithful_hooked']} (one per layer). The noise vector's "
        f"norm is {m['noise_norm']:.1f} against a mean value-vector norm of "
        f"{m['mean_value_norm']:.2f}, so one corrupted neuron already writes far off the "
        f"model's scale. The p-value is the two-sided exact sign test over the problems "
        f"that only one of the two runs gets right. The published column is clean / concept / "
        f"random for Llama-2-7B on GSM8K.",
        "",
        *_ablation_table(m),
        "",
        _ablation_sentence(m),
        "",
    ]
    if m["variants"]:
        lines += ["## Concept-neuron activity per prompt type (a reconstruction)", "",
                  "Each prompt type's own sample of correct answers; per concept, the mean "
                  "number of its neurons in the top-k lists of a (example, position) pair; hit "
                  "rate = share of pairs with any concept neuron.", "",
                  *_variant_table(m), "", "`prompt_variants.png` plots the same.", ""]
    lines += ["## The original's claims", ""]
    for v in m["claims"]:
        verdict = {True: "agrees", False: "does not agree", None: "cannot tell"}[v["agrees"]]
        lines.append(f"{v['claim']}. *{v['text']}*: our run {verdict} ({v['detail']}; "
                     f"{v['mode']} mode).")
    lines += ["", f"Wall time: {m['seconds']:.0f} s."]
    return atomic.write_text(path, "\n".join(lines) + "\n")


def _ablation_sentence(m: dict) -> str:
    mode = m["mode"]
    parts = []
    for way, rows in m["ablation"].items():
        if "concept" not in rows:
            parts.append(f"{way}: no concept neurons were found, so there is nothing to compare")
            continue
        ctrl = rows.get("same_count") or rows.get("original")
        label = "same-count random" if "same_count" in rows else "random"
        cn, rn = rows["concept"][mode], ctrl[mode]
        key = "concept_vs_same_count" if "same_count" in rows else "concept_vs_original"
        p = m.get("ablation_tests", {}).get(way, {}).get(key, {}).get("p", 1.0)
        if p < 0.05:
            verdict = "hurts more" if cn < rn else "hurts less"
        else:
            verdict = (f"{'lower' if cn < rn else 'not lower'}, but within sampling noise "
                       f"(p = {p:.2g})")
        parts.append(f"{WAY_NAMES.get(way, way)}: concept neurons {_pct(cn)} vs {label} "
                     f"{_pct(rn)} (no ablation {_pct(rows['none'][mode])}): {verdict}")
    return ("Does knocking out the concept neurons hurt more than random neurons of the same "
            "count? " + "; ".join(parts) + f" ({mode} mode). The original: 4.54% vs 11.37% "
            "(16.83% clean).")
