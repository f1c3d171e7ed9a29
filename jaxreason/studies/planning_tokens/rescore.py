"""Score a generation-output file of the original's format against a dataset's test file.

The original's ``eval.py`` writes a JSON list of ``{"generated_text", "result"}`` where the
text is the decoded *full* sequence (prompt and generation) and ``result`` is ``"correct"`` or
``"wrong"``. This command scores each text with this package's extractor for the dataset (on
the full text, as ``eval.py`` does) against the gold answer of its test record, and prints
the accuracy, the accuracy the file's ``result`` fields claim, and how often the two verdicts
agree, so the released outputs and ours are compared by the same code.

Each output is matched to its test record by the question its text starts with
(``Question: <q>``); outputs whose question is not found fall back to their position in the
test set, after the original's draw with replacement (seed 42) when the file holds as many
outputs as that draw.
"""

from __future__ import annotations

import json
from pathlib import Path

from jaxreason.config_io import ConfigError
from jaxreason.tasks.planning import (draw_with_replacement, gold_answer, is_correct,
                                      make_examples)
from jaxreason.tasks.readers import read_planning_json


def read_outputs(path) -> list[dict]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"rescore = {str(path)!r} is not a file; give the JSON list of "
                          "{generated_text, result} the original's eval.py writes")
    try:
        rows = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{p}: not JSON ({e})") from None
    if not isinstance(rows, list) or not rows:
        raise ConfigError(f"{p}: expected a non-empty JSON list of outputs")
    for i, r in enumerate(rows):
        if not isinstance(r, dict) or not isinstance(r.get("generated_text"), str):
            raise ConfigError(f"{p}: entry {i} has no string field 'generated_text'")
        if r.get("result") not in ("correct", "wrong", None):
            raise ConfigError(f"{p}: entry {i} has result={r.get('result')!r}; expected "
                              "'correct' or 'wrong'")
    return rows


def _question_of(text: str) -> str | None:
    start = text.find("Question: ")
    if start < 0:
        return None
    return text[start + len("Question: "):].split("\n", 1)[0].strip()


def rescore(config) -> dict:
    """Accuracy and agreement of one outputs file (see the module docstring)."""
    outputs = read_outputs(config.rescore)
    records = read_planning_json(config.test_file, clean=config.clean)
    tests = [r for r in records if r.split == "test"] or records
    examples = make_examples(tests, config.dataset, config.mode)
    golds = [gold_answer(ex.answer, config.dataset, config.mode) for ex in examples]
    by_question = {}
    for ex, gold in zip(examples, golds):
        by_question.setdefault(ex.question.strip(), gold)
    order = list(range(len(examples)))
    if len(examples) > len(outputs):
        order = draw_with_replacement(len(examples), len(outputs), seed=42)
    correct = agree = claimed = by_text = with_result = 0
    for i, out in enumerate(outputs):
        text = out["generated_text"]
        gold = by_question.get(_question_of(text) or "")
        if gold is not None:
            by_text += 1
        elif i < len(order):
            gold = golds[order[i]]
        else:
            raise ConfigError(f"{config.rescore}: output {i} matches no question of "
                              f"{config.test_file} and lies past its {len(examples)} records")
        ok = is_correct(text, gold, config.dataset, config.mode)
        correct += ok
        if out.get("result") is not None:
            with_result += 1
            claimed += out["result"] == "correct"
            agree += ok == (out["result"] == "correct")
    n = len(outputs)
    metrics = {"mode": config.mode, "dataset": config.dataset, "outputs": n,
               "accuracy": correct / n, "scored_text": "full sequence",
               "matched_by_question": by_text, "matched_by_position": n - by_text}
    if with_result:
        metrics.update(released_accuracy=claimed / with_result, agreement=agree / with_result)
    return {"rescore": metrics, "summary": metrics}
