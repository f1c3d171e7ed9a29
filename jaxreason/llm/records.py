"""Plain records the LLM client passes around: one request, one answer, a usage tally.

A :class:`Request` holds everything that decides the answer except the endpoint and model
(which come from the client's config): the call kind (chat or legacy completion), the
messages or prompt, and every sampling setting exactly as it will be sent. Settings whose
value is ``None`` are dropped, so ``stop=None`` and no ``stop`` are the same request.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from typing import Any, Literal, Mapping

from jaxreason.llm.errors import LLMConfigError

#: keys the client fills in itself, or that would change the response format
_RESERVED = frozenset({"model", "messages", "prompt", "stream", "stream_options"})


def _freeze_sampling(sampling: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    bad = sorted(_RESERVED & set(sampling))
    if bad:
        raise LLMConfigError(f"sampling settings may not include {bad}: the client sets model and "
                             "messages/prompt itself and does not stream")
    items = []
    for name, value in sorted(sampling.items()):
        if value is None:
            continue
        try:
            json.dumps(value)
        except TypeError:
            raise LLMConfigError(f"sampling setting {name}={value!r} is not JSON data; pass "
                                 "numbers, strings, booleans, lists or dicts") from None
        items.append((name, value))
    return tuple(items)


@dataclasses.dataclass(frozen=True)
class Request:
    """One chat or completion call. Build with :meth:`chat` or :meth:`completion`."""

    kind: Literal["chat", "completion"]
    messages: tuple[Mapping[str, Any], ...] | None = None
    prompt: str | None = None
    sampling: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def chat(cls, messages, **sampling) -> "Request":
        """A chat call. ``messages``: a list of ``{"role": ..., "content": ...}`` dicts, or a
        single string (sent as one user message)."""
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        messages = tuple(dict(m) for m in messages)
        if not messages or any("role" not in m for m in messages):
            raise LLMConfigError("chat messages must be a non-empty list of dicts with a 'role' "
                                 f"(and 'content'), got {messages!r}")
        return cls("chat", messages=messages, sampling=_freeze_sampling(sampling))

    @classmethod
    def completion(cls, prompt: str, **sampling) -> "Request":
        """A legacy (non-chat) completion call on a text prompt."""
        if not isinstance(prompt, str):
            raise LLMConfigError(f"a completion prompt must be a string, got {type(prompt).__name__}")
        return cls("completion", prompt=prompt, sampling=_freeze_sampling(sampling))

    def body(self) -> dict:
        """The request fields as sent (without the model), canonical for hashing."""
        out: dict = dict(self.sampling)
        if self.kind == "chat":
            out["messages"] = [dict(m) for m in self.messages]
        else:
            out["prompt"] = self.prompt
        return out

    def describe(self, width: int = 60) -> str:
        """A short, one-line prefix of the prompt (last chat message) for error messages."""
        text = self.prompt if self.kind == "completion" else str(self.messages[-1].get("content"))
        text = " ".join(text.split())
        return repr(text if len(text) <= width else text[:width] + "...")


@dataclasses.dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


@dataclasses.dataclass(frozen=True)
class LLMResponse:
    """The answer to one request: one text and finish reason per sample (``n``)."""

    texts: tuple[str, ...]
    finish_reasons: tuple[str | None, ...]
    usage: Usage
    cached: bool = False     # True when read from the cache (no tokens spent this time)
    key: str = ""            # the cache key of the request

    @property
    def text(self) -> str:
        """The first (usually only) sample."""
        return self.texts[0]

    def to_json(self) -> dict:
        return {"texts": list(self.texts), "finish_reasons": list(self.finish_reasons),
                "usage": dataclasses.asdict(self.usage)}

    @classmethod
    def from_json(cls, data: dict, key: str, cached: bool) -> "LLMResponse":
        return cls(tuple(data["texts"]), tuple(data["finish_reasons"]), Usage(**data["usage"]),
                   cached=cached, key=key)


class UsageTally:
    """Thread-safe running totals: tokens spent, requests sent, cache hits and retries."""

    def __init__(self):
        self._lock = threading.Lock()
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.total_tokens = 0
        self.requests = 0       # answered network requests
        self.cache_hits = 0
        self.retries = 0        # failed attempts that were tried again

    def add_response(self, usage: Usage) -> None:
        with self._lock:
            self.requests += 1
            self.prompt_tokens += usage.prompt_tokens
            self.completion_tokens += usage.completion_tokens
            self.total_tokens += usage.total_tokens

    def add_cache_hit(self) -> None:
        with self._lock:
            self.cache_hits += 1

    def add_retry(self) -> None:
        with self._lock:
            self.retries += 1

    def as_dict(self) -> dict[str, int]:
        with self._lock:
            return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                    "total_tokens": self.total_tokens, "requests": self.requests,
                    "cache_hits": self.cache_hits, "retries": self.retries}

    def __repr__(self) -> str:
        return f"UsageTally({self.as_dict()})"
