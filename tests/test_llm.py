"""The LLM client against a scripted local OpenAI-compatible server, via the real openai client."""

from __future__ import annotations

import dataclasses
import logging
import threading
import traceback

import pytest

from jaxreason.config_io import from_dict
from jaxreason.llm import (LLMClient, LLMConfig, LLMConfigError, LLMRequestError, LLMResponseError,
                           LLMRetriesExhausted, OfflineCacheMiss, Request, request_key)
from llm_server import Action, ScriptedServer, echo_text, ok_body

KEY = "sk-test-VERY-SECRET-0123456789"
ENV = "JAXREASON_TEST_LLM_KEY"


@pytest.fixture(autouse=True)
def _key(monkeypatch):
    monkeypatch.setenv(ENV, KEY)


def make(server, tmp_path=None, **kw) -> LLMClient:
    cfg = dict(model="tiny-model", base_url=server.base_url, api_key_env=ENV, max_attempts=3,
               timeout_s=5.0, backoff_initial_s=0.001, backoff_max_s=0.01, backoff_jitter=0.5,
               progress=False, cache_dir=str(tmp_path / "cache") if tmp_path else None)
    cfg.update(kw)
    return LLMClient(LLMConfig(**cfg))


def failing_first(n_fail: int, action: Action):
    """A policy that answers ``action`` to the first ``n_fail`` requests, then echoes."""
    def policy(i, path, body):
        return action if i < n_fail else Action(body=ok_body(body, path))
    return policy


def test_chat_and_completion_answers_and_settings_pass_through(tmp_path):
    with ScriptedServer() as s, make(s) as c:
        r = c.chat([{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
                   temperature=0, top_p=1, max_tokens=7, stop=["\n"], seed=3)
        assert r.text == "echo:hi" and r.finish_reasons == ("stop",) and not r.cached
        path, body = s.requests[0]
        assert path == "/v1/chat/completions" and body["model"] == "tiny-model"
        assert (body["temperature"], body["top_p"], body["max_tokens"], body["stop"], body["seed"]) \
            == (0, 1, 7, ["\n"], 3)
        r = c.complete("2+2=", n=2, best_of=2, temperature=0.7, max_tokens=4)
        assert r.texts == ("echo:2+2=#0", "echo:2+2=#1") and r.finish_reasons == ("length",) * 2
        path, body = s.requests[1]
        assert path == "/v1/completions" and body["prompt"] == "2+2=" and body["best_of"] == 2
        assert s.auth_headers == [f"Bearer {KEY}"] * 2   # the key does reach the endpoint


def test_none_settings_are_dropped_and_reserved_ones_refused():
    assert Request.chat("x", stop=None).body() == Request.chat("x").body()
    with pytest.raises(LLMConfigError, match="stream"):
        Request.chat("x", stream=True)
    with pytest.raises(LLMConfigError, match="not JSON"):
        Request.completion("x", stop={1, 2})


@pytest.mark.parametrize("action, match", [
    (Action(raw=b"{this is not json"), "not valid JSON"),
    (Action(body={"id": "x", "object": "chat.completion"}), "no 'choices'"),
])
def test_malformed_answer_is_a_clear_error(action, match):
    with ScriptedServer(lambda i, p, b: action) as s, make(s) as c:
        with pytest.raises(LLMResponseError, match=match) as e:
            c.chat("hello there")
        assert "tiny-model" in str(e.value) and "hello there" in str(e.value)
        assert s.count == 1   # not retried


@pytest.mark.parametrize("status", [429, 500, 503])
def test_transient_status_is_retried_then_succeeds(status, tmp_path):
    action = Action(status=status, body={"error": {"message": "busy"}})
    with ScriptedServer(failing_first(2, action)) as s, make(s, tmp_path) as c:
        assert c.chat("q").text == "echo:q"
        assert s.count == 3 and c.usage()["retries"] == 2 and c.usage()["requests"] == 1


def test_retries_are_bounded_and_the_error_says_why():
    action = Action(status=429, body={"error": {"message": "rate limited"}})
    with ScriptedServer(lambda i, p, b: action) as s, make(s, max_attempts=4) as c:
        with pytest.raises(LLMRetriesExhausted, match=r"failed 4 times.*HTTP 429") as e:
            c.chat("q")
        assert e.value.attempts == 4 and s.count == 4


def test_bad_request_fails_at_once_naming_status_and_model():
    action = Action(status=400, body={"error": {"message": "unknown parameter foo"}})
    with ScriptedServer(lambda i, p, b: action) as s, make(s) as c:
        with pytest.raises(LLMRequestError, match=r"tiny-model.*HTTP 400.*unknown parameter") as e:
            c.chat("q", foo=1, top_k=3)
        assert e.value.status == 400 and s.count == 1
        assert (s.requests[0][1]["foo"], s.requests[0][1]["top_k"]) == (1, 3)  # extra settings sent


def test_timeout_is_retried_then_succeeds_or_fails_clearly():
    slow = Action(delay_s=0.6)
    with ScriptedServer(failing_first(1, slow)) as s, make(s, timeout_s=0.2) as c:
        assert c.chat("q").text == "echo:q"
        assert s.count == 2 and c.usage()["retries"] == 1
    def always_slow(i, path, body):
        return Action(body=ok_body(body, path), delay_s=0.6)
    with ScriptedServer(always_slow) as s, make(s, timeout_s=0.2, max_attempts=2) as c:
        with pytest.raises(LLMRetriesExhausted, match="timed out"):
            c.chat("q")


def test_batch_keeps_input_order_and_bounds_concurrency():
    # later requests answer faster, so completion order is the reverse of input order
    def policy(i, path, body):
        k = int(body["messages"][-1]["content"].split()[-1])
        return Action(body=ok_body(body, path), delay_s=0.02 * (8 - k))
    with ScriptedServer(policy) as s, make(s, max_concurrency=3) as c:
        out = c.chat_batch([f"item {k}" for k in range(8)] + ["item 2"], temperature=0)
        assert [r.text for r in out] == [f"echo:item {k}" for k in range(8)] + ["echo:item 2"]
        assert s.count == 8                       # the duplicate was sent once
        assert 2 <= s.max_in_flight <= 3


def test_cache_makes_reruns_free_and_identical(tmp_path):
    prompts = ["a", "b", "c"]
    with ScriptedServer() as s:
        with make(s, tmp_path) as c:
            first = c.complete_batch(prompts, temperature=0)
            assert s.count == 3 and c.usage()["cache_hits"] == 0
        with make(s, tmp_path) as c:             # a fresh client: a rerun of the study
            again = c.complete_batch(prompts, temperature=0)
            assert s.count == 3 and c.usage()["cache_hits"] == 3 and c.usage()["requests"] == 0
            assert [r.texts for r in again] == [r.texts for r in first]
            assert all(r.cached for r in again) and again[0].usage == first[0].usage
            c.complete("a", temperature=0.5)      # another setting is another request
            c.chat("a", temperature=0)            # another call kind too
            assert s.count == 5
        # another model or endpoint never shares entries
        r = Request.completion("a", temperature=0)
        assert len({request_key(s.base_url, "m1", r), request_key(s.base_url, "m2", r),
                    request_key("http://other/v1", "m1", r)}) == 3
        assert request_key(s.base_url, "m1", r) == request_key(s.base_url + "/", "m1", r)
    files = list((tmp_path / "cache").rglob("*.json"))
    assert len(files) == 5 and not list((tmp_path / "cache").rglob(".tmp*"))


def test_offline_mode_hits_and_misses_without_network(tmp_path):
    with ScriptedServer() as s:
        with make(s, tmp_path) as c:
            c.chat("known question", temperature=0)
        seen = s.count
        off = make(s, tmp_path, offline=True, api_key_env="JAXREASON_UNSET_VAR")  # no key needed
        assert off.chat("known question", temperature=0).text == "echo:known question"
        with pytest.raises(OfflineCacheMiss, match=r"tiny-model.*'unknown question about"):
            off.chat("unknown question about cats", temperature=0)
        with pytest.raises(OfflineCacheMiss, match=r"'new 1'.*1 more"):
            off.chat_batch(["known question", "new 1", "new 2"], temperature=0)
        assert s.count == seen


def test_token_tally_sums_fresh_answers_only(tmp_path):
    with ScriptedServer() as s, make(s, tmp_path) as c:
        out = c.complete_batch(["xy", "abcd"], max_tokens=5)
        c.complete("xy", max_tokens=5)           # cache hit: no tokens spent
        expected = [ok_body({"prompt": p, "max_tokens": 5}, "/v1/completions")["usage"]
                    for p in ("xy", "abcd")]
        u = c.usage()
        for name in ("prompt_tokens", "completion_tokens", "total_tokens"):
            assert u[name] == sum(e[name] for e in expected) > 0
        assert (u["requests"], u["cache_hits"]) == (2, 1)
        assert out[1].usage.completion_tokens == len(echo_text({"prompt": "abcd"}))


def test_missing_key_variable_is_named_and_key_never_leaks(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("JAXREASON_UNSET_VAR", raising=False)
    with ScriptedServer() as s:
        with pytest.raises(LLMConfigError, match="JAXREASON_UNSET_VAR is not set"):
            make(s, tmp_path, api_key_env="JAXREASON_UNSET_VAR")
        with pytest.raises(LLMConfigError) as e:
            make(s, api_key_env=KEY)              # the key pasted where its variable name goes
        assert KEY not in str(e.value)
        caplog.set_level(logging.DEBUG)
        with make(s, tmp_path) as c:
            c.chat("hello", temperature=0)
            texts = [repr(c), repr(c.config), str(dataclasses.asdict(c.config))]
        fail = Action(status=401, body={"error": {"message": "bad key"}})
        with ScriptedServer(lambda i, p, b: fail) as s2, make(s2) as c2:
            with pytest.raises(LLMRequestError) as e:
                c2.chat("hello")
            texts += [str(e.value), repr(e.value), "".join(traceback.format_exception(e.value))]
    texts += [r.getMessage() + repr(r.args) for r in caplog.records]
    texts += [p.read_text() for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert caplog.records, "expected the openai/httpx debug logs to be captured"
    assert not [t for t in texts if KEY in t]


def test_config_embeds_in_yaml_configs_and_checks_values():
    cfg = from_dict(LLMConfig, {"model": "gpt-4o", "max_concurrency": 8, "offline": False})
    assert cfg.max_concurrency == 8 and cfg.api_key_env == "OPENAI_API_KEY"
    for bad in ({"max_concurrency": 0}, {"backoff_jitter": 2.0}, {"offline": True},
                {"base_url": "localhost:8000"}, {"model": ""}):
        with pytest.raises(LLMConfigError):
            LLMConfig(**{"model": "m", **bad})


def test_backoff_is_exponential_capped_and_seeded():
    from jaxreason.llm.retry import Backoff
    plain = Backoff(LLMConfig(model="m", backoff_initial_s=1, backoff_multiplier=2,
                              backoff_max_s=5, backoff_jitter=0))
    assert [plain.delay(k) for k in range(1, 6)] == [1, 2, 4, 5, 5]
    cfg = LLMConfig(model="m", backoff_initial_s=1, backoff_jitter=0.5, seed=7)
    a, b = Backoff(cfg), Backoff(cfg)
    da, db = [a.delay(3) for _ in range(5)], [b.delay(3) for _ in range(5)]
    assert da == db and all(2 <= d <= 4 for d in da) and len(set(da)) > 1


def test_concurrent_threads_share_one_client(tmp_path):
    with ScriptedServer() as s, make(s, tmp_path) as c:
        threads = [threading.Thread(target=c.chat, args=(f"t{i}",)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert s.count == 4 and c.usage()["requests"] == 4
