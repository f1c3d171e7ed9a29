"""``report.md`` for the MechanisticProbe k-th smallest study: the trained model's probing
scores beside the random baseline and the figures the original repository committed (Hou et
al., 2023, github.com/yifan-h/MechanisticProbe, its result PDFs under ``tmp/``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

# The original's finetuned GPT-2 (min01), head-averaged last-token attention by size rank per
# layer (decoded from the result PDFs committed in the original repository, +-0.01).
ORIGINAL_RANK_ATTENTION = {
    "1st smallest": [.07, .15, .26, .23, .19, .17, .14, .15, .15, .07, .07, .10],
    "2nd smallest (answer)": [.07, .13, .17, .14, .15, .12, .11, .09, .30, .28, .42, .11],
    "3rd smallest": [.07, .11, .11, .09, .10, .09, .08, .07, .13, .06, .07, .06],
}


def _fmt(v) -> str:
    return "nan" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.3f}"


def write_report(path: Path, m: dict, config) -> Path:
    mode = m["mode"]
    rank = np.asarray(m["attention_by_rank_layer"])  # (S, L)
    layers = rank.shape[1]
    top_rank = int(np.argmax(rank[:, -3:].mean(1)))
    lines = [
        f"# MechanisticProbe, k-th smallest (K={m['k']}, 0-based), mode `{mode}`",
        "",
        f"Model: {config.train.model.preset or config.train.model.hf_path}, vocabulary "
        f"`{m['vocab']}`. Every number below was produced in `{mode}` mode.",
        "",
        "| quantity | trained | random init |",
        "|---|---|---|",
        f"| test accuracy | {_fmt(m['test_accuracy'])} | {_fmt(m['random_test_accuracy'])} |",
        f"| P1 F1 (useful vs not) | {_fmt(m['f1_p1_trained'])} | {_fmt(m['f1_p1_random'])} |",
        f"| P2 F1 (answer among useful) | {_fmt(m['f1_p2_trained'])} | {_fmt(m['f1_p2_random'])} |",
        "",
        f"Probing scores S = (F1 - F1_random) / (1 - F1_random): **S_P1 = {_fmt(m['S_P1'])}**, "
        f"**S_P2 = {_fmt(m['S_P2'])}**.",
        "",
        "## Against the original",
        "",
        "The paper's tables were not available to check against; the original repository's "
        "figures for min01 on GPT-2 small show layers 2-8 spreading attention over the two "
        "smallest numbers and layers 9-11 concentrating on the answer (up to .42), against a "
        "near-uniform 1/16 for the untrained model.",
        "",
        f"Here ({layers} layers), the last {min(3, layers)} layers attend most to size rank {top_rank + 1} "
        f"(the answer is rank {m['k'] + 1}); attention to ranks 1..{m['k'] + 2} by layer:",
        "",
        "| rank | " + " | ".join(f"L{i + 1}" for i in range(layers)) + " |",
        "|---|" + "---|" * layers,
    ]
    for r in range(min(m["k"] + 2, rank.shape[0])):
        lines.append(f"| {r + 1} | " + " | ".join(f"{v:.2f}" for v in rank[r]) + " |")
    lines += ["", "Original (12 layers):", "",
              "| rank | " + " | ".join(f"L{i + 1}" for i in range(12)) + " |",
              "|---|" + "---|" * 12]
    for name, row in ORIGINAL_RANK_ATTENTION.items():
        lines.append(f"| {name} | " + " | ".join(f"{v:.2f}" for v in row) + " |")
    agree = top_rank == m["k"]
    lines += ["", ("Agreement: as in the original, the deepest layers focus on the answer's size "
                   "rank." if agree else
                   "Difference: the deepest layers do not focus on the answer's rank here; a "
                   "small model trained from scratch can solve the task with a different "
                   "circuit than fine-tuned GPT-2 small."), ""]
    masking = m["masking"]
    lines += ["## Causal analysis", "",
              "Accuracy after masking a fraction of heads (HF head_mask semantics; the random "
              f"policy is the mean of {config.random_mask_draws} draws):", "",
              "| policy | " + " | ".join(["0%"] + [f"{int(f * 100)}%" for f in config.masking_fractions]) + " |",
              "|---|" + "---|" * (len(config.masking_fractions) + 1)]
    for name, accs in masking.items():
        lines.append(f"| {name} | " + " | ".join(f"{a:.2f}" for a in accs) + " |")
    pos_auc = float(np.mean(masking["low position entropy"]))
    size_auc = float(np.mean(masking["low size entropy"]))
    lines += ["", f"Mean accuracy over the curve: low position entropy {pos_auc:.3f}, low size "
              f"entropy {size_auc:.3f}. The original expects pruning low-H_pos heads to hurt "
              "less than pruning low-H_size heads (its printed accuracies are not committed, so "
              "this is unverified): "
              + ("that holds here." if pos_auc > size_auc else "that does not hold here."),
              f"Masking the 40% lowest-H_pos heads leaves accuracy "
              f"{_fmt(m['case_study_40pct_accuracy'])}.", "",
              "## Figures", ""]
    lines += [f"- `{name}`" for name in m["figures"]]
    if mode == "faithful":
        lines += ["", "Faithful-mode quirks in these numbers: kNN rows split at N/2 rows (not "
                  "examples), P2 labels with a constant column ((1+F1)/2), random baseline with "
                  "dropout active, p+1 heads masked, duplicate ranks repeated."]
    else:
        lines += ["", "Fixed mode: kNN split by example, binary P2 label, dropout-free baseline, "
                  "exactly p heads masked, duplicates get distinct ranks."]
    path.write_text("\n".join(lines) + "\n")
    return path
