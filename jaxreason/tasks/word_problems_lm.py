"""The ``word_problems`` training task: teach a small model from scratch to solve the world's
word problems with the gold chain of thought.

Each row is ``<s>`` followed by whole problems, each laid out exactly as a full-chain
(``cot_prompt``) few-shot demonstration: ``Question: ...`` / ``Let's think step by step`` /
one step per line / ``The answer is N.`` / blank line. A model trained on these rows has
seen the prompt layout, its positions and problems following problems, so few-shot
demonstrations of that layout steer it at evaluation. Rows are right-padded; a problem that
does not fit is not split, it starts the next row instead.

The loss counts the solution tokens (the steps, the answer line and the blank line that ends
it, which is the evaluation's stop token) with weight 1 and the question tokens with
``question_weight`` (default 0: solutions only). The questions are random draws from the
templates, so their numbers cannot be predicted; but predicting their words teaches the
model the question's structure (which sentence opens with ``Then``, which with ``Next``, where
each sentence's number sits), which is what a step needs to find its operand there. In
1,000 steps of the world base model's shape, a weight of 0.3 took the right operands copied
from the question (what a solutions-only run learns last) from 62% to 100% correct, teacher
forced on held-out problems (in three of four runs with it; the fourth, another seed,
reached 50%); the configured base model uses it.

Problems come from their own seeded stream (``data_seed``) and skip every question of the
held-out splits (valid, test and the demonstration pools), so evaluation numbers are on
problems the model never trained on.
"""

from __future__ import annotations

import itertools
import random
from typing import Iterable, Iterator, Sequence

import numpy as np

from jaxreason.data import TokenDataset
from jaxreason.registry import TASKS
from jaxreason.tasks.word_problems import STEP_COUNTS, held_out_questions, sample_problem
from jaxreason.tasks.world_tokenizer import build_world_tokenizer, save_world_tokenizer


def iter_problems(seed: int, exclude: set, step_counts: Sequence[int] = STEP_COUNTS,
                  weights: Sequence[float] | None = None) -> Iterator:
    """The training stream: problems drawn one after another from ``random.Random(seed)``
    (repeats allowed, held-out questions never), without end."""
    rng = random.Random(seed)
    while True:
        p = sample_problem(rng, rng.choices(list(step_counts), weights=weights)[0])
        if p.question not in exclude:
            yield p


def draw_problems(n: int, seed: int, exclude: set, step_counts: Sequence[int] = STEP_COUNTS,
                  weights: Sequence[float] | None = None) -> list:
    """The first ``n`` problems of :func:`iter_problems`."""
    return list(itertools.islice(iter_problems(seed, exclude, step_counts, weights), n))


def _encoded(problems: Iterable, tokenizer, chunk: int = 1024) -> Iterator:
    """(question ids, solution ids) per problem, tokenized ``chunk`` problems at a time, so
    a stream is drawn and tokenized only as far as the rows use it."""
    source = iter(problems)
    while batch := list(itertools.islice(source, chunk)):
        enc = tokenizer([p.prompt for p in batch] + [p.solution for p in batch],
                        add_special_tokens=False)["input_ids"]
        yield from zip(enc[:len(batch)], enc[len(batch):])


def pack_rows(problems: Iterable, tokenizer, rows: int, seq_len: int,
              question_weight: float = 0.0):
    """tokens, attention_mask, loss_mask of ``rows`` rows of ``seq_len`` packed in order
    from ``problems`` (a sequence or an endless stream; an error when they run out); question
    tokens weigh ``question_weight`` in the loss, solution tokens 1."""
    pairs = _encoded(problems, tokenizer)
    tokens = np.full((rows, seq_len), tokenizer.pad_token_id, np.int32)
    loss = np.zeros((rows, seq_len), np.float32)
    attn = np.zeros((rows, seq_len), np.int32)
    pending = next(pairs, None)
    used = 0
    for r in range(rows):
        tokens[r, 0], at = tokenizer.bos_token_id, 1
        if pending is None:
            raise ValueError(f"{used} problems fill only {r} of {rows} rows")
        while pending is not None:
            q, s = pending
            if at + len(q) + len(s) > seq_len:
                if at == 1:
                    raise ValueError(f"seq_len={seq_len} is too short for one problem "
                                     f"({1 + len(q) + len(s)} tokens)")
                break
            tokens[r, at:at + len(q)] = q
            loss[r, at:at + len(q)] = question_weight
            tokens[r, at + len(q):at + len(q) + len(s)] = s
            loss[r, at + len(q):at + len(q) + len(s)] = 1.0
            at += len(q) + len(s)
            used += 1
            pending = next(pairs, None)
        attn[r, :at] = 1
    return tokens, attn, loss


@TASKS.register("word_problems")
def word_problems_task(seed: int, rows: int = 8000, seq_len: int = 768, data_seed: int = 1000,
                       step_counts: Sequence[int] = STEP_COUNTS,
                       weights: Sequence[float] | None = None,
                       tokenizer_dir: str | None = None,
                       question_weight: float = 0.0) -> TokenDataset:
    """Packed chain-of-thought rows for training (the rows depend on ``data_seed`` only, so
    every run trains on the same data; ``seed`` is unused). ``tokenizer_dir``: also save the
    world's tokenizer there (for ``checkpoint.export_tokenizer``)."""
    del seed
    bad = [n for n in step_counts if n not in STEP_COUNTS]
    if bad:
        raise ValueError(f"word_problems: step_counts {bad}; allowed: {list(STEP_COUNTS)}")
    if weights is not None and len(weights) != len(step_counts):
        raise ValueError(f"word_problems: {len(weights)} weights for {len(step_counts)} "
                         "step counts")
    tokenizer = (save_world_tokenizer(tokenizer_dir) if tokenizer_dir
                 else build_world_tokenizer())
    problems = iter_problems(data_seed, held_out_questions(), step_counts, weights)
    if not 0.0 <= question_weight <= 1.0:
        raise ValueError(f"word_problems: question_weight={question_weight}; allowed: 0..1")
    tokens, attn, loss = pack_rows(problems, tokenizer, rows, seq_len, question_weight)
    return TokenDataset({"tokens": tokens, "attention_mask": attn, "loss_mask": loss},
                        name="word_problems")
