"""A chunked, resumable on-disk store of named NumPy arrays (rows first).

Why: a decoding run over thousands of records captures far more than memory holds (residual
streams at every position, top-k neuron indices per step, per-record scores). The writer
appends one *chunk* per decoded batch; a killed run resumes after its last finished chunk;
the reader memory-maps each chunk and assembles one name at a time.

Layout (format ``jaxreason.array_store`` version 1, or a caller's own format name)::

    <directory>/
      manifest.json     format, version, identity, fields, chunks, num_rows, complete
      progress.json     the chunks a resumed run trusts, and the fields
      chunk_00000/<field>.npy  (rows, ...) one file per field
      chunk_00001/ ...

* **Fields** have a dtype (``float32``, ``float16``, ``bfloat16``, ``int8`` ... ``int64``,
  ``uint8`` ... ``uint64``, ``bool``, ``str``) and a shape after the rows whose entries are
  ints (fixed) or ``None`` (ragged: each chunk has its own size; reading pads to the largest
  with the field's ``fill``). Fields not declared up front are fixed by the first chunk: its
  dtype, with every axis ragged. bfloat16 is stored as its raw ``uint16`` bits, because
  ``np.save`` cannot write it portably, and viewed back as ``ml_dtypes.bfloat16``.
* **Identity**: JSON facts about the run (model, weights digest, settings). Resuming a store
  whose identity or declared fields differ is refused with every differing key named.
* **Atomicity**: a chunk is written into ``.tmp_chunk_<i>`` and renamed when complete; JSON
  files are replaced via a temp file and ``os.replace``. A chunk is trusted only once
  ``progress.json`` lists it, so a kill at any point loses at most the batch in flight;
  resuming deletes leftovers. ``close()`` marks the store complete. (Protects against a killed
  process, not a power cut: nothing is fsynced.)
* **Safety**: files are loaded with ``allow_pickle=False``, after their header is checked
  (an object array, a truncated or foreign file is refused without unpickling anything),
  and must have the dtype and shape the manifest records. Opening validates the manifest
  (every key the writer writes, of its type) and the chunk list: chunk i must be named
  ``chunk_<i>`` (no ``../``, absolute paths or symlinks out of the store), row ranges must
  tile ``0..num_rows`` without gaps, overlaps or duplicates, every chunk records a shape per
  field that fits it, and no chunk folder may be left out of the list. Rows asked for outside
  the store are an error naming the valid range.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable, Iterator, Mapping

import ml_dtypes
import numpy as np

from jaxreason.probe.store_format import (CHUNK_RE, DTYPES, FIELD_RE, FORMAT, MANIFEST,
                                          MANIFEST_KEYS, PROGRESS, RESERVED, TMP_PREFIX,
                                          VERSION, Field, IncompleteStoreError, as_json,
                                          check_chunks, check_file, check_keys, check_shapes,
                                          check_unlisted, chunk_name, infer_field, load_npy,
                                          read_json, read_manifest, to_storage, write_json)

__all__ = ["Field", "ArrayWriter", "ArrayStore", "open_arrays", "read_manifest", "FORMAT",
           "VERSION", "DTYPES", "IncompleteStoreError", "load_npy", "check_chunks"]


# ----------------------------------------------------------------------------- writer


class ArrayWriter:
    """Writes one store chunk by chunk.

    Args:
      directory: the store folder; created if missing.
      fields: name -> :class:`Field` declared up front (optional; others are fixed by the
        first chunk). Names may hold letters, digits, ``_ . -`` (they name files).
      identity: JSON facts about the run. On resume it must equal the stored identity (None
        keeps the stored one).
      resume: True continues after the last finished chunk; False requires an empty folder.
      format, label: the format name written to (and required of) the manifest, and what the
        store is called in errors (e.g. ``"activation store"``).
      header: extra JSON written into the manifest as is (never compared).
      version: the format's version (a format built on this store may count its own).
      chunk_info: arrays -> JSON kept in every chunk's record (e.g. its width), merged with
        the ``info`` of ``write``.
    """

    def __init__(self, directory, fields: Mapping[str, Field] | None = None, *,
                 identity: dict | None = None, resume: bool = True, format: str = FORMAT,
                 label: str = "array store", header: dict | None = None,
                 version: int = VERSION, chunk_info: Callable[[dict], dict] | None = None):
        self.directory = Path(directory)
        self.chunk_info = chunk_info
        self.format, self.label, self.version = format, label, version
        self.header = as_json(header or {}, "header")
        declared = {str(k): Field(*f).checked(f"field {k!r}") for k, f in (fields or {}).items()}
        for k in declared:
            self._check_name(k)
        identity = None if identity is None else as_json(identity, "identity")
        self._chunks: list[dict] = []
        self._closed = False
        self._marked_incomplete = False
        if self.directory.exists() and not self.directory.is_dir():
            raise NotADirectoryError(f"store path {self.directory} exists and is not a folder")
        existing = self.directory.exists() and any(self.directory.iterdir())
        if existing and not resume:
            raise FileExistsError(f"{self.directory} is not empty and resume=False; pass "
                                  f"resume=True to continue it or choose an empty directory")
        if existing:
            self.identity, self.fields = self._resume(identity, declared)
        else:
            self.directory.mkdir(parents=True, exist_ok=True)
            self.identity = identity or {}
            self.fields: dict[str, Field] | None = declared or None
            self._fields_fixed = False
            self._write_progress()
            self._write_manifest(complete=False)
            self._marked_incomplete = True
        self._declared = declared

    @staticmethod
    def _check_name(name: str) -> None:
        if not FIELD_RE.match(name):
            raise ValueError(f"field name {name!r} must be letters, digits, '_', '.' or '-' "
                             f"and not start with '.' or '-' (it names a file)")

    def _resume(self, identity, declared):
        man = read_manifest(self.directory)
        if man is None:
            raise FileExistsError(f"{self.directory} is not empty but has no {MANIFEST}; it is "
                                  f"not an {self.label}, refusing to write into it")
        mpath = self.directory / MANIFEST
        check_keys(man, MANIFEST_KEYS, str(mpath))
        if man.get("format") != self.format or man.get("version") != self.version:
            raise ValueError(f"{mpath}: format {man.get('format')!r} version "
                             f"{man.get('version')!r}; this writer handles {self.format!r} "
                             f"v{self.version}")
        stored = man.get("identity", {})
        if identity is not None and identity != stored:
            keys = sorted(set(stored) | set(identity))
            diff = [k for k in keys if stored.get(k, "<missing>") != identity.get(k, "<missing>")]
            detail = "; ".join(f"stored {k}={stored.get(k, '<missing>')!r}, given "
                               f"{k}={identity.get(k, '<missing>')!r}" for k in diff)
            raise ValueError(f"cannot resume {self.directory}: the stored identity differs "
                             f"from the given {', '.join(diff)}: {detail}; use the same "
                             f"settings or a new directory")
        ppath = self.directory / PROGRESS
        prog = read_json(ppath) if ppath.exists() else {"chunks": [], "fields": None}
        check_keys(prog, {"chunks": list}, str(ppath))
        stored_fields = prog.get("fields")
        if stored_fields is not None and not isinstance(stored_fields, dict):
            raise ValueError(f"{ppath}: 'fields' = {stored_fields!r} must be a JSON object or "
                             f"null; the store is damaged")
        fields = (None if stored_fields is None else
                  {k: Field.from_json(v, f"{ppath} field {k!r}") for k, v in stored_fields.items()})
        for k, f in declared.items():
            have = (fields or {}).get(k)
            if have is not None and have != f:
                raise ValueError(f"cannot resume {self.directory}: field {k!r} was written as "
                                 f"{have.to_json()} but is declared as {f.to_json()}")
        self._fields_fixed = bool(prog["chunks"])
        if fields is None or not self._fields_fixed:
            fields = {**(fields or {}), **declared} or None
        self._chunks = check_chunks(self.directory, prog["chunks"], None, str(ppath))
        for c in self._chunks:
            if not (self.directory / c["name"]).is_dir():
                raise ValueError(f"{PROGRESS} lists {c['name']} but {self.directory / c['name']}"
                                 f" is missing; the store is damaged")
        trusted = {c["name"] for c in self._chunks}
        for entry in self.directory.iterdir():  # leftovers of a killed run: never trusted
            if entry.name.startswith(TMP_PREFIX) or (CHUNK_RE.match(entry.name)
                                                     and entry.name not in trusted):
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() \
                    else entry.unlink()
        return stored, fields

    # -- public API

    def done_rows(self) -> int:
        """Rows in finished chunks: a resumed run skips this many records."""
        return sum(c["rows"] for c in self._chunks)

    @property
    def chunks(self) -> list[dict]:
        """Copies of the finished chunks' records (name, row_start, rows, shapes, info)."""
        return [dict(c) for c in self._chunks]

    def write(self, arrays: Mapping[str, np.ndarray], info: dict | None = None) -> None:
        """Append one chunk: ``arrays`` maps every field to an array of the same rows.

        ``info``: extra JSON kept in this chunk's record of the manifest (e.g. its width)."""
        if self._closed:
            raise RuntimeError(f"writer for {self.directory} is closed; open a new one to resume")
        stored, shapes = self._validate(arrays)
        rows = next(iter(stored.values())).shape[0]
        info = as_json({**(self.chunk_info(arrays) if self.chunk_info else {}), **(info or {})},
                        "info")
        bad = sorted(RESERVED & set(info))
        if bad:
            raise ValueError(f"info keys {bad} are reserved for the chunk record")
        if not self._marked_incomplete:  # appending to a closed store reopens it
            self._write_manifest(complete=False)
            self._marked_incomplete = True
        name = chunk_name(len(self._chunks))
        tmp = self.directory / f"{TMP_PREFIX}_{name}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        for key, val in stored.items():
            np.save(tmp / f"{key}.npy", val, allow_pickle=False)
        os.rename(tmp, self.directory / name)
        self._chunks.append({**info, "name": name, "row_start": self.done_rows(),
                             "rows": int(rows), "shapes": shapes})
        self._fields_fixed = True
        self._write_progress()

    def _validate(self, arrays):
        arrays = {str(k): np.asarray(v) for k, v in arrays.items()}
        if not arrays:
            raise ValueError("a chunk needs at least one array")
        first = next(iter(arrays))
        b = arrays[first].shape[0] if arrays[first].ndim else None
        if not b:
            raise ValueError(f"cannot write an empty chunk (B == 0, or {first!r} is a scalar)")
        fields = dict(self.fields or {})
        if self._fields_fixed and sorted(arrays) != sorted(fields):
            raise ValueError(f"fields {sorted(arrays)} differ from the earlier chunks' "
                             f"{sorted(fields)}; every chunk must give the same fields")
        missing = sorted(set(self._declared) - set(arrays))
        if missing:
            raise ValueError(f"the chunk lacks the declared fields {missing}")
        stored, shapes = {}, {}
        for k, v in arrays.items():
            self._check_name(k)
            if v.ndim < 1 or v.shape[0] != b:
                raise ValueError(f"field {k!r} must be per-row with leading dim B={b} (from "
                                 f"{first!r}), got shape {v.shape}")
            if k not in fields:
                fields[k] = infer_field(v, k)
            f = fields[k]
            if len(f.shape) != v.ndim - 1 or any(n is not None and n != m
                                                  for n, m in zip(f.shape, v.shape[1:])):
                raise ValueError(f"field {k!r} has shape {v.shape}, expected (B, "
                                 f"{', '.join('*' if n is None else str(n) for n in f.shape)})")
            stored[k] = to_storage(v, f, k)
            shapes[k] = list(v.shape[1:])
        if not self._fields_fixed:
            self.fields = fields
        return stored, shapes

    def close(self) -> Path:
        """Write manifest.json with complete=True; the store can then be opened."""
        if not self._closed:
            self._write_manifest(complete=True)
            self._closed = True
        return self.directory

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:  # an exception leaves the store incomplete (resumable)
            self.close()

    def _fields_json(self):
        return None if self.fields is None else {k: f.to_json() for k, f in self.fields.items()}

    def _write_progress(self) -> None:
        write_json(self.directory / PROGRESS, {"chunks": self._chunks,
                                                "fields": self._fields_json()})

    def _write_manifest(self, complete: bool) -> None:
        write_json(self.directory / MANIFEST, {
            **self.header, "format": self.format, "version": self.version,
            "identity": self.identity, "fields": self._fields_json() or {},
            "chunks": self._chunks, "num_rows": self.done_rows(), "complete": bool(complete)})


# ----------------------------------------------------------------------------- reader


def open_arrays(directory, format: str = FORMAT, label: str = "array store",
                version: int = VERSION) -> "ArrayStore":
    """Open a finished store; errors say whether it is missing, foreign, damaged or
    incomplete."""
    directory = Path(directory)
    man = read_manifest(directory)
    if man is None:
        raise FileNotFoundError(f"no {label} at {directory} ({MANIFEST} not found)")
    mpath = directory / MANIFEST
    check_keys(man, {"format": str, "version": int, "complete": bool}, str(mpath))
    if man.get("format") != format or man.get("version") != version:
        raise ValueError(f"{mpath}: format {man.get('format')!r} version {man.get('version')!r}; "
                         f"this reader handles {format!r} v{version}")
    if not man.get("complete"):
        ppath = directory / PROGRESS
        done = read_json(ppath).get("chunks", []) if ppath.exists() else []
        raise IncompleteStoreError(
            f"{label} {directory} is incomplete ({len(done)} finished chunks, "
            f"{sum(c.get('rows', 0) for c in done)} rows): the run was killed or not closed. "
            f"Resume it with resume=True, write the remaining rows and call close()")
    return ArrayStore(directory, man)


class ArrayStore:
    """Read side of a finished store: per field, all rows or a row slice, as NumPy."""

    def __init__(self, directory: Path, manifest: dict):
        self.path = Path(directory)
        self.manifest = manifest
        where = str(self.path / MANIFEST)
        check_keys(manifest, MANIFEST_KEYS, where)
        self.num_rows: int = manifest["num_rows"]
        self.identity: dict = dict(manifest["identity"])
        self.fields = {k: Field.from_json(v, f"{where} field {k!r}")
                       for k, v in manifest["fields"].items()}
        self.chunks = check_chunks(self.path, manifest["chunks"], self.num_rows, where)
        for c in self.chunks:
            check_shapes(c, self.fields, where)
        check_unlisted(self.path, self.chunks, where)

    def __repr__(self) -> str:
        return f"ArrayStore({str(self.path)!r}, rows={self.num_rows}, fields={sorted(self.fields)})"

    def _field(self, name: str) -> Field:
        if name not in self.fields:
            raise KeyError(f"no field {name!r} in {self.path}; stored fields: "
                           f"{sorted(self.fields)}")
        return self.fields[name]

    def shape(self, name: str) -> tuple[int, ...]:
        """(N, ...) of ``read(name)``: ragged axes at their largest chunk size."""
        f = self._field(name)
        tail = [max((c["shapes"][name][a] for c in self.chunks), default=0) if n is None else n
                for a, n in enumerate(f.shape)]
        return (self.num_rows, *tail)

    def rows(self, rows: slice | None) -> tuple[int, int]:
        """(start, stop) of a contiguous row slice. Negative bounds count from the end as in
        Python and a stop past the end is cut there (``slice(lo, lo + batch)`` reads a short
        last batch); a start outside ``-num_rows..num_rows`` or a stop below ``-num_rows``
        asks for rows that do not exist and is an error naming the valid range."""
        rows = slice(None) if rows is None else rows
        if not isinstance(rows, slice):
            raise TypeError(f"rows must be a slice or None, got {type(rows).__name__} {rows!r}")
        if rows.step not in (None, 1):
            raise ValueError(f"rows must be a contiguous slice (step 1), got {rows}")
        n = self.num_rows
        for bound, hi in ((rows.start, n), (rows.stop, None)):
            if bound is not None and (isinstance(bound, bool) or not isinstance(
                    bound, (int, np.integer)) or bound < -n or (hi is not None and bound > hi)):
                raise IndexError(f"rows {rows} lie outside {self.path}, which holds rows "
                                 f"0..{n - 1} (allowed bounds: -{n}..{n})")
        r0, r1, _ = rows.indices(n)
        return r0, max(r0, r1)

    def chunk(self, name: str, index: int) -> np.ndarray:
        """Chunk ``index``'s array of ``name``, memory-mapped, in the logical dtype."""
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) \
                or not 0 <= index < len(self.chunks):
            raise IndexError(f"chunk index {index!r} is outside {self.path}, which holds "
                             f"chunks 0..{len(self.chunks) - 1}")
        f, c = self._field(name), self.chunks[index]
        path = check_file(self.path, c["name"], f"{name}.npy")
        arr = load_npy(path, mmap=f.dtype != "str")
        want = (c["rows"], *c["shapes"][name])
        if arr.shape != want:
            raise ValueError(f"{path} has shape {arr.shape}, the manifest says {want}; the "
                             f"store is damaged")
        stored = DTYPES[f.dtype]
        if (arr.dtype.kind != "U") if f.dtype == "str" else arr.dtype != stored:
            raise ValueError(f"{path} holds {arr.dtype}, but field {name!r} is {f.dtype!r} "
                             f"(stored as {stored}); the store is damaged")
        return arr.view(ml_dtypes.bfloat16) if f.dtype == "bfloat16" else arr

    def iter_chunks(self, name: str, rows: slice | None = None
                    ) -> Iterator[tuple[slice, slice, np.ndarray]]:
        """(output rows, chunk rows, memory-mapped chunk) for every chunk meeting ``rows``."""
        r0, r1 = self.rows(rows)
        for i, c in enumerate(self.chunks):
            lo, hi = max(r0, c["row_start"]), min(r1, c["row_start"] + c["rows"])
            if lo < hi:
                yield (slice(lo - r0, hi - r0), slice(lo - c["row_start"], hi - c["row_start"]),
                       self.chunk(name, i))

    def read(self, name: str, rows: slice | None = None, dtype=None) -> np.ndarray:
        """(rows, ...) of ``name``; ragged axes padded with the field's fill. Chunks are
        memory-mapped and copied (cast to ``dtype`` if given) into one output array, so peak
        memory is that array."""
        f = self._field(name)
        r0, r1 = self.rows(rows)
        tail = self.shape(name)[1:]
        if f.dtype == "str":
            parts = [np.asarray(a[cr]) for _, cr, a in self.iter_chunks(name, rows)]
            width = max([p.dtype.itemsize // 4 for p in parts] + [1])
            out = np.full((max(r1 - r0, 0), *tail), f.fill, f"U{width}")
        else:
            logical = ml_dtypes.bfloat16 if f.dtype == "bfloat16" else DTYPES[f.dtype]
            out = np.full((max(r1 - r0, 0), *tail), f.fill, np.dtype(dtype or logical))
            parts = None
        for j, (orow, crow, arr) in enumerate(self.iter_chunks(name, rows)):
            src = parts[j] if parts is not None else arr[crow]
            out[(orow, *(slice(0, n) for n in src.shape[1:]))] = src
        return out
