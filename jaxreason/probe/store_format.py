"""The on-disk format shared by the array store's writer and reader: field declarations and
dtypes, the storage casts (bfloat16 as raw ``uint16`` bits), pickle-free loading, atomic JSON
files and the validation of chunk lists (names that cannot leave the store, row ranges that
tile the rows). :mod:`jaxreason.probe.array_store` describes the layout.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import NamedTuple

import ml_dtypes
import numpy as np

from jaxreason import atomic

FORMAT = "jaxreason.array_store"
VERSION = 1
MANIFEST = "manifest.json"
PROGRESS = "progress.json"
TMP_PREFIX = ".tmp"
CHUNK_RE = re.compile(r"^chunk_\d{5}$")
FIELD_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
RESERVED = {"name", "row_start", "rows", "shapes"}  # keys of a chunk record

#: logical dtype -> dtype of the .npy files (``str`` keeps each chunk's own width)
DTYPES = {**{n: np.dtype(n) for n in (
    "float32", "float16", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16",
    "uint32", "uint64", "bool")}, "bfloat16": np.dtype(np.uint16), "str": np.dtype("U1")}


class IncompleteStoreError(ValueError):
    """The store was killed or never closed; resume it with ``resume=True``."""


class Field(NamedTuple):
    """One named array: dtype, shape after the rows (``None`` = ragged axis) and pad value."""

    dtype: str
    shape: tuple = ()
    fill: float | int | bool | str = 0

    def to_json(self) -> dict:
        return {"dtype": self.dtype, "shape": list(self.shape), "fill": self.fill}

    @staticmethod
    def from_json(d: dict, where: str) -> "Field":
        try:
            return Field(str(d["dtype"]), tuple(d["shape"]), d.get("fill", 0)).checked(where)
        except (KeyError, TypeError) as e:
            raise ValueError(f"{where}: a field needs 'dtype' and 'shape' ({e})") from e

    def checked(self, where: str) -> "Field":
        if self.dtype not in DTYPES:
            raise ValueError(f"{where}: dtype {self.dtype!r} is not supported; allowed: "
                             f"{sorted(DTYPES)}")
        for n in self.shape:
            if n is not None and (isinstance(n, bool) or not isinstance(n, (int, np.integer))
                                  or n < 0):
                raise ValueError(f"{where}: shape {list(self.shape)} may hold only "
                                 f"non-negative ints and None (ragged axes)")
        return Field(self.dtype, tuple(None if n is None else int(n) for n in self.shape),
                     self.fill)


# ----------------------------------------------------------------------------- file helpers


def write_json(path: Path, obj) -> None:
    """Atomically (readers see the old or the new file, never half of one), sorted keys."""
    atomic.write_json(path, obj, indent=1, sort_keys=True)


def read_json(path: Path) -> dict:
    try:
        out = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); the store is damaged") from e
    if not isinstance(out, dict):
        raise ValueError(f"{path} holds a {type(out).__name__}, not an object; damaged store")
    return out


def npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) from an .npy header, checked against the file's size, without loading
    (and never unpickling) anything; a file that is not one gets an error naming it."""
    try:
        f = open(path, "rb")
    except FileNotFoundError as e:
        raise FileNotFoundError(f"store file {path} is missing; the store is damaged") from e
    with f:
        try:
            version = np.lib.format.read_magic(f)
            read = {(1, 0): np.lib.format.read_array_header_1_0,
                    (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if read is None:
                raise ValueError(f".npy format version {version} is not supported")
            shape, fortran, dtype = read(f)
        except ValueError as e:
            raise ValueError(f"refusing to load {path}: it is not a readable .npy file ({e}); "
                             f"the store is damaged") from e
        offset = f.tell()
    if dtype.hasobject:
        raise ValueError(f"refusing to load {path}: it holds Python objects (dtype {dtype}), "
                         f"which would need pickle; these stores never contain pickled objects")
    need = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    have = path.stat().st_size
    if have != need:
        what = "truncated" if have < need else "longer than its header says"
        raise ValueError(f"refusing to load {path}: the file is {what} ({have} bytes, its "
                         f"header {tuple(shape)} {dtype} needs {need}); the store is damaged")
    return tuple(shape), dtype


def load_npy(path: Path, mmap: bool = False) -> np.ndarray:
    """np.load without pickle, after :func:`npy_header` has checked the file: a missing,
    truncated or non-.npy file, or an object array, gets an error naming the file."""
    npy_header(path)
    try:
        return np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
    except ValueError as e:
        raise ValueError(f"refusing to load {path}: it needs pickle or is not a plain numeric "
                         f"array ({e}); these stores never contain pickled objects") from e


def as_json(obj, what: str):
    """``obj`` as JSON will give it back (tuples become lists), so resumes compare equal."""
    try:
        return json.loads(json.dumps(obj))
    except TypeError as e:
        raise TypeError(f"{what} must be JSON-serialisable ({e})") from e


def to_storage(x: np.ndarray, field: Field, name: str) -> np.ndarray:
    """Check ``x``'s kind against the field and cast it to the storage dtype."""
    kind = "bf16" if x.dtype == ml_dtypes.bfloat16 else x.dtype.kind
    want = DTYPES[field.dtype]
    if field.dtype == "str":
        if kind != "U":
            raise ValueError(f"field {name!r} holds str, got dtype {x.dtype}")
        return x
    if field.dtype == "bfloat16" or want.kind == "f":
        if kind not in ("f", "bf16", "i", "u"):
            raise ValueError(f"field {name!r} holds {field.dtype}, got dtype {x.dtype}")
        if field.dtype == "bfloat16":
            return x.astype(ml_dtypes.bfloat16).view(np.uint16)
        return x.astype(want, copy=False)
    if want.kind == "b":
        if kind != "b":
            raise ValueError(f"field {name!r} holds bool, got dtype {x.dtype}")
        return x
    if kind not in "iub":
        raise ValueError(f"field {name!r} holds {field.dtype}, got dtype {x.dtype} (no "
                         f"float-to-int casts: they would lose values silently)")
    info = np.iinfo(want)
    if x.size and (x.min() < info.min or x.max() > info.max):
        raise ValueError(f"field {name!r}: values {x.min()}..{x.max()} do not fit in "
                         f"{field.dtype}")
    return x.astype(want, copy=False)


def infer_field(x: np.ndarray, name: str) -> Field:
    if x.dtype == ml_dtypes.bfloat16:
        return Field("bfloat16", (None,) * (x.ndim - 1))
    if x.dtype.kind not in "biufU":
        raise ValueError(f"field {name!r} has dtype {x.dtype}; allowed kinds are bool, int, "
                         f"uint, float and str (no objects: they would need pickle)")
    dtype = "str" if x.dtype.kind == "U" else x.dtype.name
    fill = "" if dtype == "str" else (False if dtype == "bool" else 0)
    return Field(dtype, (None,) * (x.ndim - 1), fill).checked(f"field {name!r}")


def chunk_name(i: int) -> str:
    return f"chunk_{i:05d}"


def read_manifest(directory) -> dict | None:
    """The manifest of the store at ``directory``, or None when there is none."""
    path = Path(directory) / MANIFEST
    return read_json(path) if path.exists() else None


#: what every manifest the writer makes holds, and the JSON type of each
MANIFEST_KEYS = {"format": str, "version": int, "identity": dict, "fields": dict,
                 "chunks": list, "num_rows": int, "complete": bool}


_JSON_NAMES = {str: "string", int: "integer", dict: "object", list: "list", bool: "true/false"}


def check_keys(obj: dict, required: dict, source: str) -> None:
    """Refuse a JSON object that lacks a required key or holds one of the wrong type."""
    missing = [k for k in required if k not in obj]
    if missing:
        raise ValueError(f"{source}: required keys {missing} are missing (required: "
                         f"{sorted(required)}); the store is damaged")
    for k, tp in required.items():
        v = obj[k]
        if not isinstance(v, tp) or (tp is int and isinstance(v, bool)):
            raise ValueError(f"{source}: {k!r} = {v!r} must be a JSON {_JSON_NAMES[tp]}; the "
                             f"store is damaged")


def check_shapes(chunk: dict, fields: dict, source: str) -> None:
    """A chunk record's ``shapes``: one list of non-negative ints per field, fitting the
    field's fixed axes."""
    shapes = chunk.get("shapes")
    name = chunk["name"]
    if not isinstance(shapes, dict) or sorted(shapes) != sorted(fields):
        have = sorted(shapes) if isinstance(shapes, dict) else shapes
        raise ValueError(f"{source}: chunk {name!r} records fields {have}, the store has "
                         f"{sorted(fields)}; the store is damaged")
    for k, f in fields.items():
        s = shapes[k]
        if (not isinstance(s, list) or len(s) != len(f.shape)
                or any(isinstance(n, bool) or not isinstance(n, int) or n < 0 for n in s)
                or any(want is not None and n != want for n, want in zip(s, f.shape))):
            raise ValueError(f"{source}: chunk {name!r} records shape {s!r} for field {k!r}, "
                             f"which does not fit the field's shape {list(f.shape)} (None = "
                             f"any size); the store is damaged")


def check_chunks(directory: Path, chunks, num_rows: int | None, source: str) -> list[dict]:
    """Refuse a chunk list that escapes the store or does not tile the rows."""
    if not isinstance(chunks, list):
        raise ValueError(f"{source}: 'chunks' must be a list, got {type(chunks).__name__}")
    root = directory.resolve()
    seen, end = set(), 0
    for c in chunks:
        name = c.get("name") if isinstance(c, dict) else None
        if not isinstance(name, str) or not CHUNK_RE.match(name):
            raise ValueError(f"{source}: chunk name {name!r} is not of the form chunk_<5 digits>"
                             f"; refusing a name that could point outside {directory}")
        path = directory / name
        if path.is_symlink() or (path.exists() and path.resolve().parent != root):
            raise ValueError(f"{source}: chunk {name!r} is a link out of {directory}; refusing")
        if name in seen:
            raise ValueError(f"{source}: chunk {name!r} is listed twice")
        if name != chunk_name(len(seen)):
            raise ValueError(f"{source}: chunk {len(seen)} is named {name!r}; the writer names "
                             f"chunk i chunk_<i> ({chunk_name(len(seen))!r}), so the list was "
                             f"reordered or edited; the store is damaged")
        seen.add(name)
        start, rows = c.get("row_start"), c.get("rows")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (start, rows)) \
                or rows < 1:
            raise ValueError(f"{source}: chunk {name!r} has row_start={start!r} rows={rows!r}; "
                             f"both must be ints and rows >= 1")
        if start != end:
            what = "overlaps the chunk before it" if start < end else "leaves a gap after row"
            raise ValueError(f"{source}: chunk {name!r} starts at row {start} but the chunks "
                             f"before it end at {end}: it {what}; the store is damaged")
        end = start + rows
    if num_rows is not None and end != num_rows:
        raise ValueError(f"{source}: the chunks hold {end} rows but num_rows says {num_rows}; "
                         f"the store is damaged")
    return list(chunks)


def check_unlisted(directory: Path, chunks: list[dict], source: str) -> None:
    """Refuse a finished store whose folder holds chunks its list leaves out (a shortened
    list that still adds up would silently hide their rows)."""
    listed = {c["name"] for c in chunks}
    extra = sorted(e.name for e in directory.iterdir()
                   if CHUNK_RE.match(e.name) and e.name not in listed)
    if extra:
        raise ValueError(f"{source} lists {len(chunks)} chunks but {directory} also holds "
                         f"{extra}: the chunk list was shortened or the store damaged; "
                         f"refusing to open it with rows left out")


def check_file(directory: Path, chunk: str, fname: str) -> Path:
    path = directory / chunk / fname
    if path.is_symlink() and directory.resolve() not in path.resolve().parents:
        raise ValueError(f"{path} is a link out of the store {directory}; refusing to read it")
    return path
