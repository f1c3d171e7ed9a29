"""The ``copy`` task: ``BOS x1 .. xn SEP x1 .. xn``, loss on the copy only.

A tiny synthetic task with a known solution (attend back n+1 positions), used by the
training tests and the smoke configs: it trains to near-perfect accuracy in a few hundred
steps of a tiny model on a CPU.
"""

from __future__ import annotations

import numpy as np

from jaxreason.data import TokenDataset
from jaxreason.registry import TASKS

BOS, SEP = 1, 2
FIRST_SYMBOL = 3


@TASKS.register("copy")
def copy_task(seed: int, rows: int = 2048, length: int = 8, symbols: int = 16) -> TokenDataset:
    rng = np.random.default_rng(seed)
    x = rng.integers(FIRST_SYMBOL, FIRST_SYMBOL + symbols, size=(rows, length))
    tokens = np.concatenate([np.full((rows, 1), BOS), x, np.full((rows, 1), SEP), x], axis=1)
    loss_mask = np.zeros_like(tokens)
    loss_mask[:, length + 2:] = 1
    return TokenDataset({"tokens": tokens.astype(np.int32),
                         "loss_mask": loss_mask.astype(np.float32)}, name="copy")
