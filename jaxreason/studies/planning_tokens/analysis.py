"""What the generations and the attention say about the planning tokens.

* **Step counts**: memory and reason steps announced per generation (the first token of each
  type group), and their ratio (the original's outputs: about 1.3:1 on StrategyQA with
  Llama-2, 1:5 on CommonsenseQA, 1:2 on TruthfulQA).
* **Error attribution** where the test records carry gold steps (exact on the embedded world,
  whose chains are deterministic): the generated steps are split at the prefix tokens and
  compared with the gold steps in order; a wrong answer is charged to the first step that
  does not compute the gold step's equation (or, without an equation, whose text differs; a
  missing step counts as differing), under
  that gold step's type, or to the answer line when every step matches. Also: how often the
  type token a model writes matches the gold type of the step it writes.
* **Attention to the planning tokens**: on teacher-forced training sequences, the attention
  mass that queries in the chain of thought put on planning-token keys, per layer, beside the
  share those keys would get from uniform attention over the visible keys; and one example's
  pattern for a chosen layer and head and the mean over heads, for the heat map.
"""

from __future__ import annotations

import re

import jax
import numpy as np

from jaxreason.tasks.planning import PlanningExample, TokenGroups

_NAME_RE = re.compile(r"<(prefix|memory|reason|assignment|answer|rag)_\d+>")
_EQUATION_RE = re.compile(r"(-?\d+)\s*([-+*/x])\s*(-?\d+)\s*=\s*(-?\d+)")


def _norm(text: str) -> str:
    return " ".join(text.split())


def step_matches(generated: str, gold: str) -> bool:
    """Whether a generated step does what the gold step does: the same equation where the
    gold step has one (the world's steps each compute one ``a op b = c``), else the same
    text up to whitespace."""
    want = _EQUATION_RE.search(gold)
    if want is None:
        return _norm(generated) == _norm(gold)
    got = _EQUATION_RE.search(generated)
    return got is not None and got.groups() == want.groups()


def parse_steps(text: str, groups: TokenGroups | None) -> list[tuple[str | None, str]]:
    """(type, text) per generated step, from a generation that starts after the prompt's
    prefix group; the answer group's piece has type ``answer``. Without planning tokens
    (``groups`` None) a step is a line, and the answer line has type ``answer``."""
    if groups is None:
        return [("answer" if "The answer is" in line else None, _norm(line))
                for line in text.split("\n") if line.strip()]
    first = groups.names("prefix")[0]
    steps = []
    for piece in (groups.text("prefix") + text).split(first)[1:]:
        kinds = [m.group(1) for m in _NAME_RE.finditer(piece) if m.group(1) != "prefix"]
        kind = kinds[0] if kinds else None
        steps.append(("memory" if kind == "rag" else kind, _norm(_NAME_RE.sub(" ", piece))))
    return steps


def step_counts(results: list[dict]) -> dict:
    """Mean memory / reason steps per generation and their ratio."""
    if not results:
        return {}
    mem = float(np.mean([r["step_types"]["memory"] for r in results]))
    rea = float(np.mean([r["step_types"]["reason"] for r in results]))
    return {"memory_per_generation": mem, "reason_per_generation": rea,
            "memory_to_reason": mem / rea if rea else None}


def error_attribution(examples: list[PlanningExample], results: list[dict],
                      groups: TokenGroups | None) -> dict:
    """Wrong answers charged to the gold step type of their first wrong step (see above)."""
    charged = {"memory": 0, "reason": 0, "assignment": 0, "answer": 0}
    reached = {"memory": 0, "reason": 0, "assignment": 0}
    failed = {"memory": 0, "reason": 0, "assignment": 0}
    type_hits = type_total = wrong = 0
    for ex, res in zip(examples, results):
        steps = [s for s in parse_steps(res["text"] or "", groups) if s[0] != "answer"]
        first_bad = None
        for i, (gold_type, gold_text) in enumerate(zip(ex.step_types, ex.step_texts)):
            reached[gold_type] += 1
            if i < len(steps):
                type_total += steps[i][0] is not None
                type_hits += int(steps[i][0] == gold_type)
            if i >= len(steps) or not step_matches(steps[i][1], gold_text):
                failed[gold_type] += 1
                first_bad = gold_type
                break
        if not res["correct"]:
            wrong += 1
            charged[first_bad or "answer"] += 1
    return {"wrong_answers": wrong, "first_wrong_step_type": charged,
            "step_error_rate": {t: failed[t] / reached[t] if reached[t] else None
                                for t in reached},
            "type_token_accuracy": type_hits / type_total if type_total else None}


def attention_to_planning(model, params, sequences: list[tuple[list[int], int]],
                          planning_ids, layer: int, head: int) -> dict:
    """Attention of chain-of-thought queries to planning-token keys, per layer; and the first
    sequence's (H, T, T) pattern at ``layer`` for the heat map.

    ``sequences``: (token ids, prompt length) pairs, each run alone (no padding)."""
    planning = np.asarray(sorted(planning_ids))
    L = model.config.num_layers
    mass, uniform, n = np.zeros(L), np.zeros(L), 0
    example = None
    for ids, source_len in sequences:
        arr = np.asarray([ids], np.int32)
        out = model.jit_apply(params, arr, capture={"blocks.*.attn.hook_pattern"})
        is_plan = np.isin(arr[0], planning)
        q = np.arange(source_len, arr.shape[1])  # queries in the chain of thought
        if q.size == 0 or not is_plan.any():
            continue
        visible = np.cumsum(is_plan)[q] / (q + 1)  # uniform attention's share of planning keys
        for i in range(L):
            pat = np.asarray(jax.device_get(out.captured[f"blocks.{i}.attn.hook_pattern"]))[0]
            mass[i] += pat[:, q][:, :, is_plan].sum(-1).mean()
            uniform[i] += visible.mean()
            if i == layer and example is None:
                example = {"ids": list(map(int, ids)), "pattern": pat, "head": head}
        n += 1
    if n == 0:
        return {"examples": 0}
    return {"examples": n, "mass_per_layer": (mass / n).tolist(),
            "uniform_per_layer": (uniform / n).tolist(), "heatmap": example}
