"""Token datasets: arrays in memory or memory-mapped ``.npy`` files, read in deterministic
batches.

A dataset is a dict of equally long arrays (rows are examples): ``tokens`` (N, T) int, and
optionally ``attention_mask`` (N, T), ``loss_mask`` (N, T) marking the target tokens that
count, ``labels`` (N,) and ``predict_at`` (N,) for single-answer objectives, plus any other
per-example arrays an objective reads (a splice index map (N, P), a new-token mask (N, T),
...). Every array is batched and sharded along its rows. The *sequence fields* (``tokens``,
the two masks and whatever the dataset adds to ``seq_fields``) have the positions on their
second axis and are trimmed together when a batch is cut to a length bucket; every other
array is left as it is, whatever its shape. On disk a dataset is a directory of
``<name>.npy`` files opened with ``mmap_mode="r"`` (so a dataset larger than memory trains:
only the rows of the current batch are ever read) and a ``dataset.json`` naming the extra
sequence fields.

Batch ``s`` is a pure function of (seed, step): the row order is a fresh permutation per
epoch drawn from ``seed + epoch``. That is what makes a resumed run see exactly the batches
an uninterrupted run would have seen. With several hosts, each reads only its own slice of
every global batch.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Mapping

import jax
import numpy as np

from jaxreason import atomic
from jaxreason.registry import TASKS

SEQ_FIELDS = frozenset({"tokens", "attention_mask", "loss_mask"})  # always (N, T)
META_FILE = "dataset.json"


class TokenDataset:
    """Rows of token arrays with deterministic, resumable batching.

    ``seq_fields`` names the extra arrays (beyond :data:`SEQ_FIELDS`) whose second axis is the
    sequence, so bucketing trims them with the tokens."""

    def __init__(self, arrays: Mapping[str, np.ndarray], name: str = "dataset",
                 seq_fields: Iterable[str] = ()):
        if "tokens" not in arrays:
            raise ValueError(f"{name}: needs a 'tokens' array; got {sorted(arrays)}")
        n = len(arrays["tokens"])
        for k, v in arrays.items():
            if np.ndim(v) == 0 or len(v) != n:
                raise ValueError(f"{name}: array {k!r} has shape {np.shape(v)} but tokens has "
                                 f"{n} rows; every array needs one row per example")
        if np.asarray(arrays["tokens"]).ndim != 2:
            raise ValueError(f"{name}: tokens must be (rows, seq), got {arrays['tokens'].shape}")
        if n == 0:
            raise ValueError(f"{name}: no rows")
        self.seq_fields = frozenset(SEQ_FIELDS | set(seq_fields))
        seq = arrays["tokens"].shape[1]
        for k in sorted(self.seq_fields & set(arrays)):
            if np.ndim(arrays[k]) < 2 or arrays[k].shape[1] != seq:
                raise ValueError(f"{name}: sequence field {k!r} has shape {arrays[k].shape}; "
                                 f"its second axis must be the {seq} positions of tokens")
        self.arrays = dict(arrays)
        self.name = name

    def __len__(self) -> int:
        return len(self.arrays["tokens"])

    @property
    def seq_len(self) -> int:
        return self.arrays["tokens"].shape[1]

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "TokenDataset":
        """Memory-map the ``.npy`` files of a directory written by :meth:`save`."""
        d = Path(directory)
        if not d.is_dir():
            raise FileNotFoundError(f"dataset directory {str(d)!r} does not exist")
        arrays = {p.stem: np.load(p, mmap_mode="r", allow_pickle=False)
                  for p in sorted(d.glob("*.npy"))}
        if not arrays:
            raise FileNotFoundError(f"{d} holds no .npy arrays")
        meta = json.loads((d / META_FILE).read_text()) if (d / META_FILE).exists() else {}
        return cls(arrays, name=str(d), seq_fields=meta.get("seq_fields", ()))

    def save(self, directory: str | os.PathLike) -> Path:
        """Write every array as ``<name>.npy`` (and the sequence fields as ``dataset.json``)
        into a temp dir, then rename into place."""
        target = Path(directory)
        with atomic.building_dir(target) as tmp:
            for k, v in self.arrays.items():
                np.save(tmp / f"{k}.npy", np.asarray(v), allow_pickle=False)
            extra = sorted(self.seq_fields - SEQ_FIELDS)
            (tmp / META_FILE).write_text(json.dumps({"seq_fields": extra}))
        return target

    def subset(self, rows: np.ndarray, name: str) -> "TokenDataset":
        return TokenDataset({k: v[rows] for k, v in self.arrays.items()}, name, self.seq_fields)

    def split(self, eval_fraction: float, seed: int) -> tuple["TokenDataset", "TokenDataset | None"]:
        """A seeded train/eval split; eval gets at least one row when the fraction is > 0 and
        is None when it is 0."""
        perm = np.random.default_rng(seed).permutation(len(self))
        n_eval = max(1, int(round(eval_fraction * len(self)))) if eval_fraction > 0 else 0
        if n_eval >= len(self):
            raise ValueError(f"{self.name}: eval_fraction={eval_fraction} leaves no training rows")
        if n_eval == 0:
            return self, None
        return (self.subset(np.sort(perm[n_eval:]), self.name + "/train"),
                self.subset(np.sort(perm[:n_eval]), self.name + "/eval"))

    def batch_rows(self, step: int, batch_size: int, seed: int, shuffle: bool = True) -> np.ndarray:
        """Row indices of global batch ``step``: epochs of per-epoch seeded permutations
        (or the stored order every epoch when ``shuffle`` is False)."""
        n = len(self)
        start = step * batch_size
        rows = []
        while len(rows) < batch_size:
            epoch, offset = divmod(start + len(rows), n)
            perm = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
            rows.extend(perm[offset:offset + batch_size - len(rows)].tolist())
        return np.asarray(rows)

    def batch(self, step: int, batch_size: int, seed: int, buckets=(),
              process_index: int | None = None, process_count: int | None = None,
              shuffle: bool = True) -> dict:
        """This host's part of global batch ``step`` as numpy arrays (padded to a bucket)."""
        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
        if batch_size % process_count:
            raise ValueError(f"batch_size={batch_size} does not split over {process_count} hosts")
        rows = self.batch_rows(step, batch_size, seed, shuffle)
        per_host = batch_size // process_count
        mine = np.sort(rows[process_index * per_host:(process_index + 1) * per_host])
        order = np.argsort(np.argsort(rows[process_index * per_host:(process_index + 1) * per_host]))
        out = {k: np.asarray(v[mine])[order] for k, v in self.arrays.items()}
        return pad_to_bucket(finalize(out), buckets, self.seq_fields)

    def eval_batches(self, batch_size: int, limit: int | None = None):
        """Fixed, unshuffled batches over the dataset (the last one may be short)."""
        n = len(self)
        count = (n + batch_size - 1) // batch_size
        for i in range(count if limit is None else min(limit, count)):
            rows = np.arange(i * batch_size, min(n, (i + 1) * batch_size))
            yield finalize({k: np.asarray(v[rows]) for k, v in self.arrays.items()})


def finalize(batch: dict) -> dict:
    """Fill in default masks: every token real, every target counted."""
    tokens = batch["tokens"].astype(np.int32)
    out = dict(batch, tokens=tokens)
    out.setdefault("attention_mask", np.ones_like(tokens))
    out.setdefault("loss_mask", out["attention_mask"])
    out["attention_mask"] = out["attention_mask"].astype(np.int32)
    out["loss_mask"] = out["loss_mask"].astype(np.float32)
    return out


def pad_to_bucket(batch: dict, buckets, seq_fields: Iterable[str] = SEQ_FIELDS) -> dict:
    """Trim right padding of the ``seq_fields`` arrays to the smallest bucket that holds
    every real token (other arrays are returned as they are).

    Fewer distinct shapes means fewer compilations."""
    if not buckets:
        return batch
    t = batch["tokens"].shape[1]
    used = int(batch["attention_mask"].any(0).nonzero()[0].max()) + 1 if batch[
        "attention_mask"].any() else 1
    size = next((b for b in sorted(buckets) if b >= used), t)
    size = min(max(size, used), t)
    return {k: (v[:, :size] if k in seq_fields else v) for k, v in batch.items()}


def build_dataset(name: str, seed: int, **args) -> TokenDataset:
    """The dataset of the task registered as ``name`` (see :data:`jaxreason.registry.TASKS`);
    an unknown name lists the registered ones, bad arguments name the task."""
    build = TASKS.get(name)
    try:
        return build(seed=seed, **args)
    except TypeError as e:
        raise ValueError(f"task {name!r}: bad data.task_args {sorted(args)}: {e}") from None
