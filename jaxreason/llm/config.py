"""Settings of the LLM client as a small frozen dataclass that study YAML configs can embed.

The config names the *environment variable* that holds the API key, never the key itself, so
configs can be committed, printed and saved with results. :func:`read_api_key` looks the
variable up when a network call is about to be possible; its errors name the variable only.
"""

from __future__ import annotations

import dataclasses
import os
import re

from jaxreason.llm.errors import LLMConfigError

_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclasses.dataclass(frozen=True)
class LLMConfig:
    """Where to send requests, where to cache answers and how hard to retry.

    ``model``: the model name the endpoint expects. ``base_url``: any OpenAI-compatible
    endpoint (OpenAI, vLLM, llama.cpp server, ...), including the ``/v1`` suffix.
    ``api_key_env``: name of the environment variable with the key. ``cache_dir``: folder of
    the on-disk answer cache (``None``: no cache). ``offline``: answer only from the cache; a
    miss is an error and no network call is ever made. ``max_concurrency``: requests in flight
    at once in a batch. ``max_attempts``: tries per request (the first one included) on rate
    limits, server errors, timeouts and connection errors. ``timeout_s``: per-request timeout.
    The wait before retry k (k = 1, 2, ...) is ``min(backoff_max_s, backoff_initial_s *
    backoff_multiplier ** (k - 1))``, shortened by a random fraction of at most
    ``backoff_jitter`` drawn from an RNG seeded with ``seed`` (``backoff_jitter=0``: no jitter).
    ``progress``: show a tqdm bar for batches.
    """

    model: str
    base_url: str = "https://api.openai.com/v1"
    api_key_env: str = "OPENAI_API_KEY"
    cache_dir: str | None = None
    offline: bool = False
    max_concurrency: int = 4
    max_attempts: int = 6
    timeout_s: float = 60.0
    backoff_initial_s: float = 1.0
    backoff_multiplier: float = 2.0
    backoff_max_s: float = 60.0
    backoff_jitter: float = 0.1
    seed: int = 0
    progress: bool = True

    def __post_init__(self):
        if not isinstance(self.model, str) or not self.model:
            raise LLMConfigError(f"model must be a non-empty string, got {self.model!r}")
        if not isinstance(self.base_url, str) or not self.base_url.startswith(("http://", "https://")):
            raise LLMConfigError(f"base_url must start with http:// or https://, got {self.base_url!r}")
        if not isinstance(self.api_key_env, str) or not _ENV_NAME_RE.match(self.api_key_env):
            # Never echo the value: a common slip is to paste the key itself here.
            raise LLMConfigError("api_key_env must be the NAME of an environment variable "
                                 "(letters, digits, underscores), not the key itself")
        if self.offline and self.cache_dir is None:
            raise LLMConfigError("offline=True needs a cache_dir to answer from")
        if self.cache_dir is not None:
            if not isinstance(self.cache_dir, (str, os.PathLike)):
                raise LLMConfigError(f"cache_dir must be a folder path or None, got "
                                     f"{self.cache_dir!r}")
            if os.path.exists(self.cache_dir) and not os.path.isdir(self.cache_dir):
                raise LLMConfigError(f"cache_dir={str(self.cache_dir)!r} is a file, not a "
                                     f"folder; point it at a folder for the answer cache")
        for name in ("timeout_s", "backoff_initial_s", "backoff_multiplier", "backoff_max_s",
                     "backoff_jitter"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
                raise LLMConfigError(f"{name} must be a number, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise LLMConfigError(f"seed must be an integer, got {self.seed!r}")
        for name in ("offline", "progress"):
            if not isinstance(getattr(self, name), bool):
                raise LLMConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")
        for name in ("max_concurrency", "max_attempts"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise LLMConfigError(f"{name} must be an integer >= 1, got {value!r}")
        if not self.timeout_s > 0:
            raise LLMConfigError(f"timeout_s must be > 0, got {self.timeout_s!r}")
        if self.backoff_initial_s < 0 or self.backoff_max_s < 0:
            raise LLMConfigError("backoff_initial_s and backoff_max_s must be >= 0, got "
                                 f"{self.backoff_initial_s!r} and {self.backoff_max_s!r}")
        if self.backoff_multiplier < 1:
            raise LLMConfigError(f"backoff_multiplier must be >= 1, got {self.backoff_multiplier!r}")
        if not 0 <= self.backoff_jitter <= 1:
            raise LLMConfigError(f"backoff_jitter must be in [0, 1], got {self.backoff_jitter!r}")


def read_api_key(config: LLMConfig) -> str:
    """The key from ``config.api_key_env``; an unset or empty variable is an error naming it."""
    key = os.environ.get(config.api_key_env, "")
    if not key:
        raise LLMConfigError(
            f"environment variable {config.api_key_env} is not set (or empty); it must hold the "
            f"API key for {config.base_url}. Set it, point api_key_env at another variable, or "
            "use offline=True to answer from the cache only")
    return key
