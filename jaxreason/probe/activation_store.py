"""Residual-stream activations captured while decoding, stored per hidden-state index.

Why: a Think-to-Talk run over 10,000 problems captures every source and generated position at
several hidden-state indices; that does not fit in memory. :class:`ActivationWriter` writes one
chunk per decoded batch and :func:`open_store` loads one layer at a time as a padded NumPy
array for probe training. Both are a thin layer over :mod:`jaxreason.probe.array_store`
(atomic chunks, manifest, resume after a kill, no pickle, validated chunk lists), which fixes
the field names:

* ``layer_<l>``: (B, P_chunk, d_model) one field per saved hidden-state index l, in the
  store's ``dtype`` (``float32``, ``float16``, or ``bfloat16`` kept as raw ``uint16`` bits);
* ``tokens``: (B, P_chunk) int32 token ids at those positions;
* ``lengths``: (B,) int32 valid positions per row;
* ``extra_<name>``: (B, ...) per-row extras, e.g. ``extra_correct``, ``extra_problem_index``.

``P_chunk`` varies per chunk (each chunk record carries its ``positions``). Positions
``>= length`` of a row are padding: the writer zeroes them, and the loader zero-pads (states)
or fills with ``pad_id`` (tokens) beyond each row's length and pads every chunk to the
largest ``P_chunk``. The manifest (format ``jaxreason.activation_store`` version 2) also
records ``layers``, ``d_model``, ``dtype``, ``storage_dtype`` and ``meta`` (free JSON from
the caller); the run's identity is (layers, d_model, dtype, meta), so a resume with other
settings is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import ml_dtypes
import numpy as np

from jaxreason.probe import array_store as ast

__all__ = ["ActivationWriter", "ActivationStore", "open_store", "FORMAT", "VERSION", "DTYPES"]

FORMAT = "jaxreason.activation_store"
VERSION = 2
LABEL = "activation store"
#: logical dtype -> dtype of the .npy files
DTYPES = {k: ast.DTYPES[k] for k in ("float32", "float16", "bfloat16")}


def _check_dtype(dtype) -> str:
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not supported; allowed: {sorted(DTYPES)}")
    return dtype


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
        identity = {"layers": list(self.layers), "d_model": self.d_model, "dtype": self.dtype}
        if meta is None:  # keep the stored meta (if the folder is a store of this format)
            stored = _stored_manifest(self.directory)
            meta = stored.get("identity", {}).get("meta", {}) if stored else {}
        identity["meta"] = meta
        fields = {f"layer_{l}": ast.Field(self.dtype, (None, self.d_model)) for l in self.layers}
        fields.update(tokens=ast.Field("int32", (None,)), lengths=ast.Field("int32", ()))
        self.store = ast.ArrayWriter(
            self.directory, fields, identity=identity, resume=resume, format=FORMAT,
            label=LABEL, version=VERSION,
            header={"layers": list(self.layers), "d_model": self.d_model, "dtype": self.dtype,
                    "storage_dtype": DTYPES[self.dtype].name},
            chunk_info=lambda arrays: {"positions": int(np.shape(arrays["tokens"])[1])})
        self.meta = dict(self.store.identity.get("meta", {}))

    @staticmethod
    def _check_layers(layers) -> tuple[int, ...]:
        out = tuple(int(l) for l in layers)
        if not out:
            raise ValueError("layers must name at least one hidden-state index, got none")
        if any(l < 0 for l in out) or len(set(out)) != len(out):
            raise ValueError(f"layers must be distinct non-negative ints, got {list(layers)}")
        return out

    def done_rows(self) -> int:
        """Rows in finished chunks: a resumed run skips this many problems."""
        return self.store.done_rows()

    def write(self, states: Mapping[int, np.ndarray], tokens: np.ndarray, lengths: np.ndarray,
              extra: Mapping[str, np.ndarray] | None = None) -> None:
        """Append one chunk.

        Args:
          states: ``{layer: (B, P_chunk, d_model)}`` for every layer of the writer.
          tokens: (B, P_chunk) integer token ids at those positions.
          lengths: (B,) valid positions per row, ``0 <= length <= P_chunk``; later positions are
            padding (zeroed on disk).
          extra: per-row arrays ``(B, ...)`` such as ``correct`` or ``problem_id``; the first
            chunk fixes their names and dtypes.
        """
        self.store.write(self.chunk_arrays(states, tokens, lengths, extra))

    def chunk_arrays(self, states, tokens, lengths, extra=None) -> dict[str, np.ndarray]:
        """The checked field arrays of one chunk, padding zeroed (what ``write`` stores)."""
        tokens = np.asarray(tokens)
        if tokens.ndim != 2:
            raise ValueError(f"tokens must be (B, P_chunk), got shape {tokens.shape}")
        if not np.issubdtype(tokens.dtype, np.integer):
            raise ValueError(f"tokens must be integer ids, got dtype {tokens.dtype}")
        b, p = tokens.shape
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
        arrays = {"tokens": tokens, "lengths": lengths}
        pad = np.arange(p)[None, :] >= lengths[:, None]  # (B, P) True on padding
        for l in self.layers:
            v = np.asarray(states[l])
            if v.shape != (b, p, self.d_model):
                raise ValueError(f"states[{l}] has shape {v.shape}, expected (B, P_chunk, d_model)"
                                 f" = {(b, p, self.d_model)} from tokens and d_model")
            if not (np.issubdtype(v.dtype, np.floating) or v.dtype == ml_dtypes.bfloat16):
                raise ValueError(f"states[{l}] must be floating point, got dtype {v.dtype}")
            # np.where copies: the caller's array is never modified
            arrays[f"layer_{l}"] = np.where(pad[:, :, None], v.dtype.type(0), v) if pad.any() else v
        arrays.update({f"extra_{k}": v for k, v in (extra or {}).items()})
        return arrays

    def close(self) -> Path:
        """Mark the store complete; it can then be opened."""
        return self.store.close()

    def __enter__(self) -> "ActivationWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        # An exception mid-run leaves the store incomplete (resumable), not falsely complete.
        if exc_type is None:
            self.close()


def _stored_manifest(directory: Path) -> dict | None:
    try:
        man = ast.read_manifest(directory)
    except ValueError:
        return None
    return man if man and man.get("format") == FORMAT else None


def open_store(directory) -> "ActivationStore":
    """Open a finished store; errors say whether it is missing, foreign or incomplete."""
    return ActivationStore(ast.open_arrays(directory, FORMAT, LABEL, VERSION))


class ActivationStore:
    """Read side of a finished store. Every accessor reads chunk by chunk into one output array,
    so loading a layer costs that layer's array, not the whole store."""

    def __init__(self, arrays: ast.ArrayStore):
        self.arrays = arrays
        self.path = arrays.path
        self.manifest = arrays.manifest
        self.layers, self.d_model, self.dtype = _check_header(arrays)
        self.meta: dict = dict(arrays.identity.get("meta", {}))
        self.chunks: list[dict] = arrays.chunks
        self.num_rows: int = arrays.num_rows
        self.max_positions: int = arrays.shape("tokens")[1]
        self.extra_names: tuple[str, ...] = tuple(sorted(
            k[len("extra_"):] for k in arrays.fields if k.startswith("extra_")))

    def __repr__(self) -> str:
        return (f"ActivationStore({str(self.path)!r}, rows={self.num_rows}, layers="
                f"{list(self.layers)}, d_model={self.d_model}, dtype={self.dtype!r}, "
                f"max_positions={self.max_positions})")

    def lengths(self) -> np.ndarray:
        """(N,) number of valid positions per row (checked: ``0 <= length <= P_chunk``)."""
        out = self.arrays.read("lengths")
        for c in self.chunks:
            part = out[c["row_start"]:c["row_start"] + c["rows"]]
            p = c["shapes"]["tokens"][0]
            if part.size and (part.min() < 0 or part.max() > p):
                raise ValueError(f"{self.path / c['name'] / 'lengths.npy'} holds lengths "
                                 f"{int(part.min())}..{int(part.max())}, outside 0..{p} (the "
                                 f"chunk's positions); the store is damaged")
        return out

    def valid(self) -> np.ndarray:
        """(N, P_max) bool: position < length."""
        return np.arange(self.max_positions)[None, :] < self.lengths()[:, None]

    def tokens(self, pad_id: int = -1) -> np.ndarray:
        """(N, P_max) int32 token ids, ``pad_id`` beyond each row's length."""
        return np.where(self.valid(), self.arrays.read("tokens"), np.int32(pad_id))

    def extra(self, name: str) -> np.ndarray:
        """(N, ...) per-row extra stored under ``name``."""
        if name not in self.extra_names:
            raise KeyError(f"no extra {name!r} in {self.path}; stored extras: "
                           f"{list(self.extra_names)}")
        return self.arrays.read(f"extra_{name}")

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
        if positions is not None:
            p_max = self.max_positions  # a stop past the end is cut there, as in Python
            for bound, hi in ((positions.start, p_max), (positions.stop, None)):
                if bound is not None and (bound < -p_max or (hi is not None and bound > hi)):
                    raise IndexError(f"positions {positions} lie outside {self.path}, which "
                                     f"holds positions 0..{self.max_positions - 1}")
        sel = np.arange(self.max_positions)[positions or slice(None)]
        out = np.zeros((self.num_rows, sel.size, self.d_model), dtype)
        lengths = self.lengths()
        for orow, crow, data in self.arrays.iter_chunks(f"layer_{int(layer)}"):
            p = data.shape[1]
            out_cols = np.flatnonzero(sel < p)
            if out_cols.size == 0:
                continue
            src_cols = sel[out_cols]
            dst = out[orow]
            if _contiguous(out_cols) and _contiguous(src_cols):
                o = slice(int(out_cols[0]), int(out_cols[-1]) + 1)
                dst[:, o] = data[crow, int(src_cols[0]):int(src_cols[-1]) + 1]
            else:
                dst[:, out_cols] = data[crow][:, src_cols]
            dst[sel[None, :] >= lengths[orow, None]] = 0  # the writer zeroed them; do not trust it
        return out


def _check_header(arrays: ast.ArrayStore) -> tuple[tuple[int, ...], int, str]:
    """(layers, d_model, dtype) from the manifest, checked against its fields: one
    ``layer_<l>`` (positions, d_model) field of the store's dtype per listed layer, plus
    ``tokens`` and ``lengths``."""
    where = str(arrays.path / ast.MANIFEST)
    man = arrays.manifest
    ast.check_keys(man, {"layers": list, "d_model": int, "dtype": str}, where)
    layers, d_model, dtype = man["layers"], man["d_model"], man["dtype"]
    if not layers or any(isinstance(l, bool) or not isinstance(l, int) or l < 0 for l in layers) \
            or len(set(layers)) != len(layers):
        raise ValueError(f"{where}: layers = {layers!r} must be distinct non-negative ints; the "
                         f"store is damaged")
    if d_model < 1 or dtype not in DTYPES:
        raise ValueError(f"{where}: d_model = {d_model!r} must be >= 1 and dtype = {dtype!r} one "
                         f"of {sorted(DTYPES)}; the store is damaged")
    want = {f"layer_{l}": ast.Field(dtype, (None, d_model)) for l in layers}
    want.update(tokens=ast.Field("int32", (None,)), lengths=ast.Field("int32", ()))
    have = {k: f for k, f in arrays.fields.items() if not k.startswith("extra_")}
    for k in sorted(set(want) | set(have)):
        w, h = want.get(k), have.get(k)
        if w is None or h is None or (w.dtype, w.shape) != (h.dtype, h.shape):
            raise ValueError(
                f"{where}: field {k!r} is {h.to_json() if h else 'missing'} but layers="
                f"{layers}, d_model={d_model}, dtype={dtype!r} need "
                f"{ {'dtype': w.dtype, 'shape': list(w.shape)} if w else 'no such field'}; "
                f"the store is damaged")
    return tuple(layers), d_model, dtype


def _contiguous(idx: np.ndarray) -> bool:
    return idx.size > 0 and bool(np.all(np.diff(idx) == 1))
