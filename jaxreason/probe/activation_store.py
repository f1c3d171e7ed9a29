"""On-disk store for residual-stream activations captured while decoding (think-to-talk §4).

Why a store: a run over 10,000 problems captures every source and generated position at
several hidden-state indices; that does not fit in memory. :class:`ActivationWriter` writes one
*chunk* per decoded batch, and :func:`open_store` loads it back one layer at a time as a padded
NumPy array for probe training.

On-disk format (version 1)
--------------------------
::

    <directory>/
      manifest.json            settings + chunk list + "complete" flag
      progress.json            chunks finished so far (what a resumed run trusts)
      chunk_00000/
        layer_<l>.npy          (B, P_chunk, d_model) one file per saved hidden-state index l
        tokens.npy             (B, P_chunk) int32 token ids at those positions
        lengths.npy            (B,) int32 number of valid positions per row
        extra_<name>.npy       (B, ...) per-row extras, e.g. extra_correct.npy, extra_problem_id.npy
      chunk_00001/ ...

``manifest.json`` holds ``format`` (``"jaxreason.activation_store"``), ``version`` (1),
``layers``, ``d_model``, ``dtype`` (the logical dtype), ``storage_dtype`` (what the ``.npy``
files hold), ``meta`` (free JSON from the caller), ``extras`` (name -> dtype and per-row shape),
``chunks`` (a list of ``{"name", "row_start", "rows", "positions"}``), ``num_rows``,
``max_positions`` and ``complete``. ``progress.json`` holds ``chunks`` and ``extras`` only.

* Every file is written with ``np.save`` and read with ``allow_pickle=False``: an object array
  makes loading fail instead of running pickle code.
* ``dtype`` is ``"float32"``, ``"float16"`` or ``"bfloat16"``. ``np.save`` cannot store bf16
  portably, so bfloat16 layers are stored as ``uint16`` raw bits (``storage_dtype: "uint16"``)
  and viewed back as ``ml_dtypes.bfloat16`` before casting.
* Positions ``>= length`` of a row are padding. The writer zeroes them; the loader zero-pads
  (states) or fills with ``pad_id`` (tokens) beyond each row's length, and pads every chunk to
  the largest ``P_chunk`` of the store.
* Atomicity: a chunk is written into ``.tmp_chunk_<i>`` and renamed when all its files are
  there; ``progress.json`` and ``manifest.json`` are replaced via a temp file and
  ``os.replace``. A chunk is trusted only once ``progress.json`` lists it, so a killed run
  never leaves a half chunk that gets loaded; resuming deletes leftovers and rewrites them.
  ``close()`` sets ``complete: true``; :func:`open_store` refuses incomplete stores. (This
  protects against a killed process, not a power cut: files are not fsynced.)
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Mapping, Sequence

import ml_dtypes
import numpy as np

__all__ = ["ActivationWriter", "ActivationStore", "open_store", "FORMAT", "VERSION", "DTYPES"]

FORMAT = "jaxreason.activation_store"
VERSION = 1
#: logical dtype -> dtype of the .npy files
DTYPES = {"float32": np.dtype(np.float32), "float16": np.dtype(np.float16),
          "bfloat16": np.dtype(np.uint16)}
MANIFEST = "manifest.json"
PROGRESS = "progress.json"
_CHUNK_RE = re.compile(r"^chunk_\d{5}$")
_TMP_PREFIX = ".tmp"
_NAME_RE = re.compile(r"^[A-Za-z0-9_]+$")


# ----------------------------------------------------------------------------- small helpers


def _chunk_name(i: int) -> str:
    return f"chunk_{i:05d}"


def _write_json(path: Path, obj) -> None:
    """Temp file + os.replace, so readers see the old or the new file, never half of one."""
    tmp = path.with_name(f"{_TMP_PREFIX}_{path.name}")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True))
    os.replace(tmp, path)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); the store is damaged") from e


def _load_npy(path: Path, mmap: bool = False) -> np.ndarray:
    """np.load without pickle; an object array or missing file gets an error naming the file."""
    try:
        return np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"store file {path} is missing; the store is damaged") from e
    except ValueError as e:
        raise ValueError(f"refusing to load {path}: it needs pickle or is not a plain numeric "
                         f"array ({e}); activation stores never contain pickled objects") from e


def _to_storage(x: np.ndarray, dtype: str) -> np.ndarray:
    """Cast float states to the storage dtype (bf16 -> its raw uint16 bits)."""
    if dtype == "bfloat16":
        return np.asarray(x).astype(ml_dtypes.bfloat16).view(np.uint16)
    return np.asarray(x, DTYPES[dtype])


def _from_storage(x: np.ndarray, dtype: str) -> np.ndarray:
    """View stored bits as the logical dtype (no copy)."""
    return x.view(ml_dtypes.bfloat16) if dtype == "bfloat16" else x


def _check_dtype(dtype) -> str:
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not supported; allowed: {sorted(DTYPES)}")
    return dtype


# ----------------------------------------------------------------------------- writer


class ActivationWriter:
    """Writes one export directory chunk by chunk (one chunk per decoded batch).

    Args:
      directory: the store folder; created if missing.
      layers: the saved hidden-state indices (e.g. 0, 4, 8, ...); every ``write`` gives each.
      d_model: width of the residual stream.
      dtype: ``"float32"``, ``"float16"`` or ``"bfloat16"`` (stored as uint16 bits).
      meta: JSON-serialisable facts about the run (model, task, split...). On resume it must
        equal the stored meta, or be None to keep it: mixing runs is what resuming must not do.
      resume: True continues after the last finished chunk of an existing store (leftovers of a
        killed run are deleted); False requires a missing or empty directory.
    """

    def __init__(self, directory, layers: Sequence[int], d_model: int, dtype: str = "float32",
                 meta: dict | None = None, resume: bool = True):
        self.directory = Path(directory)
        self.layers = self._check_layers(layers)
        if isinstance(d_model, bool) or not isinstance(d_model, (int, np.integer)) or d_model < 1:
            raise ValueError(f"d_model must be a positive int, got {d_model!r}")
        self.d_model = int(d_model)
        self.dtype = _check_dtype(dtype)
        if meta is not None:
            try:  # as JSON will store it (tuples become lists), so a resume compares equal
                meta = json.loads(json.dumps(meta))
            except TypeError as e:
                raise TypeError(f"meta must be JSON-serialisable ({e})") from e
        self._chunks: list[dict] = []
        self._extras: dict[str, dict] | None = None  # fixed by the first chunk
        self._closed = False
        self._marked_incomplete = False

        if self.directory.exists() and not self.directory.is_dir():
            raise NotADirectoryError(f"store path {self.directory} exists and is not a folder")
        existing = self.directory.exists() and any(self.directory.iterdir())
        if existing and not resume:
            raise FileExistsError(f"{self.directory} is not empty and resume=False; pass "
                                  f"resume=True to continue it or choose an empty directory")
        if existing:
            self.meta = self._resume(meta)
        else:
            self.directory.mkdir(parents=True, exist_ok=True)
            self.meta = dict(meta or {})
            self._write_progress()
            self._write_manifest(complete=False)
            self._marked_incomplete = True

    @staticmethod
    def _check_layers(layers) -> tuple[int, ...]:
        out = tuple(int(l) for l in layers)
        if not out:
            raise ValueError("layers must name at least one hidden-state index, got none")
        if any(l < 0 for l in out) or len(set(out)) != len(out):
            raise ValueError(f"layers must be distinct non-negative ints, got {list(layers)}")
        return out

    def _resume(self, meta) -> dict:
        """Check the existing store matches, then drop chunks that progress.json does not list."""
        mpath = self.directory / MANIFEST
        if not mpath.exists():
            raise FileExistsError(f"{self.directory} is not empty but has no {MANIFEST}; it is "
                                  f"not an activation store, refusing to write into it")
        man = _read_json(mpath)
        if man.get("format") != FORMAT or man.get("version") != VERSION:
            raise ValueError(f"{mpath}: format {man.get('format')!r} version "
                             f"{man.get('version')!r}; this writer handles {FORMAT!r} v{VERSION}")
        stored = (tuple(man["layers"]), man["d_model"], man["dtype"])
        wanted = (self.layers, self.d_model, self.dtype)
        if stored != wanted:
            raise ValueError(f"cannot resume {self.directory}: it holds layers={list(stored[0])}, "
                             f"d_model={stored[1]}, dtype={stored[2]!r} but this writer asks for "
                             f"layers={list(wanted[0])}, d_model={wanted[1]}, dtype={wanted[2]!r}; "
                             f"use the same settings or a new directory")
        if meta is not None and meta != man.get("meta", {}):
            raise ValueError(f"cannot resume {self.directory}: stored meta {man.get('meta')!r} "
                             f"differs from the given meta {meta!r}; pass meta=None to keep it")
        ppath = self.directory / PROGRESS
        prog = _read_json(ppath) if ppath.exists() else {"chunks": [], "extras": None}
        self._chunks = list(prog["chunks"])
        self._extras = prog.get("extras")
        trusted = {c["name"] for c in self._chunks}
        for name in trusted:
            if not (self.directory / name).is_dir():
                raise ValueError(f"{PROGRESS} lists {name} but {self.directory / name} is "
                                 f"missing; the store is damaged")
        for entry in self.directory.iterdir():  # leftovers of a killed run: never trusted
            if entry.name.startswith(_TMP_PREFIX) or (_CHUNK_RE.match(entry.name)
                                                      and entry.name not in trusted):
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        return dict(man.get("meta", {}))

    # -- public API

    def done_rows(self) -> int:
        """Rows in finished chunks: a resumed run skips this many problems."""
        return sum(c["rows"] for c in self._chunks)

    def write(self, states: Mapping[int, np.ndarray], tokens: np.ndarray, lengths: np.ndarray,
              extra: Mapping[str, np.ndarray] | None = None) -> None:
        """Append one chunk.

        Args:
          states: ``{layer: (B, P_chunk, d_model)}`` for every layer of the writer.
          tokens: (B, P_chunk) integer token ids at those positions.
          lengths: (B,) valid positions per row, ``0 <= length <= P_chunk``; later positions are
            padding (zeroed on disk).
          extra: per-row arrays ``(B, ...)`` such as ``correct`` or ``problem_id``; the first
            chunk fixes their names, dtype kinds and per-row shapes.
        """
        if self._closed:
            raise RuntimeError(f"writer for {self.directory} is closed; open a new one to resume")
        tokens, lengths, states, extra = self._validate(states, tokens, lengths, extra or {})
        b, p = tokens.shape
        if not self._marked_incomplete:  # appending to a closed store reopens it
            self._write_manifest(complete=False)
            self._marked_incomplete = True
        i = len(self._chunks)
        name = _chunk_name(i)
        tmp = self.directory / f"{_TMP_PREFIX}_{name}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        pad = np.arange(p)[None, :] >= lengths[:, None]  # (B, P) True on padding
        for layer in self.layers:
            arr = _to_storage(states[layer], self.dtype)
            if pad.any():  # np.where copies: the caller's array is never modified
                arr = np.where(pad[:, :, None], arr.dtype.type(0), arr)
            np.save(tmp / f"layer_{layer}.npy", arr, allow_pickle=False)
        np.save(tmp / "tokens.npy", tokens, allow_pickle=False)
        np.save(tmp / "lengths.npy", lengths, allow_pickle=False)
        for key, val in extra.items():
            np.save(tmp / f"extra_{key}.npy", val, allow_pickle=False)
        os.rename(tmp, self.directory / name)
        self._chunks.append({"name": name, "row_start": self.done_rows(), "rows": int(b),
                             "positions": int(p)})
        self._write_progress()

    def _validate(self, states, tokens, lengths, extra):
        tokens = np.asarray(tokens)
        if tokens.ndim != 2:
            raise ValueError(f"tokens must be (B, P_chunk), got shape {tokens.shape}")
        if not np.issubdtype(tokens.dtype, np.integer):
            raise ValueError(f"tokens must be integer ids, got dtype {tokens.dtype}")
        b, p = tokens.shape
        if b == 0:
            raise ValueError("cannot write an empty chunk (B == 0)")
        if tokens.size and (tokens.min() < np.iinfo(np.int32).min
                            or tokens.max() > np.iinfo(np.int32).max):
            raise ValueError("token ids do not fit in int32")
        lengths = np.asarray(lengths)
        if lengths.shape != (b,) or not np.issubdtype(lengths.dtype, np.integer):
            raise ValueError(f"lengths must be (B,) = ({b},) integers, got shape {lengths.shape} "
                             f"dtype {lengths.dtype}")
        if (lengths < 0).any() or (lengths > p).any():
            bad = int(np.flatnonzero((lengths < 0) | (lengths > p))[0])
            raise ValueError(f"lengths must lie in [0, P_chunk={p}]; row {bad} has length "
                             f"{int(lengths[bad])}")
        missing = [l for l in self.layers if l not in states]
        unknown = [l for l in states if int(l) not in self.layers]
        if missing or unknown:
            raise ValueError(f"states must have exactly the layers {list(self.layers)}; missing "
                             f"{missing}, unexpected {unknown}")
        states = {int(l): np.asarray(v) for l, v in states.items()}
        for l in self.layers:
            v = states[l]
            if v.shape != (b, p, self.d_model):
                raise ValueError(f"states[{l}] has shape {v.shape}, expected (B, P_chunk, d_model)"
                                 f" = {(b, p, self.d_model)} from tokens and d_model")
            if not (np.issubdtype(v.dtype, np.floating) or v.dtype == ml_dtypes.bfloat16):
                raise ValueError(f"states[{l}] must be floating point, got dtype {v.dtype}")
        extra = {str(k): np.asarray(v) for k, v in extra.items()}
        schema = {}
        for k, v in extra.items():
            if not _NAME_RE.match(k):
                raise ValueError(f"extra name {k!r} must match [A-Za-z0-9_]+ (it names a file)")
            if v.dtype.kind not in "biufU":
                raise ValueError(f"extra {k!r} has dtype {v.dtype}; allowed kinds are bool, int, "
                                 f"uint, float and str (no objects: they would need pickle)")
            if v.ndim < 1 or v.shape[0] != b:
                raise ValueError(f"extra {k!r} must be per-row with leading dim B={b}, got shape "
                                 f"{v.shape}")
            schema[k] = {"kind": v.dtype.kind, "dtype": v.dtype.str, "shape": list(v.shape[1:])}
        if self._extras is not None:
            names = sorted(self._extras)
            if sorted(schema) != names:
                raise ValueError(f"extras {sorted(schema)} differ from the earlier chunks' "
                                 f"{names}; every chunk must give the same extras")
            for k, s in schema.items():
                want = self._extras[k]
                if s["kind"] != want["kind"] or s["shape"] != want["shape"]:
                    raise ValueError(f"extra {k!r}: dtype kind {s['kind']!r} per-row shape "
                                     f"{s['shape']} differ from earlier chunks' {want['kind']!r} "
                                     f"{want['shape']}")
        else:
            self._extras = schema
        return tokens.astype(np.int32), lengths.astype(np.int32), states, extra

    def close(self) -> Path:
        """Write manifest.json with complete=True; the store can then be opened."""
        if not self._closed:
            self._write_manifest(complete=True)
            self._closed = True
        return self.directory

    def __enter__(self) -> "ActivationWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        # An exception mid-run leaves the store incomplete (resumable), not falsely complete.
        if exc_type is None:
            self.close()

    # -- bookkeeping files

    def _write_progress(self) -> None:
        _write_json(self.directory / PROGRESS, {"chunks": self._chunks, "extras": self._extras})

    def _write_manifest(self, complete: bool) -> None:
        _write_json(self.directory / MANIFEST, {
            "format": FORMAT, "version": VERSION, "layers": list(self.layers),
            "d_model": self.d_model, "dtype": self.dtype,
            "storage_dtype": DTYPES[self.dtype].name, "meta": self.meta,
            "extras": self._extras or {}, "chunks": self._chunks,
            "num_rows": self.done_rows(),
            "max_positions": max((c["positions"] for c in self._chunks), default=0),
            "complete": bool(complete)})


# ----------------------------------------------------------------------------- reader


def open_store(directory) -> "ActivationStore":
    """Open a finished store; errors say whether it is missing, foreign or incomplete."""
    directory = Path(directory)
    mpath = directory / MANIFEST
    if not mpath.exists():
        raise FileNotFoundError(f"no activation store at {directory} ({MANIFEST} not found)")
    man = _read_json(mpath)
    if man.get("format") != FORMAT or man.get("version") != VERSION:
        raise ValueError(f"{mpath}: format {man.get('format')!r} version {man.get('version')!r}; "
                         f"this reader handles {FORMAT!r} v{VERSION}")
    if not man.get("complete"):
        ppath = directory / PROGRESS
        done = _read_json(ppath)["chunks"] if ppath.exists() else []
        raise ValueError(f"activation store {directory} is incomplete ({len(done)} finished "
                         f"chunks, {sum(c['rows'] for c in done)} rows): the run was killed or "
                         f"not closed. Resume it with ActivationWriter({str(directory)!r}, ..., "
                         f"resume=True), write the remaining rows and call close()")
    return ActivationStore(directory, man)


class ActivationStore:
    """Read side of a finished store. Every accessor reads chunk by chunk into one output array,
    so loading a layer costs that layer's array, not the whole store."""

    def __init__(self, directory: Path, manifest: dict):
        self.path = Path(directory)
        self.manifest = manifest
        self.layers: tuple[int, ...] = tuple(manifest["layers"])
        self.d_model: int = int(manifest["d_model"])
        self.dtype: str = _check_dtype(manifest["dtype"])
        self.meta: dict = dict(manifest.get("meta", {}))
        self.chunks: list[dict] = list(manifest["chunks"])
        self.num_rows: int = sum(c["rows"] for c in self.chunks)
        self.max_positions: int = max((c["positions"] for c in self.chunks), default=0)
        self.extra_names: tuple[str, ...] = tuple(sorted(manifest.get("extras", {})))

    def __repr__(self) -> str:
        return (f"ActivationStore({str(self.path)!r}, rows={self.num_rows}, layers="
                f"{list(self.layers)}, d_model={self.d_model}, dtype={self.dtype!r}, "
                f"max_positions={self.max_positions})")

    def _chunk_array(self, chunk: dict, fname: str, tail: tuple, mmap: bool = False):
        """Load one chunk file and check its shape against the manifest."""
        arr = _load_npy(self.path / chunk["name"] / fname, mmap=mmap)
        want = (chunk["rows"],) + tail
        if arr.shape != want:
            raise ValueError(f"{self.path / chunk['name'] / fname} has shape {arr.shape}, the "
                             f"manifest says {want}; the store is damaged")
        return arr

    def lengths(self) -> np.ndarray:
        """(N,) number of valid positions per row."""
        if not self.chunks:
            return np.zeros((0,), np.int32)
        return np.concatenate([self._chunk_array(c, "lengths.npy", ()) for c in self.chunks])

    def valid(self) -> np.ndarray:
        """(N, P_max) bool: position < length."""
        return np.arange(self.max_positions)[None, :] < self.lengths()[:, None]

    def tokens(self, pad_id: int = -1) -> np.ndarray:
        """(N, P_max) int32 token ids, ``pad_id`` beyond each row's length."""
        out = np.full((self.num_rows, self.max_positions), pad_id, np.int32)
        for c in self.chunks:
            r0, r1, p = c["row_start"], c["row_start"] + c["rows"], c["positions"]
            tok = self._chunk_array(c, "tokens.npy", (p,))
            ln = self._chunk_array(c, "lengths.npy", ())
            keep = np.arange(p)[None, :] < ln[:, None]
            out[r0:r1, :p] = np.where(keep, tok, pad_id)
        return out

    def extra(self, name: str) -> np.ndarray:
        """(N, ...) per-row extra stored under ``name``."""
        if name not in self.extra_names:
            raise KeyError(f"no extra {name!r} in {self.path}; stored extras: "
                           f"{list(self.extra_names)}")
        tail = tuple(self.manifest["extras"][name]["shape"])
        return np.concatenate([self._chunk_array(c, f"extra_{name}.npy", tail)
                               for c in self.chunks])

    def layer(self, layer: int, positions: slice | None = None, dtype=np.float32) -> np.ndarray:
        """(N, P_sel, d_model) states of one saved hidden-state index, zero beyond each length.

        Chunks are memory-mapped and copied (with the cast) straight into the preallocated
        output, so peak memory is that one array. ``positions`` slices the padded position axis
        (``slice(14, 18)`` gives positions 14..17); ``dtype`` is the returned float dtype.
        """
        if int(layer) not in self.layers:
            raise KeyError(f"layer {layer!r} was not saved in {self.path}; saved layers: "
                           f"{list(self.layers)}")
        if positions is not None and not isinstance(positions, slice):
            raise TypeError(f"positions must be a slice or None, got {type(positions).__name__}"
                            f" {positions!r}")
        dtype = np.dtype(dtype)
        if not (np.issubdtype(dtype, np.floating) or dtype == ml_dtypes.bfloat16):
            raise ValueError(f"dtype must be a float dtype (float32, float16, bfloat16, ...), "
                             f"got {dtype}")
        sel = np.arange(self.max_positions)[positions or slice(None)]
        out = np.zeros((self.num_rows, sel.size, self.d_model), dtype)
        for c in self.chunks:
            r0, r1, p = c["row_start"], c["row_start"] + c["rows"], c["positions"]
            out_cols = np.flatnonzero(sel < p)
            if out_cols.size == 0:
                continue
            src_cols = sel[out_cols]
            raw = self._chunk_array(c, f"layer_{int(layer)}.npy", (p, self.d_model), mmap=True)
            if raw.dtype != DTYPES[self.dtype]:
                raise ValueError(f"{self.path / c['name']} layer_{layer}.npy holds {raw.dtype}, "
                                 f"expected {DTYPES[self.dtype]} for dtype {self.dtype!r}")
            data = _from_storage(raw, self.dtype)
            dst = out[r0:r1]
            if _contiguous(out_cols) and _contiguous(src_cols):
                o = slice(int(out_cols[0]), int(out_cols[-1]) + 1)
                dst[:, o] = data[:, int(src_cols[0]):int(src_cols[-1]) + 1]
            else:
                dst[:, out_cols] = data[:, src_cols]
            ln = self._chunk_array(c, "lengths.npy", ())
            dst[sel[None, :] >= ln[:, None]] = 0  # the writer zeroed them; do not trust it
        return out


def _contiguous(idx: np.ndarray) -> bool:
    return idx.size > 0 and bool(np.all(np.diff(idx) == 1))
