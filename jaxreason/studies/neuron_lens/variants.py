"""How active the concept neurons are under each prompt variant, and what that says about the
original's claims. A reconstruction: the original's repository has no such analysis.

Per prompt type, Algorithm One runs on that type's own sample of correctly answered problems
(drawn as the original draws them) and for each concept we count, over the valid (example,
position) pairs:

* ``hit_rate``: the share of pairs in which at least one of the concept's neurons is in the
  top-k of some layer;
* ``per_step``: the mean number of the concept's neurons in the top-k lists of a pair;
* ``mean_score``: the mean score ``|a_i| * ||W_down[:, i]||`` of those appearances.

``all`` pools the concepts (any concept neuron). The claims of the original (from its
abstract and an interview) are checked in direction; each sentence names the numbers it
rests on.
"""

from __future__ import annotations

import numpy as np

from jaxreason.studies.neuron_lens.concepts import CONCEPTS

MISSING_OPS = {"add_only": ("subtract", "multiply", "division"),
               "mult_only": ("add", "subtract", "division")}
SMALL_CHANGE = 0.05  # accuracy points (absolute) that count as "barely changes"


def concept_activity(dominant, concept_neurons: dict[str, list]) -> dict[str, dict]:
    """``{concept or 'all': {hit_rate, per_step, mean_score}}`` over the valid pairs."""
    idx, sc, valid = dominant.indices, dominant.scores, dominant.valid
    out = {}
    groups = dict(concept_neurons)
    groups["all"] = [n for c in CONCEPTS for n in concept_neurons.get(c, [])]
    pairs = int(valid.sum())
    for name, neurons in groups.items():
        mask = np.zeros(idx.shape, bool)  # (N, L, T, k): this entry is one of the neurons
        for layer in sorted({n.layer for n in neurons}):
            wanted = np.asarray(sorted({n.index for n in neurons if n.layer == layer}))
            mask[:, layer] = np.isin(idx[:, layer], wanted)
        mask &= valid[:, None, :, None]
        per_pair = mask.sum(axis=(1, 3))  # (N, T)
        out[name] = {"hit_rate": float((per_pair > 0).sum() / max(pairs, 1)),
                     "per_step": float(per_pair.sum() / max(pairs, 1)),
                     "mean_score": float(sc[mask].mean()) if mask.any() else 0.0,
                     "neurons": len({(n.layer, n.index) for n in neurons})}
    out["pairs"] = pairs
    return out


def _spearman(x, y) -> float | None:
    if len(x) < 3 or np.std(x) == 0 or np.std(y) == 0:
        return None
    rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
    return float(np.corrcoef(rx, ry)[0, 1])


def claims(accuracy: dict[str, float], activity: dict[str, dict], ablation: dict,
           mode: str, base: str = "cot_prompt", tests: dict | None = None) -> list[dict]:
    """One verdict per claim (1-6) of the original; ``agrees`` is None where it cannot be
    checked with what was run, or (claim 1) where no difference is significant."""
    out = [_ablation_claim(ablation, tests or {}, mode)]
    types = [t for t in accuracy if t in activity]
    acts = [activity[t]["all"]["per_step"] for t in types]
    rho = _spearman([accuracy[t] for t in types], acts)
    out.append(_claim(2, "concept-neuron activity correlates positively with accuracy across "
                         "prompt types", None if rho is None else rho > 0,
                      f"Spearman rho = {rho:.2f} over {len(types)} prompt types"
                      if rho is not None else "fewer than 3 prompt types with both numbers",
                      mode))
    for n, variant, what in ((3, "text_only", "removing the equations"),
                             (4, "equation_only", "removing the text")):
        out.append(_lower_both(n, what, variant, base, accuracy, activity, mode))
    for variant, missing in MISSING_OPS.items():
        if variant in types and base in types:
            drop = accuracy[variant] < accuracy[base]
            weaker = [c for c in missing if activity[variant][c]["per_step"]
                      < activity[base][c]["per_step"]]
            detail = (f"{variant} accuracy {100 * accuracy[variant]:.1f}% vs "
                      f"{100 * accuracy[base]:.1f}%; weaker activity for {weaker or 'none'} of "
                      f"the missing operations {list(missing)}")
            out.append(_claim(5, f"{variant}: lower accuracy from weaker activity of the "
                                 f"missing operations' neurons",
                              drop and len(weaker) * 2 > len(missing), detail, mode))
    for variant in ("incorrect_label", "incorrect_ood_label"):
        if variant in types and base in types:
            d_acc = accuracy[variant] - accuracy[base]
            a0, a1 = activity[base]["all"]["per_step"], activity[variant]["all"]["per_step"]
            rel = (a1 - a0) / a0 if a0 else 0.0
            small = abs(d_acc) <= SMALL_CHANGE and abs(rel) <= 0.1
            detail = (f"accuracy {100 * d_acc:+.1f} points, concept neurons per step "
                      f"{a0:.2f} -> {a1:.2f} ({100 * rel:+.0f}%)")
            expected = "unverified in the original" if variant == "incorrect_ood_label" else ""
            out.append(_claim(6, f"{variant}: accuracy and activity barely change"
                                 + (f" ({expected})" if expected else ""), small, detail, mode))
    return out


def _ablation_claim(ablation: dict, tests: dict, mode: str) -> dict:
    """Claim 1: per way, the concept neurons against the same-count control (else the
    original's 10), with the paired sign test; agrees when the concept neurons do
    significantly worse (p < 0.05) in every way, disagrees when significantly better in one."""
    text = "knocking out concept neurons hurts more than random neurons"
    parts, verdicts = [], []
    for way, r in ablation.items():
        control = "same_count" if "same_count" in r else "original"
        if "concept" not in r or control not in r:
            continue
        test = tests.get(way, {}).get(f"concept_vs_{control}", {"p": 1.0})
        c, s, p = r["concept"], r[control], test["p"]
        verdicts.append(True if c < s and p < 0.05 else False if c > s and p < 0.05 else None)
        parts.append(f"{way}: {100 * c:.1f}% with the concept neurons vs {100 * s:.1f}% with "
                     f"{control} random ones, sign test p = {p:.2g}")
    if not parts:
        return _claim(1, text, None, "no concept neurons, or no ablation was run", mode)
    agrees = True if all(verdicts) else False if False in verdicts else None
    return _claim(1, text, agrees, "; ".join(parts), mode)


def _lower_both(n, what, variant, base, accuracy, activity, mode) -> dict:
    if variant not in activity or base not in activity:
        return _claim(n, f"{what} ({variant}) lowers accuracy and activity", None,
                      f"{variant} or {base} was not run", mode)
    acc_drop = accuracy[variant] < accuracy[base]
    a0, a1 = activity[base]["all"]["per_step"], activity[variant]["all"]["per_step"]
    return _claim(n, f"{what} ({variant}) lowers accuracy and activity", acc_drop and a1 < a0,
                  f"accuracy {100 * accuracy[variant]:.1f}% vs {100 * accuracy[base]:.1f}%, "
                  f"concept neurons per step {a1:.2f} vs {a0:.2f}", mode)


def _claim(n: int, text: str, agrees, detail: str, mode: str) -> dict:
    return {"claim": n, "text": text, "agrees": agrees, "detail": detail, "mode": mode}
