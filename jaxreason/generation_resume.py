"""Resuming a generation run safely: what :mod:`jaxreason.generation_runner` checks before it
continues a run folder, so that a rerun never mixes runs and never drops what is on disk.

A run folder holds ``results.jsonl`` (one line per record, appended batch by batch before the
batch's store chunk) and the store ``arrays/``. A kill can leave at most one batch of result
lines past the store, the last one possibly cut; those are dropped and decoded again. Any
other mismatch means the files were edited, damaged or come from another run, and is refused
before a file is touched: fewer complete results than store rows, more than one batch ahead
of it, a line that is not JSON or whose ``index`` is not its position, another model (its
config and a fingerprint of its weights are part of the store's identity) or records that
now encode to other prompts (every chunk records a digest of its prompts).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import numpy as np

from jaxreason import atomic
from jaxreason.models.config import EXECUTION_OPTIONS
from jaxreason.probe.array_store import ArrayWriter


def describe(value) -> Any:
    """JSON for the run identity: the value itself when it is JSON, else its repr."""
    try:
        return json.loads(json.dumps(value))
    except TypeError:
        return repr(value)


def read_results(path: Path) -> tuple[list[dict], bool]:
    """(complete JSON lines of a results file, whether anything follows them): only the last
    line may be cut by a kill; a damaged line before it, or a line whose ``index`` is not
    its position, is refused naming the line."""
    if not path.exists():
        return [], False
    if not path.is_file():
        raise IsADirectoryError(f"results file {path} exists and is not a file")
    rows = []
    lines = path.read_text().splitlines(keepends=True)
    for i, line in enumerate(lines):
        if not line.endswith("\n"):  # only the last line can lack one: cut by a kill
            return rows, True
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} line {i + 1} is not JSON ({e}): the file was edited or "
                             f"damaged; repair or remove that line (nothing was changed)") from e
        if not isinstance(row, dict) or row.get("index") != i:
            got = row.get("index") if isinstance(row, dict) else row
            raise ValueError(f"{path} line {i + 1} holds the result of record {got!r}, expected "
                             f"index {i}: the file mixes runs or was edited (nothing was changed)")
        rows.append(row)
    return rows, False


def rewrite_results(path: Path, rows: list[dict]) -> None:
    atomic.write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


def digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj).encode()).hexdigest()[:16]


def check_results(rows: list, done: int, bs: int, path: Path, store_dir: Path) -> None:
    """Results must cover the store's rows and run at most one batch (the one a kill
    interrupted) ahead of it; anything else is refused before a file is touched."""
    if len(rows) < done:
        raise ValueError(f"{path} holds {len(rows)} complete results but the store "
                         f"{store_dir} holds {done} rows: the results file was truncated or "
                         f"replaced. Restore it, or move both away to decode again (nothing "
                         f"was changed)")
    if len(rows) - done > bs:
        raise ValueError(f"{path} holds {len(rows)} results but the store {store_dir} only "
                         f"{done} rows: more than one batch (batch_size={bs}) ahead, so they "
                         f"are not what a killed batch leaves; refusing to drop them. Restore "
                         f"the store or move {path} away (nothing was changed)")


def model_identity(model, params) -> dict:
    """The model's config and a fingerprint of its weights: the raw bytes of a strided sample
    of every leaf (at most 9 entries per axis, sliced where the leaf lives, so sharded
    weights are never gathered; exact, no float reductions, so the same weights give the
    same digest on every backend), so a store is never resumed with another model."""
    config = getattr(model, "config", None)
    config = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else config
    if isinstance(config, dict):  # how the model runs (scan, remat, attention) is no identity
        config = {k: v for k, v in config.items() if k not in EXECUTION_OPTIONS}
    h = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        grid = tuple(slice(None, None, max(1, n // 8)) for n in np.shape(leaf))
        sample = np.asarray(jax.device_get(leaf[grid]))
        h.update(f"{jax.tree_util.keystr(path)}{leaf.shape}{leaf.dtype}".encode())
        h.update(sample.tobytes())
    return {"model": type(model).__name__, "config": describe(config),
            "weights": h.hexdigest()[:16]}


def check_prompts(store: ArrayWriter, records: Sequence, encode: Callable) -> None:
    """Refuse to resume a store whose finished chunks were decoded from other prompts (a
    records list that changed between runs)."""
    for c in store.chunks:
        if "prompt_digest" not in c:
            continue
        lo, n = c["row_start"], c["rows"]
        ids = [[int(t) for t in encode(r)] for r in records[lo:lo + n]]
        if len(ids) != n or digest(ids) != c["prompt_digest"]:
            raise ValueError(f"cannot resume {store.directory}: records {lo}..{lo + n - 1} "
                             f"encode to other prompts than the ones its chunk {c['name']!r} "
                             f"was decoded from; the records changed between runs. Use the "
                             f"same records or a new directory (nothing was changed)")
