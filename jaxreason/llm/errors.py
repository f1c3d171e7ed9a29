"""The errors the LLM client raises, one class per thing a caller may want to handle.

None of them ever carries an API key: messages name the endpoint, the model, the HTTP status
and a short prefix of the prompt, nothing from the request headers.
"""

from __future__ import annotations


class LLMError(RuntimeError):
    """Base class of every LLM client error."""


class LLMConfigError(LLMError, ValueError):
    """A bad setting (an unset key variable, a non-positive limit, ...)."""


class LLMRequestError(LLMError):
    """The endpoint refused the request with a status that retrying will not fix (a 4xx)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class LLMRetriesExhausted(LLMError):
    """Every allowed attempt failed with a retryable error (429, 5xx, timeout, connection)."""

    def __init__(self, message: str, attempts: int):
        super().__init__(message)
        self.attempts = attempts


class LLMResponseError(LLMError):
    """The endpoint answered, but not with a usable OpenAI-style body."""


class OfflineCacheMiss(LLMError):
    """Offline mode found no cached answer for a request; nothing was sent."""
