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

import difflib
import inspect
import json
import os
from pathlib import Path
from typing import Iterable, Mapping

import jax
import numpy as np

from jaxreason import atomic
from jaxreason.config_io import ConfigError
from jaxreason.registry import TASKS

SEQ_FIELDS = frozenset({"tokens", "attention_mask", "loss_mask"})  # always (N, T)
META_FILE = "dataset.json"
CHECK_CHUNK = 1 << 22  # elements read at once by the load-time checks (memmaps stay cheap)


class DataError(ValueError):
    """Training data that does not fit the model (or is unusable), named by file and row."""


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
        for k in ("attention_mask", "loss_mask"):
            if k in arrays and np.shape(arrays[k]) != np.shape(arrays["tokens"]):
                raise ValueError(f"{name}: {k} has shape {np.shape(arrays[k])} but tokens has "
                                 f"{np.shape(arrays['tokens'])}; the masks must have the "
                                 "tokens' shape (rows, positions)")
        for k in sorted(self.seq_fields & set(arrays)):
            if np.ndim(arrays[k]) < 2 or arrays[k].shape[1] != seq:
                raise ValueError(f"{name}: sequence field {k!r} has shape {arrays[k].shape}; "
                                 f"its second axis must be the {seq} positions of tokens")
        self.arrays = dict(arrays)
        self.name = name
        self.files: dict[str, Path] = {}  # array name -> the .npy it was loaded from

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
        dataset = cls(arrays, name=str(d), seq_fields=meta.get("seq_fields", ()))
        dataset.files = {p.stem: p for p in sorted(d.glob("*.npy"))}
        return dataset

    def where(self, field: str) -> str:
        """The file an array was loaded from, else ``<dataset name>: <field>``."""
        return str(self.files[field]) if field in self.files else f"{self.name}: {field}"

    def check_fits(self, vocab_size: int, position_limit: int | None) -> None:
        """Refuse (DataError) data a model with ``vocab_size`` tokens and (when not None)
        ``position_limit`` positions cannot train on, naming the file and the first bad row.

        Checked: integer tokens (floats would be truncated), ids in [0, vocab_size), at most
        ``position_limit`` positions, and a ``loss_mask`` that marks at least one target.
        Arrays are read in chunks of rows, so memory-mapped data costs one pass."""
        tokens = self.arrays["tokens"]
        if tokens.dtype.kind not in "iu":
            raise DataError(f"{self.where('tokens')}: tokens have dtype {tokens.dtype}; token "
                            "ids must be integers (save them as int32 or int64)")
        n, seq = tokens.shape
        rows = max(1, CHECK_CHUNK // max(seq, 1))
        for start in range(0, n, rows):
            chunk = np.asarray(tokens[start:start + rows])
            bad = (chunk < 0) | (chunk >= vocab_size)
            if bad.any():
                r, c = np.argwhere(bad)[0]
                raise DataError(
                    f"{self.where('tokens')}: row {start + r}, position {c} holds token id "
                    f"{int(chunk[r, c])}, outside the model's vocabulary [0, {vocab_size}) "
                    f"({int(bad.sum())} such ids in rows {start}..{start + len(chunk) - 1} "
                    "alone)")
        if position_limit is not None and seq > position_limit:
            used = 0
            if "attention_mask" in self.arrays:  # the first row with a real token past the limit
                used = _first_row_where(self.arrays["attention_mask"], rows,
                                        lambda m: m[:, position_limit:].any(1))
            first = (f"row {used} has a real token at position {position_limit} or later"
                     if used is not None else "the attention_mask marks no token that far: "
                     "cut the padding columns")
            raise DataError(
                f"{self.where('tokens')}: rows have {seq} positions ({first}) but the model "
                f"addresses only {position_limit} (max_position_embeddings); shorten the "
                "sequences or use a model with more positions")
        if "loss_mask" in self.arrays:
            marked = _first_row_where(self.arrays["loss_mask"], rows, lambda m: m.any(1))
            if marked is None:
                raise DataError(
                    f"{self.where('loss_mask')}: the loss_mask is zero in every one of the {n} "
                    "rows, so no token counts towards the loss and nothing would train; mark "
                    "the target tokens with 1 (or drop loss_mask.npy to count every token)")

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


def _first_row_where(array, rows: int, test) -> int | None:
    """The first row index where ``test(chunk) -> (rows,) bool`` holds, reading in chunks."""
    for start in range(0, len(array), rows):
        hit = np.flatnonzero(test(np.asarray(array[start:start + rows])))
        if hit.size:
            return start + int(hit[0])
    return None


def check_task_args(name: str, build, args: Mapping) -> None:
    """Refuse ``data.task_args`` keys the task function does not take, listing the ones it
    does (with the closest match)."""
    try:
        params = inspect.signature(build).parameters
    except (TypeError, ValueError):
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    allowed = sorted(k for k, p in params.items() if k != "seed" and p.kind in (
        inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY))
    for key in args:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"data.task_args: task {name!r} takes no argument {key!r}.{hint} "
                             f"Allowed: {', '.join(allowed) or 'none'}")


def build_dataset(name: str, seed: int, **args) -> TokenDataset:
    """The dataset of the task registered as ``name`` (see :data:`jaxreason.registry.TASKS`);
    an unknown name lists the registered ones, bad arguments name the task and its allowed
    arguments."""
    build = TASKS.get(name)
    check_task_args(name, build, args)
    try:
        return build(seed=seed, **args)
    except TypeError as e:
        raise ValueError(f"task {name!r}: bad data.task_args {sorted(args)}: {e}") from None
