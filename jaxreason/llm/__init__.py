"""Asking hosted or local language models: labelling neurons, generating study data.

``LLMClient(LLMConfig(model=..., base_url=..., cache_dir=...))`` sends chat or legacy
completion calls to any OpenAI-compatible endpoint, caches every answer on disk keyed by the
whole request (so reruns cost nothing and reproduce), retries rate limits, server errors and
timeouts with backoff, runs batches concurrently in input order, and tallies tokens. The API
key is read from the environment variable the config names and never printed or saved.
"""

from jaxreason.llm.cache import ResponseCache, canonical_request, request_key
from jaxreason.llm.client import LLMClient
from jaxreason.llm.config import LLMConfig, read_api_key
from jaxreason.llm.errors import (LLMConfigError, LLMError, LLMRequestError, LLMResponseError,
                                  LLMRetriesExhausted, OfflineCacheMiss)
from jaxreason.llm.records import LLMResponse, Request, Usage, UsageTally

__all__ = [
    "LLMClient", "LLMConfig", "LLMResponse", "Request", "Usage", "UsageTally", "ResponseCache",
    "canonical_request", "request_key", "read_api_key", "LLMError", "LLMConfigError",
    "LLMRequestError", "LLMResponseError", "LLMRetriesExhausted", "OfflineCacheMiss",
]
