"""Encoded examples to padded arrays: left-padded arguer and chooser rows and the index maps of
the transplant.

Rows are left padded, so a window's positions shift by the row's padding (positions are
absolute columns, as every hook takes them). The arguer rows of example b are ``2b`` (its
slot-1 argument) and ``2b + 1`` (slot 2). ``arg_pos[2b + j, k]`` is the arguer column whose
keys and values land on chooser column ``chooser_pos[b, j * P + k]``; windows shorter than P
repeat their last pair (a repeated position edits nothing twice: the first entry wins). A
shuffled transplant takes slot j's keys and values from another example's slot-j arguer run,
cycling through its window when the chooser's is longer, so every chooser window position
still receives foreign keys and values.

Batches are padded to a fixed row count with weight-0 copies of their first row, and lengths
are rounded up to a bucket, so few shapes are ever compiled.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from jaxreason.studies.kv_transplant.prompts import EncodedItem


def round_up(n: int, bucket: int) -> int:
    return -(-n // bucket) * bucket


def shapes(items: Sequence[EncodedItem], bucket: int) -> tuple[int, int, int]:
    """(arguer length, chooser length, window length) that fit every item, bucketed."""
    ta = max(len(a.ids) for it in items for a in it.arguers)
    tc = max(len(it.chooser.ids) for it in items)
    p = max(n for it in items for _, n in it.chooser.windows)
    return round_up(ta, bucket), round_up(tc, bucket), round_up(p, 8)


def _left_pad(rows: Sequence[Sequence[int]], length: int, pad_id: int):
    ids = np.full((len(rows), length), pad_id, np.int32)
    mask = np.zeros((len(rows), length), np.int32)
    for i, r in enumerate(rows):
        if len(r) > length:
            raise ValueError(f"a row of {len(r)} tokens does not fit the padded length {length}")
        ids[i, length - len(r):] = r
        mask[i, length - len(r):] = 1
    return ids, mask


def _index_map(arg_start: int, arg_n: int, ch_start: int, ch_n: int, p: int):
    """(arguer columns, chooser columns) of one slot: chooser k gets arguer k mod arg_n."""
    k = np.minimum(np.arange(p), ch_n - 1)
    return arg_start + k % arg_n, ch_start + k


def make_batch(items: Sequence[EncodedItem], rows: Sequence[int], lengths: tuple[int, int, int],
               pad_id: int, size: int | None = None, donors: Sequence[int] | None = None) -> dict:
    """The arrays of ``rows`` (indices into ``items``), padded to ``size`` rows; ``donors``
    (same length as ``rows``) names the example whose arguer runs each row receives."""
    ta, tc, p = lengths
    rows = list(rows)
    donors = rows if donors is None else list(donors)
    size = len(rows) if size is None else size
    if not 0 < len(rows) <= size:
        raise ValueError(f"{len(rows)} rows for a batch of {size}")
    weight = np.zeros(size, np.float32)
    weight[:len(rows)] = 1
    fill = size - len(rows)
    rows, donors = rows + [rows[0]] * fill, donors + [donors[0]] * fill
    arg_rows, arg_pos, ch_pos = [], [], []
    for r, d in zip(rows, donors):
        item, donor = items[r], items[d]
        ch_cols = []
        for j in range(2):
            run = donor.arguers[j]
            (a0, an), (c0, cn) = run.windows[0], item.chooser.windows[j]
            a_cols, c_cols = _index_map(a0, an, c0, cn, p)
            arg_rows.append(run.ids)
            arg_pos.append(a_cols + (ta - len(run.ids)))
            ch_cols.append(c_cols + (tc - len(item.chooser.ids)))
        ch_pos.append(np.concatenate(ch_cols))
    arg_ids, arg_mask = _left_pad(arg_rows, ta, pad_id)
    ch_ids, ch_mask = _left_pad([items[r].chooser.ids for r in rows], tc, pad_id)
    return {"arg_ids": arg_ids, "arg_mask": arg_mask, "arg_pos": np.stack(arg_pos).astype(np.int32),
            "ch_ids": ch_ids, "ch_mask": ch_mask, "ch_pos": np.stack(ch_pos).astype(np.int32),
            "label": np.array([items[r].correct_slot - 1 for r in rows], np.int32),
            "orig_correct": np.array([items[r].orig_correct for r in rows], bool),
            "weight": weight}


def derangement(n: int, seed: int) -> np.ndarray:
    """A seeded permutation of ``range(n)`` with no fixed point (each example gets another's
    arguments); n >= 2."""
    if n < 2:
        raise ValueError(f"a shuffled transplant needs at least 2 examples, got {n}")
    perm = np.random.default_rng(seed).permutation(n)
    return np.roll(perm, 1)[np.argsort(perm)]
