"""Where an HF export may write: never over a user's files.

Why: an export directory is often one the user already has (``run_dir/hf``, a checkpoint
folder beside a paper draft). Replacing the whole directory would delete whatever else lives
there. So every export writes a marker file of its own, ``jaxreason_export.json``, listing the
files it wrote. A later export recognises its earlier self by that marker and replaces only
those files; a non-empty directory without the marker is refused unless the caller says
``overwrite=True``, and even then only the files the new export writes are replaced. A file
the export did not write is never deleted.

The new export is always built complete in a temporary directory beside the target first.
When the target is missing, empty, or holds nothing but a previous export, the temporary
directory is swapped in whole (one rename). Otherwise its files are moved in one by one with
``os.replace``; before that the marker is rewritten to list both the old and the new files, so
an export killed half way is still recognised, and completed, by the next one.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from jaxreason.atomic import swap_into_place, write_json

MARKER = "jaxreason_export.json"
MARKER_FORMAT = "jaxreason-hf-export"


def _files_under(directory: Path) -> list[str]:
    """Relative POSIX paths of every file below ``directory`` (symlinks count as files)."""
    out = []
    for p in sorted(directory.rglob("*")):
        if p.is_file() or p.is_symlink():
            out.append(p.relative_to(directory).as_posix())
    return out


def _inside(name: str, directory: Path) -> bool:
    """Whether a listed name is a plain relative path that stays inside ``directory``."""
    if not isinstance(name, str) or not name or os.path.isabs(name):
        return False
    resolved = (directory / name).resolve()
    return resolved != directory.resolve() and directory.resolve() in resolved.parents


def previous_export_files(target: Path) -> set[str] | None:
    """The files an earlier export wrote into ``target`` (marker included), or None when
    ``target`` holds no export marker. A marker that is not ours is an error naming it."""
    marker = target / MARKER
    if not marker.is_file():
        return None
    try:
        data = json.loads(marker.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{marker} is not a readable jaxreason export marker ({e}); remove it "
                         f"or export to another directory") from None
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(data, dict) or data.get("format") != MARKER_FORMAT or \
            not isinstance(files, list):
        raise ValueError(f"{marker} is not a jaxreason export marker (expected a JSON object "
                         f"with format={MARKER_FORMAT!r} and a 'files' list); remove it or "
                         f"export to another directory")
    # names that would point outside the directory are never trusted (nor deleted)
    return {f for f in files if _inside(f, target)} | {MARKER}


def check_target(target: Path, overwrite: bool) -> set[str]:
    """Refuse a target the export may not write into; return the files it may replace."""
    if target.exists() and not target.is_dir():
        raise FileExistsError(f"export target {target} exists and is a file, not a directory; "
                              f"choose a directory path")
    if not target.exists():
        return set()
    present = set(_files_under(target))
    own = previous_export_files(target)
    if own is not None:
        return own
    if present or any(target.iterdir()):
        if not overwrite:
            shown = sorted(present)[:5] or sorted(p.name for p in target.iterdir())[:5]
            raise FileExistsError(
                f"export target {target} is not empty and holds no {MARKER} (it is not an "
                f"earlier jaxreason export): it has {shown}{' ...' if len(present) > 5 else ''}."
                f" Export to an empty or new directory, or pass overwrite=True to replace only "
                f"the files the export writes (other files are always kept)")
    return set()


@contextlib.contextmanager
def export_into(target, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory to build an export in; on success put it at ``target``
    under the rules of this module (and write the marker), on error leave ``target`` as it was.
    """
    target = Path(target).expanduser()
    own = check_target(target, overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        written = [f for f in _files_under(tmp) if f != MARKER]
        write_json(tmp / MARKER, {"format": MARKER_FORMAT, "files": sorted(written)})
        present = set(_files_under(target)) if target.is_dir() else set()
        if not present - own and not (target.is_dir() and _has_foreign_dirs(target, own)):
            swap_into_place(tmp, target)  # nothing but an earlier export (or nothing) there
        else:
            _merge(tmp, target, own, set(written))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _has_foreign_dirs(target: Path, own: set[str]) -> bool:
    """Empty subdirectories are the user's too: a whole-directory swap would drop them."""
    own_dirs = {str(Path(f).parent) for f in own}
    return any(p.is_dir() and not any(p.iterdir()) and
               p.relative_to(target).as_posix() not in own_dirs for p in target.rglob("*"))


def _merge(tmp: Path, target: Path, own: set[str], written: set[str]) -> None:
    """Move the new export's files into a directory that also holds files it did not write."""
    stale = sorted(f for f in own - written - {MARKER} if (target / f).exists())
    # first claim old and new names, so a kill half way leaves a recognisable export
    write_json(target / MARKER, {"format": MARKER_FORMAT,
                                 "files": sorted(written | set(stale))})
    for name in sorted(written):
        dest = target / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.is_dir() and not dest.is_symlink():
            raise IsADirectoryError(f"cannot write {name} of the export: {dest} is a directory")
        os.replace(tmp / name, dest)
    for name in stale:  # files of the earlier export the new one no longer has (old shards)
        with contextlib.suppress(FileNotFoundError):
            (target / name).unlink()
    os.replace(tmp / MARKER, target / MARKER)
    shutil.rmtree(tmp, ignore_errors=True)
