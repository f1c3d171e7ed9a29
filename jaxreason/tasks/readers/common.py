"""What every reader of user-supplied data shares: row errors and local ``datasets`` folders.

Readers take a local path only and never download anything. A path may be a file in the
format's own layout (JSON lines, CSV, JSON) or a folder written by ``datasets``'
``save_to_disk`` (read with ``datasets.load_from_disk``, which never touches the network).
A dataset that sits only in the HuggingFace hub cache is not read directly, because
``load_dataset`` stays offline only when ``HF_HUB_OFFLINE=1`` was set before ``datasets`` was
imported; load it once yourself and ``save_to_disk`` it.

Every problem with a row is a :class:`RowError` naming the file, the 1-based line (or the
1-based row of a ``datasets`` folder), the field, and what was expected.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator


class ReaderError(ValueError):
    """A data path that cannot be read at all (missing, wrong kind, no such split)."""


class RowError(ValueError):
    """One bad row. ``str()`` reads ``<file>, line <n>, field '<f>': <what was expected>``."""

    def __init__(self, path: str | Path, line: int, field: str | None, message: str,
                 unit: str = "line"):
        self.path, self.line, self.field = str(path), line, field
        where = f"{path}, {unit} {line}" + (f", field {field!r}" if field is not None else "")
        super().__init__(f"{where}: {message}")


def short(value: Any, width: int = 60) -> str:
    """``repr`` of a value, cut to ``width`` characters for error messages."""
    text = repr(value)
    return text if len(text) <= width else text[:width] + "...'"


class RowContext:
    """Where rows come from, so parsers can raise errors that point at them."""

    def __init__(self, path: str | Path, unit: str = "line"):
        self.path = Path(path)
        self.unit = unit

    def error(self, line: int, field: str | None, message: str) -> RowError:
        return RowError(self.path, line, field, message, unit=self.unit)

    def text(self, row: dict, line: int, field: str, *, allow_empty: bool = False) -> str:
        """``row[field]`` as a string; missing or non-string values are errors."""
        if field not in row:
            raise self.error(line, field, f"missing; expected a string (the row has {sorted(row)})")
        value = row[field]
        if not isinstance(value, str):
            raise self.error(line, field, f"expected a string, got {type(value).__name__} {short(value)}")
        if not allow_empty and not value.strip():
            raise self.error(line, field, "expected a non-empty string, got an empty one")
        return value


def data_path(path: str | Path, what: str) -> Path:
    """``path`` as a Path that exists; otherwise an error saying what was expected there."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ReaderError(f"{what} not found: {p} does not exist (pass a local file or a folder "
                          "written by datasets' save_to_disk; nothing is ever downloaded)")
    return p


def is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file())


def dataset_rows(path: Path, split: str | None, what: str) -> Iterator[tuple[int, dict]]:
    """(1-based row number, row dict) from a ``save_to_disk`` folder.

    A ``DatasetDict`` folder needs ``split`` unless it holds one split only.
    """
    if not is_saved_dataset(path):
        raise ReaderError(f"{path} is a folder but not one written by datasets' save_to_disk (it has "
                          f"no state.json or dataset_dict.json); pass the {what} file itself")
    import datasets  # seconds to import; only datasets folders need it

    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        names = sorted(ds)
        if split is None and len(names) == 1:
            split = names[0]
        if split not in ds:
            raise ReaderError(f"{path} holds the splits {names}; choose one with split=..."
                              + (f" ({split!r} is not among them)" if split is not None else ""))
        ds = ds[split]
    for i, row in enumerate(ds):
        yield i + 1, dict(row)


def context_for(path: Path) -> RowContext:
    return RowContext(path, unit="row" if path.is_dir() else "line")


def _json_lines(path: Path, ctx: RowContext) -> Iterator[tuple[int, object]]:
    with open(path, encoding="utf-8") as f:
        for line, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                yield line, json.loads(text)
            except json.JSONDecodeError as e:
                raise ctx.error(line, None, f"expected one JSON object per line ({e.msg} at "
                                            f"column {e.colno})") from None


def _json_list(text: str, ctx: RowContext) -> Iterator[tuple[int, object]]:
    """The items of a top-level JSON list, each with the line it starts on."""
    decoder = json.JSONDecoder()

    def skip(i: int) -> int:
        while i < len(text) and text[i] in " \t\r\n":
            i += 1
        return i

    def line_of(i: int) -> int:
        return text.count("\n", 0, i) + 1

    i = skip(skip(0) + 1)   # past the '['
    while i < len(text) and text[i] != "]":
        try:
            obj, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError as e:
            raise ctx.error(e.lineno, None, f"not valid JSON ({e.msg} at column {e.colno})") from None
        yield line_of(i), obj
        i = skip(end)
        if i < len(text) and text[i] == ",":
            i = skip(i + 1)
        elif i >= len(text) or text[i] != "]":
            raise ctx.error(line_of(i), None, "expected ',' or ']' after a record")
    if i >= len(text):
        raise ctx.error(line_of(i), None, "the JSON list is not closed with ']'")
    if skip(i + 1) != len(text):
        raise ctx.error(line_of(skip(i + 1)), None, "unexpected text after the closing ']'")


def json_records(path: Path, ctx: RowContext) -> Iterator[tuple[int, object]]:
    """(1-based line, record) from a JSON-lines file, or from a file holding one JSON list
    (its first non-blank character is ``[``); blank lines are skipped but counted."""
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        yield from _json_list(text, ctx)
    else:
        yield from _json_lines(path, ctx)


def source_rows(path: Path, split: str | None, what: str, read_file, split_name: str = "split"
                ) -> Iterator[tuple[int, object]]:
    """``(line, row)`` pairs from a ``save_to_disk`` folder (its ``split``) or from a file
    through ``read_file(path)``; a split given for a plain file is refused, since a file has
    none (``split_name`` is the caller's argument name, for the message)."""
    if path.is_dir():
        return dataset_rows(path, split, what)
    if split is not None:
        raise ReaderError(f"{split_name}={split!r} applies only to a datasets folder; "
                          f"{path} is a file")
    return read_file(path)
