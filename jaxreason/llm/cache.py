"""On-disk answer cache: a rerun of a study costs nothing and reproduces the same texts.

The key is the SHA-256 of canonical JSON (sorted keys, no spaces) of the *whole* request: the
endpoint's base_url (trailing slashes dropped), the model, the call kind, the messages or
prompt and every sampling setting. The API key is never part of it. Each entry is one JSON
file ``<dir>/<key[:2]>/<key>.json`` holding the request (for inspection) and the response
texts, finish reasons and usage; it is written to a unique temp file in the same folder and
moved into place with ``os.replace``, so concurrent writers and killed runs never leave half
a file behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from jaxreason.llm.errors import LLMError
from jaxreason.llm.records import LLMResponse, Request

CACHE_VERSION = 1


def canonical_request(base_url: str, model: str, request: Request) -> dict:
    """Everything that decides the answer, as plain JSON data."""
    return {"base_url": base_url.rstrip("/"), "model": model, "kind": request.kind,
            "body": request.body()}


def request_key(base_url: str, model: str, request: Request) -> str:
    """A stable hex hash of :func:`canonical_request`."""
    text = json.dumps(canonical_request(base_url, model, request), sort_keys=True,
                      separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class ResponseCache:
    """One JSON file per answered request under ``directory``."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        if self.directory.exists() and not self.directory.is_dir():
            raise LLMError(f"cache folder {self.directory} is a file; point the cache at a "
                           f"folder")

    def path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.json"

    def get(self, key: str) -> LLMResponse | None:
        """The cached answer, or ``None``. A damaged entry is an error naming its file."""
        path = self.path(key)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        try:
            entry = json.loads(text)
            if entry.get("version") != CACHE_VERSION:
                raise ValueError(f"cache version {entry.get('version')!r}, expected {CACHE_VERSION}")
            return LLMResponse.from_json(entry["response"], key=key, cached=True)
        except (ValueError, KeyError, TypeError) as e:
            raise LLMError(f"cache entry {path} is damaged ({e}); delete it to ask again") from None

    def put(self, key: str, canonical: dict, response: LLMResponse) -> None:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        entry = {"version": CACHE_VERSION, "key": key, "request": canonical,
                 "response": response.to_json()}
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".tmp-{key[:8]}-", suffix=".json")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(entry, f, ensure_ascii=False, indent=1, sort_keys=True)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
