"""The ``formulas`` training task: teach a model from scratch to write the gold chain of
thought, for the Think-to-Talk study's embedded default model.

Each row packs whole problems of one config, ``source + target`` after ``source + target``
exactly as the few-shot prompt lays them out, so a model trained on rows of 4-6 problems has
seen the prompt's layout and positions before it is evaluated 3-shot. The loss counts the
target tokens only (the chain of thought and its newline); sources are random draws, there
is nothing to learn in them.

Problems are drawn with their own seed and never repeat a (passage, question) of the
evaluation splits (valid, test, probing_train) or of the edit pairs, so the study's
numbers are on problems the model never trained on.
"""

from __future__ import annotations

import random
from typing import Sequence

import numpy as np

from jaxreason.data import TokenDataset
from jaxreason.registry import TASKS
from jaxreason.tasks.formula_tokens import FormulaTokenizer
from jaxreason.tasks.formulas import CONFIGS, MODES, edit_pairs_for, make_splits, sample_problem

HELD_OUT_SPLITS = ("valid", "test", "probing_train")


def held_out_keys(configs: Sequence[str]) -> set:
    """(passage, question) keys the training rows must avoid (the edit pairs of both
    modes: one trained model serves faithful and fixed runs)."""
    keys = set()
    for config in configs:
        splits = make_splits(config)
        keys |= {p.key for name in HELD_OUT_SPLITS for p in splits[name]}
        if config == "2step":
            for mode in MODES:
                for pair in edit_pairs_for(splits, mode=mode):
                    keys |= {pair.base.key, pair.edited.key}
    return keys


def pack_rows(configs: Sequence[str], rows: int, seq_len: int, seed: int, exclude: set,
              weights: Sequence[float] | None = None):
    """tokens, attention_mask, loss_mask of ``rows`` packed rows (right-padded)."""
    tok = FormulaTokenizer()
    rng = random.Random(seed)
    tokens = np.full((rows, seq_len), tok.pad_id, np.int32)
    loss = np.zeros((rows, seq_len), np.float32)
    attn = np.zeros((rows, seq_len), np.int32)
    for r in range(rows):
        config = rng.choices(list(configs), weights=weights)[0]
        at = 0
        while True:
            base = "2step" if config == "2step_in_order" else config
            p = sample_problem(base, rng)
            if config == "2step_in_order":  # 2step's draw, shown in definition order
                p = type(p)(config, p.formulas, tuple(range(len(p.formulas))))
            if p.key in exclude:
                continue
            src, tgt = tok.encode(p.source), tok.encode(p.target)
            if at + len(src) + len(tgt) > seq_len:
                break
            tokens[r, at:at + len(src)] = src
            tokens[r, at + len(src):at + len(src) + len(tgt)] = tgt
            loss[r, at + len(src):at + len(src) + len(tgt)] = 1.0
            at += len(src) + len(tgt)
        if at == 0:
            raise ValueError(f"seq_len={seq_len} is too short for one {config} problem")
        attn[r, :at] = 1
    return tokens, attn, loss


@TASKS.register("formulas")
def formulas_task(seed: int, rows: int = 20000, seq_len: int = 384,
                  configs: Sequence[str] = CONFIGS, weights: Sequence[float] | None = None,
                  data_seed: int = 1000) -> TokenDataset:
    """Packed chain-of-thought rows over ``configs`` (default: all five) for training.

    ``seed`` is the training seed (unused: the rows depend on ``data_seed`` only, so every
    run trains on the same data)."""
    del seed
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        raise ValueError(f"formulas: unknown configs {unknown}; known: {list(CONFIGS)}")
    if weights is not None and len(weights) != len(configs):
        raise ValueError(f"formulas: {len(weights)} weights for {len(configs)} configs")
    tokens, attn, loss = pack_rows(configs, rows, seq_len, data_seed, held_out_keys(configs),
                                   weights)
    return TokenDataset({"tokens": tokens, "attention_mask": attn, "loss_mask": loss},
                        name="formulas")
