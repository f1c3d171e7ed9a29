"""Atomic writes: a reader, or a run killed half way, sees the old file or the new one,
never half of one.

Every file the package writes that a later run reads back (metrics, manifests, configs,
exports, dataset directories) goes through these helpers: the bytes go to a temporary name in
the same directory, then ``os.replace`` renames it over the target, which POSIX makes atomic
within one file system. Directories are built under a temporary name and swapped in; the old
directory is removed only after the new one is in place.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator


def write_text(path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (parents created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def write_json(path, obj: Any, **dump_args) -> Path:
    """``json.dumps(obj, indent=2)`` (or ``dump_args``) written atomically."""
    dump_args.setdefault("indent", 2)
    return write_text(path, json.dumps(obj, **dump_args))


def write_jsonl(path, rows: Iterable[Any]) -> Path:
    """One JSON object per line, written atomically."""
    return write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


@contextlib.contextmanager
def building_dir(target) -> Iterator[Path]:
    """Yield a fresh temporary directory beside ``target``; on success it replaces
    ``target`` (an old one is removed only after the swap), on error it is deleted and
    ``target`` is untouched."""
    target = Path(target).expanduser()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        swap_into_place(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def swap_into_place(tmp: Path, target: Path) -> None:
    """Rename directory ``tmp`` to ``target``; an old ``target`` goes only after the rename."""
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)
