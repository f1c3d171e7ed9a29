"""Generating the CoT-correctness CSV with a completion model, as the original did.

The CoT correctness-detection experiment (MMacDougall06, cot-correctness-detection-test)
asked ``text-davinci-003`` three things per math word problem, each in the Alpaca instruction
layout with JSON in and JSON out, the response pre-filled up to the opening quote of the
first field so the completion starts inside it:

1. *argument first*: ``{"question": ...}`` -> ``{"argument": ..., "answer": ...}``; a completion
   splits on ``"`` into 6 pieces (argument piece 0, answer piece 4) or 4 pieces (an unquoted
   number: the answer parsed from piece 3). Kept only if the answer equals the gold answer:
   the correct chain of thought.
2. *answer first*: ``{"answer": ..., "argument": ...}``; exactly 6 pieces (answer piece 0,
   argument piece 4). Kept only if the answer differs from the gold answer: the incorrect one.
3. *choose*: the question and both candidates (each ``argument + " Final answer: " +
   str(float(answer))``, inserted without quotes), slot order swapped with probability 0.5;
   6 pieces, piece 4 must be ``candidate_1`` or ``candidate_2``, piece 0 is the choice argument.

Calls use temperature 0, max_tokens 512, top_p 1, n 1, best_of 1, no stop sequence, through
:class:`jaxreason.llm.LLMClient` (any OpenAI-compatible endpoint, cached, retried). A problem
whose answers fail a rule is skipped. Answers are compared with ``to_float``, which keeps only
``0-9 . /`` (and parses fractions); ``faithful`` mode keeps the original's loss of the minus
sign (-5 equals 5) and its unseeded swap, ``fixed`` mode keeps the sign and draws the swap from
``random.Random(seed)``. The command line (:func:`main`) reads questions and gold answers from
GSM8K-style JSON lines and retries each request up to 20 times, 5 s apart (the original
waited 5 s after an error and gave up after 20); its half-second pause before every call is
left to the client's bounded concurrency.
"""

from __future__ import annotations

import json
import random
import re
from typing import Sequence

from jaxreason.llm import LLMClient, Request
from jaxreason.tasks.readers.cot_choice_csv import CotChoiceRow

ALPACA = ("Below is an instruction that describes a task, paired with an input that provides "
          "further context. Write a response that appropriately completes the request.\n\n"
          "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n")
ARGUMENT_FIRST = ("You will be given a math question as JSON with the key \"question\". Think "
                  "step by step and answer in JSON with the keys \"argument\" (your step-by-step "
                  "argument) and then \"answer\" (the final answer number).")
ANSWER_FIRST = ("You will be given a math question as JSON with the key \"question\". Answer in "
                "JSON with the keys \"answer\" (the final answer number) and then \"argument\" "
                "(your step-by-step argument).")
CHOOSE = ("You will be given a math question and two answer candidates as JSON with the keys "
          "\"question\", \"candidate_1\" and \"candidate_2\". Analyze the answer candidates and "
          "argue which is the best and why. Answer in JSON with the keys \"argument\" and then "
          "\"answer_choice\" (\"candidate_1\" or \"candidate_2\").")
SAMPLING = {"temperature": 0, "max_tokens": 512, "top_p": 1, "n": 1, "best_of": 1}


def question_json(question: str) -> str:
    return json.dumps({"question": question})


def argument_first_prompt(question: str) -> str:
    return ALPACA.format(instruction=ARGUMENT_FIRST, input=question_json(question)) + \
        '{\n"argument": "'


def answer_first_prompt(question: str) -> str:
    return ALPACA.format(instruction=ANSWER_FIRST, input=question_json(question)) + \
        '{\n"answer": "'


def choose_prompt(question: str, candidate_1: str, candidate_2: str) -> str:
    """The candidates go in without quotes, as in the original."""
    body = (f'{{"question": {json.dumps(question)}, "candidate_1": {candidate_1}, '
            f'"candidate_2": {candidate_2}}}')
    return ALPACA.format(instruction=CHOOSE, input=body) + '{\n"argument": "'


def to_float(text: str, keep_sign: bool = False) -> float | None:
    """The number in ``text`` after deleting every character but ``0-9 . /`` (and ``-`` with
    ``keep_sign``); ``a/b`` is a fraction. None when nothing parses."""
    kept = re.sub(r"[^0-9./-]" if keep_sign else r"[^0-9./]", "", str(text))
    try:
        if "/" in kept:
            num, den = kept.split("/", 1)
            return float(num) / float(den)
        return float(kept)
    except (ValueError, ZeroDivisionError):
        return None


def parse_correct(completion: str, gold, keep_sign: bool = False) -> tuple[str, float] | None:
    """(argument, answer) of an argument-first completion that reaches the gold answer."""
    pieces = completion.split('"')
    if len(pieces) == 6:
        argument, answer = pieces[0], to_float(pieces[4], keep_sign)
    elif len(pieces) == 4:
        argument, answer = pieces[0], to_float(pieces[3], keep_sign)
    else:
        return None
    if answer is None or answer != to_float(str(gold), keep_sign):
        return None
    return argument, answer


def parse_incorrect(completion: str, gold, keep_sign: bool = False) -> tuple[str, float] | None:
    """(argument, answer) of an answer-first completion whose answer misses the gold one."""
    pieces = completion.split('"')
    if len(pieces) != 6:
        return None
    answer = to_float(pieces[0], keep_sign)
    if answer is None or answer == to_float(str(gold), keep_sign):
        return None
    return pieces[4], answer


def parse_choice(completion: str) -> tuple[str, str] | None:
    """(choice argument, ``candidate_1``/``candidate_2``) of a choose completion."""
    pieces = completion.split('"')
    if len(pieces) != 6 or pieces[4] not in ("candidate_1", "candidate_2"):
        return None
    return pieces[0], pieces[4]


def candidate(argument: str, answer: float) -> str:
    return f"{argument} Final answer: {answer}"


def generate_rows(problems: Sequence[tuple[str, object]], client: LLMClient,
                  mode: str = "fixed", seed: int = 1) -> tuple[list[CotChoiceRow], dict]:
    """CSV rows for ``problems`` ((question, gold answer) pairs) and a tally of what each rule
    dropped. The two chain requests go out as one batch, the choice requests as a second."""
    if mode not in ("faithful", "fixed"):
        raise ValueError(f"mode={mode!r}; allowed: faithful, fixed")
    keep_sign = mode == "fixed"
    rng = random.Random(seed) if mode == "fixed" else random.Random()
    firsts = client.batch([Request.completion(argument_first_prompt(q), **SAMPLING)
                           for q, _ in problems], desc="argument-first")
    seconds = client.batch([Request.completion(answer_first_prompt(q), **SAMPLING)
                            for q, _ in problems], desc="answer-first")
    tally = {"problems": len(problems), "bad_correct": 0, "bad_incorrect": 0, "bad_choice": 0}
    pending = []
    for (question, gold), a, b in zip(problems, firsts, seconds):
        good = parse_correct(a.text, gold, keep_sign)
        bad = parse_incorrect(b.text, gold, keep_sign)
        if good is None or bad is None:
            tally["bad_correct" if good is None else "bad_incorrect"] += 1
            continue
        swap = rng.random() < 0.5
        pair = (candidate(*good), candidate(*bad))
        c1, c2 = pair[::-1] if swap else pair
        pending.append((question, good, bad, swap, choose_prompt(question, c1, c2)))
    choices = client.batch([Request.completion(p[-1], **SAMPLING) for p in pending],
                           desc="choose")
    rows = []
    for (question, good, bad, swap, _), c in zip(pending, choices):
        parsed = parse_choice(c.text)
        if parsed is None:
            tally["bad_choice"] += 1
            continue
        rows.append(CotChoiceRow(question=question, correct_answer=good[1],
                                 correct_argument=good[0], incorrect_answer=bad[1],
                                 incorrect_argument=bad[0], choice_answer=parsed[1],
                                 choice_argument=parsed[0], swapped=swap, line=len(rows) + 2))
    tally["rows"] = len(rows)
    return rows, tally


def main(argv=None) -> int:
    """``python -m jaxreason.tasks.cot_choice_generate --questions Q.jsonl --out data.csv
    --model M --base_url URL``: questions and gold answers from GSM8K-style JSON lines."""
    import argparse

    from jaxreason.llm import LLMConfig
    from jaxreason.tasks.cot_choice import write_cot_choice_csv
    from jaxreason.tasks.readers import read_gsm8k

    ap = argparse.ArgumentParser(prog="python -m jaxreason.tasks.cot_choice_generate")
    ap.add_argument("--questions", required=True, help="JSON lines with question and answer "
                    "ending in '#### N' (GSM8K's layout)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--base_url", default="https://api.openai.com/v1")
    ap.add_argument("--api_key_env", default="OPENAI_API_KEY")
    ap.add_argument("--cache_dir", default="runs/llm_cache")
    ap.add_argument("--mode", choices=("faithful", "fixed"), default="fixed")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--limit", type=int, default=None)
    args = ap.parse_args(argv)
    problems = [(p.question, p.final_answer) for p in read_gsm8k(args.questions)][:args.limit]
    config = LLMConfig(model=args.model, base_url=args.base_url, api_key_env=args.api_key_env,
                       cache_dir=args.cache_dir, max_attempts=20, backoff_initial_s=5.0,
                       backoff_multiplier=1.0)
    with LLMClient(config) as client:
        rows, tally = generate_rows(problems, client, args.mode, args.seed)
        print(json.dumps({**tally, "usage": client.usage()}))
    write_cot_choice_csv(rows, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
