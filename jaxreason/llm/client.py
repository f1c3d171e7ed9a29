"""The client studies use to ask a chat or completion model: cached, retried, batched.

Studies label neurons with temperature-0 chat calls and generate data (chain-of-thought
candidates, choice arguments) with completion calls, often thousands at a time. This client
talks to any OpenAI-compatible endpoint through the ``openai`` package, answers repeated
requests from the on-disk cache (see :mod:`jaxreason.llm.cache`), retries transient failures
with backoff (see :mod:`jaxreason.llm.retry`), runs batches on a bounded thread pool with
results in input order, and keeps a tally of tokens, requests and cache hits. In offline mode
it never opens a connection: every request must already be in the cache.

The API key is read from the environment variable the config names and handed to the
``openai`` client only; it is not stored on this object, shown in its repr, logged, cached or
put into error messages.
"""

from __future__ import annotations

import concurrent.futures as cf
import inspect
import json
import time
from typing import Any, Callable, Sequence

import openai
from tqdm.auto import tqdm

from jaxreason.llm.cache import ResponseCache, canonical_request, request_key
from jaxreason.llm.config import LLMConfig, read_api_key
from jaxreason.llm.errors import LLMResponseError, OfflineCacheMiss
from jaxreason.llm.records import LLMResponse, Request, Usage, UsageTally
from jaxreason.llm.retry import Backoff, call_with_retries


def _parse_response(resp: Any, request: Request, what: str) -> tuple[tuple[str, ...], tuple, Usage]:
    """Texts, finish reasons and usage from an ``openai`` response object."""
    choices = getattr(resp, "choices", None)
    if not choices:
        raise LLMResponseError(f"the answer to {what} has no 'choices' (got {type(resp).__name__} "
                               f"{str(resp)[:200]}); the endpoint is not OpenAI-compatible")
    texts, reasons = [], []
    for i, choice in enumerate(sorted(choices, key=lambda c: getattr(c, "index", 0) or 0)):
        if request.kind == "chat":
            message = getattr(choice, "message", None)
            text = getattr(message, "content", None)
        else:
            text = getattr(choice, "text", None)
        if not isinstance(text, str):
            raise LLMResponseError(f"choice {i} of the answer to {what} has no text (finish_reason "
                                   f"{getattr(choice, 'finish_reason', None)!r})")
        texts.append(text)
        reasons.append(getattr(choice, "finish_reason", None))
    u = getattr(resp, "usage", None)
    usage = Usage(int(getattr(u, "prompt_tokens", 0) or 0), int(getattr(u, "completion_tokens", 0) or 0),
                  int(getattr(u, "total_tokens", 0) or 0))
    return tuple(texts), tuple(reasons), usage


def _split_known(create: Callable, body: dict) -> dict:
    """Keyword arguments for ``create``: the fields its signature names go as themselves, the
    rest (settings a local server adds, e.g. ``top_k``) go in ``extra_body``, unchanged."""
    known = set(inspect.signature(create).parameters) - {"extra_body", "extra_headers",
                                                         "extra_query", "timeout"}
    kwargs = {k: v for k, v in body.items() if k in known}
    extra = {k: v for k, v in body.items() if k not in known}
    if extra:
        kwargs["extra_body"] = extra
    return kwargs


class LLMClient:
    """Chat and completion calls against ``config.base_url`` / ``config.model``.

    ``sleep`` is the function used to wait between retries (tests pass a fake one).
    """

    def __init__(self, config: LLMConfig, *, sleep: Callable[[float], None] = time.sleep):
        self.config = config
        self.cache = ResponseCache(config.cache_dir) if config.cache_dir is not None else None
        self.tally = UsageTally()
        self._backoff = Backoff(config, sleep)
        self._openai: openai.OpenAI | None = None
        if not config.offline:
            self._openai = openai.OpenAI(base_url=config.base_url, api_key=read_api_key(config),
                                         timeout=config.timeout_s, max_retries=0)

    def __repr__(self) -> str:
        c = self.config
        return (f"LLMClient(model={c.model!r}, base_url={c.base_url!r}, offline={c.offline}, "
                f"cache_dir={c.cache_dir!r}, key from ${c.api_key_env})")

    def __enter__(self) -> "LLMClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._openai is not None:
            self._openai.close()

    # ------------------------------------------------------------------ single requests

    def chat(self, messages, **sampling) -> LLMResponse:
        """One chat call; ``messages`` is a list of role/content dicts or a user string.
        Every keyword (temperature, top_p, max_tokens, stop, seed, n, ...) is sent as is."""
        return self.run(Request.chat(messages, **sampling))

    def complete(self, prompt: str, **sampling) -> LLMResponse:
        """One legacy completion call on ``prompt``; keywords as for :meth:`chat`."""
        return self.run(Request.completion(prompt, **sampling))

    def key(self, request: Request) -> str:
        """The cache key of ``request`` at this client's endpoint and model."""
        return request_key(self.config.base_url, self.config.model, request)

    def _what(self, request: Request) -> str:
        return f"{request.kind} request to model {self.config.model!r} with prompt {request.describe()}"

    def _miss(self, request: Request, key: str, also: int = 0) -> OfflineCacheMiss:
        more = f" ({also} more requests of this batch are missing too)" if also else ""
        return OfflineCacheMiss(
            f"offline mode: no cached answer for the {self._what(request)} (key {key[:16]}... in "
            f"{self.config.cache_dir}){more}; run once with offline=False to fill the cache")

    def run(self, request: Request) -> LLMResponse:
        """The answer to ``request``: from the cache if there, else from the endpoint."""
        key = self.key(request)
        if self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None:
                self.tally.add_cache_hit()
                return hit
        if self.config.offline:
            raise self._miss(request, key)
        what = self._what(request)
        body = request.body()
        if request.kind == "chat":
            create = self._openai.chat.completions.create
        else:
            create = self._openai.completions.create

        kwargs = _split_known(create, body)

        def send():
            try:
                return create(model=self.config.model, **kwargs)
            except json.JSONDecodeError as e:
                raise LLMResponseError(f"the answer to {what} is not valid JSON ({e})") from None

        resp = call_with_retries(send, config=self.config, backoff=self._backoff, what=what,
                                 on_retry=self.tally.add_retry)
        texts, reasons, usage = _parse_response(resp, request, what)
        self.tally.add_response(usage)
        response = LLMResponse(texts, reasons, usage, cached=False, key=key)
        if self.cache is not None:
            self.cache.put(key, canonical_request(self.config.base_url, self.config.model, request),
                           response)
        return response

    # ------------------------------------------------------------------ batches

    def batch(self, requests: Sequence[Request], *, progress: bool | None = None,
              desc: str = "LLM requests") -> list[LLMResponse]:
        """Answers to ``requests`` in input order, at most ``max_concurrency`` in flight.

        Identical requests are sent once. In offline mode every miss is found before anything
        runs and the error names the first one. If a request fails, requests not yet started
        are cancelled and the error is raised; the answers already received are cached, so a
        rerun resumes where this one stopped.
        """
        requests = list(requests)
        keys = [self.key(r) for r in requests]
        first: dict[str, int] = {}
        for i, k in enumerate(keys):
            first.setdefault(k, i)
        if self.config.offline:
            missing = [i for k, i in first.items() if self.cache.get(k) is None]
            if missing:
                raise self._miss(requests[missing[0]], keys[missing[0]], also=len(missing) - 1)
        show = self.config.progress if progress is None else progress
        answers: dict[str, LLMResponse] = {}
        if first:
            workers = min(self.config.max_concurrency, len(first))
            pool = cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="llm")
            try:
                futures = {pool.submit(self.run, requests[i]): k for k, i in first.items()}
                with tqdm(total=len(futures), desc=desc, disable=not show, unit="req") as bar:
                    for fut in cf.as_completed(futures):
                        answers[futures[fut]] = fut.result()
                        bar.update(1)
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
        return [answers[k] for k in keys]

    def chat_batch(self, conversations: Sequence, **sampling) -> list[LLMResponse]:
        """:meth:`batch` of chat calls sharing the same sampling settings."""
        return self.batch([Request.chat(m, **sampling) for m in conversations])

    def complete_batch(self, prompts: Sequence[str], **sampling) -> list[LLMResponse]:
        """:meth:`batch` of completion calls sharing the same sampling settings."""
        return self.batch([Request.completion(p, **sampling) for p in prompts])

    def usage(self) -> dict[str, int]:
        """Tokens spent (prompt/completion/total), requests sent, cache hits and retries."""
        return self.tally.as_dict()
