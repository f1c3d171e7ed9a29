"""A small reader and writer for the safetensors format, built on ``mmap`` and ``ml_dtypes``.

Why not ``safetensors.numpy``: it cannot represent bfloat16, and loading it materialises
whole files. Reading here is one tensor at a time as a zero-copy view of the memory-mapped
file, so converting a 7B checkpoint to bf16 never holds more than one tensor's copy in host
memory. The format is plain (an 8-byte header length, a JSON header, raw little-endian
bytes), and no code in the file is ever executed, unlike pickled ``.bin`` checkpoints.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
from pathlib import Path
from typing import Mapping

import ml_dtypes
import numpy as np

DTYPES = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
NAMES = {v: k for k, v in DTYPES.items()}


class SafetensorsFile:
    """Memory-mapped read access to one ``.safetensors`` file."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path} does not exist (or is not a file)")
        size = os.path.getsize(self.path)
        with open(self.path, "rb") as f:
            head = f.read(8)
            if len(head) != 8:
                raise ValueError(f"{self.path} is not a safetensors file: it has {size} bytes, "
                                 f"fewer than the 8-byte header length")
            (n,) = struct.unpack("<Q", head)
            if n > 100_000_000:
                raise ValueError(f"{self.path} is not a safetensors file (its first 8 bytes "
                                 f"announce a header of {n} bytes)")
            if 8 + n > size:
                raise ValueError(f"{self.path} is truncated: the header should take bytes "
                                 f"8..{8 + n}, the file has {size} bytes")
            try:
                header = json.loads(f.read(n))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise ValueError(f"{self.path} is not a safetensors file (its header is not "
                                 f"JSON: {e})") from None
            if not isinstance(header, dict):
                raise ValueError(f"{self.path} is not a safetensors file (its header is a JSON "
                                 f"{type(header).__name__}, not an object)")
            self.metadata = header.pop("__metadata__", {}) or {}
            self.header = header
            self._data_start = 8 + n
            self._check_entries(size)
            self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size > 0 else None

    def _check_entries(self, size: int) -> None:
        """Every tensor entry is well formed and its bytes lie inside the file."""
        for key, info in self.header.items():
            ok = (isinstance(info, dict) and isinstance(info.get("shape"), list)
                  and all(isinstance(d, int) and d >= 0 for d in info["shape"])
                  and isinstance(info.get("data_offsets"), list)
                  and len(info["data_offsets"]) == 2
                  and all(isinstance(o, int) and o >= 0 for o in info["data_offsets"]))
            if not ok:
                raise ValueError(f"{self.path}: header entry of tensor {key!r} is malformed "
                                 f"(need dtype, shape and two data_offsets): {info!r:.200}")
            if info.get("dtype") not in DTYPES:
                raise ValueError(f"{self.path}: tensor {key!r} has dtype {info.get('dtype')!r}, "
                                 f"not one of {sorted(DTYPES)}")
            begin, end = info["data_offsets"]
            count = int(np.prod(info["shape"], dtype=np.int64))
            if end - begin != count * DTYPES[info["dtype"]].itemsize:
                raise ValueError(f"{self.path}: tensor {key!r} spans bytes {begin}..{end} of the "
                                 f"data section, which does not match its shape "
                                 f"{tuple(info['shape'])} and dtype {info['dtype']}")
            if self._data_start + end > size:
                raise ValueError(f"{self.path} is truncated: header says tensor {key!r} ends at "
                                 f"byte {self._data_start + end}, file has {size} bytes")

    def keys(self) -> list[str]:
        return list(self.header)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self.header[key]["shape"])

    def get(self, key: str) -> np.ndarray:
        """A read-only view of tensor ``key`` (no copy)."""
        info = self.header[key]  # checked when the file was opened
        begin, _ = info["data_offsets"]
        dtype = DTYPES[info["dtype"]]
        count = int(np.prod(info["shape"], dtype=np.int64))
        arr = np.frombuffer(self._mm, dtype=dtype, count=count, offset=self._data_start + begin)
        return arr.reshape(info["shape"])


class CheckpointTensors:
    """All tensors of a HF checkpoint directory: one file or several with an index."""

    def __init__(self, directory: str | os.PathLike):
        d = Path(directory)
        index = d / "model.safetensors.index.json"
        single = d / "model.safetensors"
        if index.exists():
            self.source = index
            weight_map = _weight_map(index)
            files = {name: SafetensorsFile(d / name) for name in sorted(set(weight_map.values()))}
            self._where = {k: files[v] for k, v in weight_map.items()}
            for k, f in self._where.items():
                if k not in f.header:
                    raise ValueError(f"{index} maps tensor {k!r} to {f.path.name}, which does "
                                     f"not hold it")
        elif single.exists():
            self.source = single
            f = SafetensorsFile(single)
            self._where = {k: f for k in f.keys()}
        else:
            others = sorted(p.name for p in d.glob("*.safetensors"))
            if len(others) == 1:
                self.source = d / others[0]
                f = SafetensorsFile(d / others[0])
                self._where = {k: f for k in f.keys()}
            else:
                pickles = sorted(p.name for p in d.iterdir() if p.suffix in (".bin", ".pt", ".pth"))
                extra = (f" It has {pickles}: pickled checkpoints are refused because loading them "
                         "can run arbitrary code; convert them to safetensors first.") if pickles else ""
                raise FileNotFoundError(f"{d} has no model.safetensors or "
                                        f"model.safetensors.index.json.{extra}")

    def keys(self) -> list[str]:
        return list(self._where)

    def __contains__(self, key: str) -> bool:
        return key in self._where

    def shape(self, key: str) -> tuple[int, ...]:
        return self._where[key].shape(key)

    def get(self, key: str) -> np.ndarray:
        return self._where[key].get(key)

    def file_of(self, key: str) -> Path:
        """The file that holds tensor ``key``."""
        return self._where[key].path


def _weight_map(index: Path) -> dict[str, str]:
    """The ``weight_map`` of a sharded checkpoint's index, checked: tensor name -> a file name
    inside the checkpoint directory."""
    try:
        data = json.loads(index.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{index} is not valid JSON ({e})") from None
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise ValueError(f"{index} has no 'weight_map' object (tensor name -> shard file)")
    for key, name in weight_map.items():
        if not isinstance(name, str) or Path(name).name != name or not name.endswith(
                ".safetensors"):
            raise ValueError(f"{index}: weight_map[{key!r}] = {name!r} is not the name of a "
                             f".safetensors file in the checkpoint directory")
        if not (index.parent / name).is_file():
            raise FileNotFoundError(f"{index}: weight_map[{key!r}] names {name}, which is not "
                                    f"in {index.parent}")
    return weight_map


def _serialize_header(tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None):
    header, offset = {}, 0
    for name, arr in tensors.items():
        if arr.dtype not in NAMES:
            raise ValueError(f"cannot write tensor {name!r} of dtype {arr.dtype}")
        header[name] = {"dtype": NAMES[arr.dtype], "shape": list(arr.shape),
                        "data_offsets": [offset, offset + arr.nbytes]}
        offset += arr.nbytes
    if metadata:
        header["__metadata__"] = dict(metadata)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # align the data section to 8 bytes
    return raw


def write_file(path: str | os.PathLike, tensors: Mapping[str, np.ndarray],
               metadata: Mapping[str, str] | None = None) -> None:
    """Write tensors to ``path`` (caller handles atomicity by writing into a temp dir)."""
    tensors = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    raw = _serialize_header(tensors, metadata)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for arr in tensors.values():
            f.write(arr.tobytes())
        f.flush()
        os.fsync(f.fileno())


def shard_plan(sizes: Mapping[str, int], max_bytes: int) -> list[list[str]]:
    """Group tensor names, in order, into shards of at most ``max_bytes`` (one tensor may
    exceed it alone)."""
    shards, current, used = [], [], 0
    for name, n in sizes.items():
        if current and used + n > max_bytes:
            shards.append(current)
            current, used = [], 0
        current.append(name)
        used += n
    if current:
        shards.append(current)
    return shards
