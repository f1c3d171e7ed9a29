"""Retrying one API call: which failures are worth another try, and how long to wait.

Rate limits (429), server errors (5xx), timeouts and connection errors are transient: the
call is tried again after an exponentially growing wait, up to ``max_attempts`` tries in all.
Any other 4xx (bad request, unknown model, bad key, ...) will fail the same way every time,
so it is raised at once with the status and model in the message. The jitter that spreads
out retries of concurrent requests comes from an RNG seeded in the config, so test runs are
repeatable; with ``backoff_jitter=0`` there is none.
"""

from __future__ import annotations

import random
import threading
import time
from typing import Callable, TypeVar

import openai

from jaxreason.llm.config import LLMConfig
from jaxreason.llm.errors import LLMRequestError, LLMRetriesExhausted

T = TypeVar("T")


def is_retryable(error: BaseException) -> bool:
    """True for 429, 5xx, timeouts and connection failures."""
    if isinstance(error, (openai.APITimeoutError, openai.APIConnectionError, openai.RateLimitError)):
        return True
    return isinstance(error, openai.APIStatusError) and error.status_code >= 500


def describe_error(error: BaseException) -> str:
    """A one-line description: the HTTP status and the server's message, or the error kind."""
    if isinstance(error, openai.APIStatusError):
        return f"HTTP {error.status_code}: {error.message}"
    if isinstance(error, openai.APITimeoutError):
        return "timed out"
    if isinstance(error, openai.APIConnectionError):
        return f"connection failed ({error.message})"
    return f"{type(error).__name__}: {error}"


class Backoff:
    """The waits between attempts; thread-safe, one RNG for all requests of a client."""

    def __init__(self, config: LLMConfig, sleep: Callable[[float], None] = time.sleep):
        self.initial = config.backoff_initial_s
        self.multiplier = config.backoff_multiplier
        self.maximum = config.backoff_max_s
        self.jitter = config.backoff_jitter
        self._rng = random.Random(config.seed)
        self._lock = threading.Lock()
        self._sleep = sleep

    def delay(self, retry: int) -> float:
        """The wait before retry number ``retry`` (1-based)."""
        base = min(self.maximum, self.initial * self.multiplier ** (retry - 1))
        if not self.jitter:
            return base
        with self._lock:
            u = self._rng.random()
        return base * (1.0 - self.jitter * u)

    def wait(self, retry: int) -> None:
        self._sleep(self.delay(retry))


def call_with_retries(fn: Callable[[], T], *, config: LLMConfig, backoff: Backoff, what: str,
                      on_retry: Callable[[], None] = lambda: None) -> T:
    """``fn()``, tried up to ``config.max_attempts`` times on transient failures.

    ``what`` names the request in error messages (model and a prompt prefix, never the key).
    """
    last: BaseException | None = None
    for attempt in range(1, config.max_attempts + 1):
        try:
            return fn()
        except openai.APIError as e:
            if not is_retryable(e):
                status = getattr(e, "status_code", None)
                raise LLMRequestError(
                    f"{config.base_url} refused {what} with {describe_error(e)}; not retried "
                    "(only 429, 5xx, timeouts and connection errors are)", status=status) from e
            last = e
            if attempt < config.max_attempts:
                on_retry()
                backoff.wait(attempt)
    raise LLMRetriesExhausted(
        f"{what} to {config.base_url} failed {config.max_attempts} times (max_attempts); "
        f"last error: {describe_error(last)}", attempts=config.max_attempts) from last
