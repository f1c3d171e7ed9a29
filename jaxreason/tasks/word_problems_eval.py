"""Few-shot exact-match accuracy of a model on the word problems, per number of steps and per
prompt type.

The demonstrations of a prompt type (``<s>`` + the few-shot text) are prefilled once with
:func:`jaxreason.models.generate.prefill_prefix`; each batch of questions (``Question: ...``
and, but for equation_only, ``Let's think step by step``) is left-padded to one width for the
whole split (one compiled program) and decoded greedily until the blank line that ends a
solution, or ``max_new_tokens``. The answer is the integer of the first
``The answer is N.`` of the continuation; a missing or non-integer answer counts wrong.

    python -m jaxreason.tasks.word_problems_eval --model runs/world_base/hf \\
        [--split test] [--per_steps 100] [--prompt_types cot_prompt,text_only] [--out x.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

from jaxreason.models import load_pretrained, load_tokenizer
from jaxreason.models.generate import generate, prefill_prefix
from jaxreason.tasks.word_problem_variants import PROMPT_TYPES, few_shot_prompt, test_prompt
from jaxreason.tasks.word_problems import STEP_COUNTS, WordProblem, make_splits
from jaxreason.tasks.world_tokenizer import stop_token_id

ANSWER_RE = re.compile(r"The answer is (\d+)\.")


def parse_answer(continuation: str) -> int | None:
    m = ANSWER_RE.search(continuation)
    return int(m.group(1)) if m else None


def balanced(problems: Sequence[WordProblem], per_steps: int) -> list[WordProblem]:
    """The first ``per_steps`` problems of each step count, in split order."""
    out = []
    for n in STEP_COUNTS:
        chosen = [p for p in problems if p.n_steps == n][:per_steps]
        if len(chosen) < per_steps:
            raise ValueError(f"only {len(chosen)} {n}-step problems, {per_steps} asked")
        out += chosen
    return out


def evaluate_prompt_type(model, params, tokenizer, problems: Sequence[WordProblem],
                         prompt_type: str = "cot_prompt", *, n_shots: int = 4,
                         demo_seed: int = 0, batch_size: int = 100,
                         max_new_tokens: int = 120) -> dict:
    """Accuracy overall and by step count, with every continuation."""
    demos = few_shot_prompt(prompt_type, n_shots, seed=demo_seed)
    prefix_ids = [tokenizer.bos_token_id] + tokenizer.encode(demos, add_special_tokens=False)
    prefix = prefill_prefix(model, params, prefix_ids)
    stop, pad = stop_token_id(tokenizer), tokenizer.pad_token_id
    rows = tokenizer([test_prompt(p.question, prompt_type) for p in problems],
                     add_special_tokens=False)["input_ids"]
    width = max(map(len, rows))
    texts: list[str] = []
    for lo in range(0, len(rows), batch_size):
        chunk = rows[lo:lo + batch_size]
        chunk = chunk + [chunk[0]] * (batch_size - len(chunk))  # one shape for every batch
        ids = np.full((batch_size, width), pad, np.int32)
        mask = np.zeros((batch_size, width), np.int32)
        for r, row in enumerate(chunk):
            ids[r, width - len(row):], mask[r, width - len(row):] = row, 1
        out = generate(model, params, ids, mask, max_new_tokens=max_new_tokens,
                       eos_token_id=stop, pad_token_id=pad, prefix=prefix)
        gen, n_gen = np.asarray(out.generated), np.asarray(out.num_generated)
        texts += [tokenizer.decode(gen[r, :n_gen[r]].tolist(), skip_special_tokens=True)
                  for r in range(min(batch_size, len(rows) - lo))]
    preds = [parse_answer(t) for t in texts]
    correct = np.asarray([pr == p.answer for pr, p in zip(preds, problems)])
    steps = np.asarray([p.n_steps for p in problems])
    by_steps = {int(n): float(correct[steps == n].mean())
                for n in STEP_COUNTS if (steps == n).any()}
    return {"prompt_type": prompt_type, "n_shots": n_shots, "accuracy": float(correct.mean()),
            "by_steps": by_steps, "count": {int(n): int((steps == n).sum()) for n in by_steps},
            "prefix_tokens": len(prefix_ids), "predictions": preds, "continuations": texts}


def evaluate(model, params, tokenizer, problems: Sequence[WordProblem],
             prompt_types: Sequence[str] = PROMPT_TYPES, **kwargs) -> dict:
    """:func:`evaluate_prompt_type` for each prompt type."""
    return {t: evaluate_prompt_type(model, params, tokenizer, problems, t, **kwargs)
            for t in prompt_types}


def table(results: dict) -> str:
    """Markdown rows: prompt type, overall accuracy, accuracy per step count."""
    lines = ["| prompt type | all | " + " | ".join(f"{n} steps" for n in STEP_COUNTS) + " |",
             "|---|---|" + "---|" * len(STEP_COUNTS)]
    for t, r in results.items():
        cells = [f"{100 * r['by_steps'][n]:.1f}" if n in r["by_steps"] else "-"
                 for n in STEP_COUNTS]
        lines.append(f"| {t} | {100 * r['accuracy']:.1f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cli(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m jaxreason.tasks.word_problems_eval",
                                 description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="local HF directory (weights + tokenizer)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--per_steps", type=int, default=100, help="problems per step count")
    ap.add_argument("--prompt_types", default=",".join(PROMPT_TYPES))
    ap.add_argument("--n_shots", type=int, default=4)
    ap.add_argument("--batch_size", type=int, default=100)
    ap.add_argument("--max_new_tokens", type=int, default=120)
    ap.add_argument("--out", help="write the results (with continuations) as JSON here")
    args = ap.parse_args(argv)
    types = [t for t in args.prompt_types.split(",") if t]
    bad = [t for t in types if t not in PROMPT_TYPES]
    if bad:
        ap.error(f"--prompt_types {bad}: allowed {list(PROMPT_TYPES)}")
    splits = make_splits()
    if args.split not in splits:
        ap.error(f"--split {args.split!r}: allowed {list(splits)}")

    model, params = load_pretrained(args.model)
    tokenizer = load_tokenizer(args.model)
    problems = balanced(splits[args.split], args.per_steps)
    results = evaluate(model, params, tokenizer, problems, types, n_shots=args.n_shots,
                       batch_size=args.batch_size, max_new_tokens=args.max_new_tokens)
    print(table(results))
    if args.out:
        target = Path(args.out)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        with os.fdopen(fd, "w") as f:
            json.dump(results, f, indent=1)
        os.replace(tmp, target)
    return 0


if __name__ == "__main__":
    sys.exit(cli())
