"""Few-shot exact-match accuracy of a model on the word problems, per number of steps and per
prompt type.

The demonstrations of a prompt type (``<s>`` + the few-shot text) are prefilled once with
:func:`jaxreason.models.generate.prefill_prefix`; each batch of questions (``Question: ...``
and, but for equation_only, ``Let's think step by step``) is left-padded to one width for the
whole split (one compiled program) and decoded greedily until the blank line that ends a
solution, or ``max_new_tokens``. The answer is the integer of the first
``The answer is N.`` of the continuation; a missing or non-integer answer counts wrong.

Each wrong answer is also classified by where the continuation first leaves the gold chain
(:func:`first_error`): an operand copied wrong from the question or a fact, one carried wrong
from an earlier step, a wrong operator, a wrong result, a missing step. It tells a model that
has not learnt to find its numbers from one that cannot add (``--errors`` prints the counts).

    python -m jaxreason.tasks.word_problems_eval --model runs/world_base/hf \\
        [--split test] [--per_steps 100] [--steps 2] [--prompt_types cot_prompt,text_only] \\
        [--errors] [--out x.json]
"""

from __future__ import annotations

import argparse
import collections
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
EQUATION_RE = re.compile(r"(\d+) ([-+*/]) (\d+) = (\d+)")


def parse_answer(continuation: str) -> int | None:
    m = ANSWER_RE.search(continuation)
    return int(m.group(1)) if m else None


def first_error(problem: WordProblem, continuation: str) -> str:
    """Where ``continuation`` first leaves ``problem``'s gold chain, read from its equations
    (``l op r = result``) in order: ``"right"``; ``"step N: left operand from the question"``
    (or a fact: the gold operand is no earlier step's result), ``"step N: right operand from
    an earlier step"``, ``"step N: operator"``, ``"step N: result of +"`` (arithmetic),
    ``"step N: missing"``; or ``"answer line"`` when every step is right and the answer is
    not."""
    if parse_answer(continuation) == problem.answer:
        return "right"
    found = EQUATION_RE.findall(continuation)
    for n, step in enumerate(problem.steps, start=1):
        if n > len(found):
            return f"step {n}: missing"
        left, op, right, result = found[n - 1]
        for side, got, gold, ref in (("left", left, step.left, step.left_ref),
                                     ("right", right, step.right, step.right_ref)):
            if int(got) != gold:
                source = "the question" if ref is None else "an earlier step"
                return f"step {n}: {side} operand from {source}"
        if op != step.op:
            return f"step {n}: operator"
        if int(result) != step.result:
            return f"step {n}: result of {step.op}"
    return "answer line"


def error_counts(problems: Sequence[WordProblem], continuations: Sequence[str]) -> dict:
    """:func:`first_error` counted over the wrong answers, most frequent first."""
    counts = collections.Counter(first_error(p, c) for p, c in zip(problems, continuations))
    counts.pop("right", None)
    return dict(counts.most_common())


def balanced(problems: Sequence[WordProblem], per_steps: int,
             step_counts: Sequence[int] = STEP_COUNTS) -> list[WordProblem]:
    """The first ``per_steps`` problems of each of ``step_counts``, in split order."""
    out = []
    for n in step_counts:
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
            "first_errors": error_counts(problems, texts),
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


def model_and_split_parser(module: str, doc: str) -> argparse.ArgumentParser:
    """The argument parser of a world-model command: ``--model`` and ``--split``."""
    ap = argparse.ArgumentParser(prog=f"python -m {module}", description=doc,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="local HF directory (weights + tokenizer)")
    ap.add_argument("--split", default="test")
    return ap


def split_or_exit(ap: argparse.ArgumentParser, name: str) -> list[WordProblem]:
    """The problems of split ``name``; an argparse error naming the allowed splits."""
    splits = make_splits()
    if name not in splits:
        ap.error(f"--split {name!r}: allowed {list(splits)}")
    return splits[name]


def cli(argv=None) -> int:
    ap = model_and_split_parser("jaxreason.tasks.word_problems_eval", __doc__)
    ap.add_argument("--per_steps", type=int, default=100, help="problems per step count")
    ap.add_argument("--prompt_types", default=",".join(PROMPT_TYPES))
    ap.add_argument("--steps", default=",".join(map(str, STEP_COUNTS)),
                    help="the step counts to evaluate (comma separated)")
    ap.add_argument("--n_shots", type=int, default=4)
    ap.add_argument("--batch_size", type=int, default=100)
    ap.add_argument("--max_new_tokens", type=int, default=120)
    ap.add_argument("--errors", action="store_true",
                    help="print where the wrong answers first leave the gold chain")
    ap.add_argument("--out", help="write the results (with continuations) as JSON here")
    args = ap.parse_args(argv)
    types = [t for t in args.prompt_types.split(",") if t]
    bad = [t for t in types if t not in PROMPT_TYPES]
    if bad:
        ap.error(f"--prompt_types {bad}: allowed {list(PROMPT_TYPES)}")
    steps = [n.strip() for n in args.steps.split(",") if n.strip()]
    if not steps or any(n not in map(str, STEP_COUNTS) for n in steps):
        ap.error(f"--steps {args.steps!r}: allowed step counts {list(STEP_COUNTS)}, "
                 f"comma separated")
    steps = [int(n) for n in steps]
    split = split_or_exit(ap, args.split)

    model, params = load_pretrained(args.model)
    tokenizer = load_tokenizer(args.model)
    problems = balanced(split, args.per_steps, steps)
    results = evaluate(model, params, tokenizer, problems, types, n_shots=args.n_shots,
                       batch_size=args.batch_size, max_new_tokens=args.max_new_tokens)
    print(table(results))
    if args.errors:
        for t, r in results.items():
            wrong = sum(r["first_errors"].values())
            print(f"\n{t}: first wrong number of the {wrong} wrong answers")
            for kind, n in r["first_errors"].items():
                print(f"  {n:4d}  {kind}")
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
