"""Figures and ``report.md`` for the Think-to-Talk study.

The report answers the study's question in sentences with numbers: per task and variable,
the first position (and the layer) where a probe reaches the decodability threshold, whether
that is before the chain of thought starts, the accuracy at the end of the input against
chance, and what each activation patch did to the output and to the probes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from jaxreason.probe.heatmaps import display_token, plot_accuracy_by_position, plot_probe_heatmap


def task_figures(out: Path, task: str, acc: dict, indices, tokens, chance, src_len: int,
                 config) -> list[Path]:
    """One heat map (position x layer) per probe kind and variable."""
    paths = []
    for kind in config.probe.probes:
        grid = np.stack([acc[(kind, i)] for i in indices])  # (layers, P, J)
        for var in range(grid.shape[2]):
            paths.append(plot_probe_heatmap(
                grid[:, :, var], list(indices), tokens, float(chance[var]),
                f"{task}: v{var} probe accuracy ({kind}, {config.mode})",
                out / f"heatmap_{task}_{kind}_v{var}.png", markers={src_len: "CoT starts"}))
    return paths


def patch_figures(out: Path, patching: dict, kept: dict, config) -> list[Path]:
    """Per patch setting and variable: best-layer probe accuracy by position, unpatched test
    run vs patched run (scored against the edited problems' answers)."""
    paths = []
    if not patching:
        return paths
    kind = config.probe.probes[0]
    test = kept["test_accuracy"]
    layers = sorted({i for (k, i) in test if k == kind})
    base = np.stack([test[(kind, i)] for i in layers]).max(0)  # (P, J)
    for name, res in patching.items():
        patched = np.stack([np.asarray(res["probe_accuracy"][f"{kind}/{i}"]) for i in layers]).max(0)
        for var in range(base.shape[1]):
            paths.append(plot_accuracy_by_position(
                {"test (unpatched)": base[:, var], f"patched ({name})": patched[:, var]},
                kept["tokens"], float(kept["chance"][var]),
                f"2step v{var}: best-layer {kind} probe accuracy, {name}",
                out / f"patching_{name}_v{var}.png"))
    return paths


MIN_ROWS = 50  # below this many training or test problems a probe accuracy says little


def _scoring(mode: str) -> str:
    return ("every test problem, a missing position counts as wrong" if mode == "faithful"
            else "the solved test problems only")


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _tok(t: str) -> str:
    return f"`{display_token(t)}`"


def write_report(path: Path, m: dict, config) -> Path:
    lines = [f"# Think-to-Talk study ({m['mode']} mode)", ""]
    model = config.model_path or "the embedded Llama trained here on the formula tasks"
    lines += [f"Model: {model}; {m['num_layers']} blocks; hidden-state indices probed: "
              f"{m['layers']} (HF indexing: 0 = embeddings, last = after the final norm).",
              f"Probes: {', '.join(m['probes'])} (every number below names its probe kind and "
              f"the mode `{m['mode']}`). Decodable means accuracy >= {m['threshold']:.2f}.", ""]
    if m.get("train"):
        lines += [f"Training: {m['train'].get('final_step', '?')} steps, final loss "
                  f"{m['train'].get('loss', float('nan')):.4f}.", ""]
    lines += ["## Task accuracy (exact match of the chain of thought)", "",
              "| task | test | probe-train | probe train rows (solved) | test rows probed |",
              "|---|---|---|---|---|"]
    for task, t in m["tasks"].items():
        lines.append(f"| {task} | {_pct(t['test_accuracy'])} | {_pct(t['probing_train_accuracy'])} "
                     f"| {t['probe_train_rows']} | {t['test_rows_probed']} |")
    lines += ["", "## When each variable becomes decodable", ""]
    for task, t in m["tasks"].items():
        chance = ", ".join(f"v{j} {c:.3f}" for j, c in enumerate(t["chance"]))
        lines += [f"### {task}", "", f"Source: {t['source_length']} tokens (positions 0.."
                  f"{t['source_length'] - 1}); the chain of thought starts at position "
                  f"{t['source_length']}. Chance (majority class): {chance}. Probes trained on "
                  f"{t['probe_train_rows']} problems and scored on {t['test_rows_probed']} test "
                  f"problems ({_scoring(m['mode'])}).", ""]
        if min(t["test_rows_probed"], t["probe_train_rows"]) < MIN_ROWS:
            lines += [f"**Too few problems to read these probes** (fewer than {MIN_ROWS}: the model "
                      f"solves {_pct(t['test_accuracy'])} of {task}); the numbers below are "
                      "listed for completeness only.", ""]
        for key, hit in t["first_decodable"].items():
            kind, var = key.split("/")
            end = t.get(f"{kind}_source_end_{var}")
            best = t[f"best_{kind}"][int(var[1:])]
            if hit is None:
                lines.append(f"- {var} ({kind}): never reaches {m['threshold']:.2f} "
                             f"(best {_pct(best)}); at the last input token {_pct(end)}.")
                continue
            where = "**before the chain of thought**" if hit["before_cot"] else "during the chain of thought"
            lines.append(f"- {var} ({kind}): first decodable at position {hit['position']} "
                         f"({_tok(hit['token'])}), layer {hit['layer']}, accuracy "
                         f"{_pct(hit['accuracy'])}: {where}; at the last input token "
                         f"{_pct(end)} (chance {t['chance'][int(var[1:])]:.3f}).")
        lines.append("")
    if m.get("patching"):
        lines += ["## Activation patching (2step counterfactual pairs)", "",
                  "Base run on the original problem; patched run on the edited one with the "
                  "residual stream at hidden indices >= start layer and the listed source "
                  "positions overwritten by the base run's, during the prefill only.", "",
                  "| setting | layers | positions (tokens) | teacher forced | pairs | base acc. "
                  "| accuracy (patch had no effect) | intervention acc. (patch carried over) |",
                  "|---|---|---|---|---|---|---|---|"]
        for name, r in m["patching"].items():
            s = r["setting"]
            toks = " ".join(_tok(t) for t in r["patched_tokens"])
            lines.append(f"| {name} | >= {s['start_layer']} | {s['start']}-{s['end']} ({toks}) | "
                         f"{s['teacher_force'] or 'no'} | {r['pairs']} | {_pct(r['base_accuracy'])} "
                         f"| {_pct(r['accuracy'])} | {_pct(r['intervention_accuracy'])} |")
        lines += ["", _patch_reading(m), ""]
    figs = m.get("figures", [])
    if figs:
        lines += ["## Figures", ""] + [f"- [{f}]({f})" for f in figs] + [""]
    lines += [f"Run time: {m.get('seconds', 0):.0f} s. Rows: `probe_results.jsonl`; all numbers: "
              "`metrics.json`.", ""]
    path.write_text("\n".join(lines))
    return path


def _patch_reading(m: dict) -> str:
    """One sentence per setting on what the patch did."""
    out = []
    for name, r in m["patching"].items():
        moved = r["intervention_accuracy"]
        kept = r["accuracy"]
        if r["setting"]["teacher_force"]:
            out.append(f"With teacher forcing ({name}) the final answer follows the written chain "
                       f"in {_pct(kept)} of pairs (the patched pre-CoT state decides it in the "
                       f"rest, at most {_pct(1 - kept)}).")
        else:
            out.append(f"{name}: the output switched to the base problem's chain in "
                       f"{_pct(moved)} of pairs and ignored the patch in {_pct(kept)}.")
    return " ".join(out)
