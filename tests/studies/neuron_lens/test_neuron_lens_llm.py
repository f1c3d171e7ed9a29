"""The LLM labeller of the neuron lens against a scripted OpenAI-compatible server on
127.0.0.1, through the real openai client: the original's messages, both acceptance rules,
a malformed answer, a failed request, and a cached rerun that sends nothing."""

from __future__ import annotations

import pytest

from jaxreason.llm import LLMClient, LLMConfig, LLMError
from jaxreason.studies.neuron_lens import concepts
from jaxreason.studies.neuron_lens.neurons import Neuron
from llm_server import Action, ScriptedServer, ok_body

ENV = "JAXREASON_TEST_NEURON_KEY"
ANSWERS = {"L7N1": "Yes, it promotes addition.", "L7N2": "No, though yes appears later",
           "L8N3": "Yes.", "L8N4": "Maybe, hard to say", "L9N5": "eyes everywhere"}


@pytest.fixture(autouse=True)
def _key(monkeypatch):
    monkeypatch.setenv(ENV, "sk-test-neuron")


def _answer(i, path, body):
    user = body["messages"][-1]["content"]
    name = next(n for n in ANSWERS if f"tok{n}" in user)
    return Action(body=ok_body(body, path, [ANSWERS[name]]))


def _neurons():
    out = []
    for name in ANSWERS:
        layer, index = map(int, name[1:].split("N"))
        out.append(Neuron(layer, index, 1.0, tokens=[f" tok{name}", " +", "plus "]))
    return out


def _client(server, tmp_path, **kw):
    cfg = dict(model="judge", base_url=server.base_url, api_key_env=ENV, progress=False,
               cache_dir=str(tmp_path / "cache"), max_attempts=2, backoff_initial_s=0.001,
               backoff_max_s=0.001, timeout_s=5.0)
    cfg.update(kw)
    return LLMClient(LLMConfig(**cfg))


def test_messages_acceptance_rules_and_cached_rerun(tmp_path):
    found = {"add": _neurons()}
    with ScriptedServer(_answer) as s:
        with _client(s, tmp_path) as c:
            faithful, records = concepts.label_with_llm(c, found, "faithful")
        path, body = next(r for r in s.requests if "tokL7N1" in r[1]["messages"][-1]["content"])
        assert path == "/v1/chat/completions" and body["temperature"] == 0
        assert body["max_tokens"] == 50 and body["top_p"] == 1
        assert body["messages"][0] == {"role": "system", "content": "You are a helpful assistant."}
        user = body["messages"][1]["content"]
        assert user.startswith("A neuron in language model promotes the following set of "
                               "words: tokL7N1 ,+ ,plus. Is this neuron promoting arithmetic "
                               "addition ? First, answer in Yes or No format")
        # faithful: 'yes' before the first comma; "eyes" passes, "No, ... yes" does not
        assert [n.name for n in faithful["add"]] == ["L7N1", "L8N3", "L9N5"]
        with _client(s, tmp_path) as c:  # fixed, same requests: answered from the cache
            fixed, records = concepts.label_with_llm(c, found, "fixed")
            assert c.usage()["cache_hits"] == 5
        assert s.count == 5
    assert [n.name for n in fixed["add"]] == ["L7N1", "L8N3"]
    unparsed = [r["name"] for r in records if not r["parsed"]]
    assert unparsed == ["L8N4", "L9N5"]  # neither a yes nor a no


def test_failed_requests_count_as_no_response_only_in_faithful_mode(tmp_path):
    def broken(i, path, body):
        return Action(raw=b"{not json")
    found = {"add": _neurons()[:2]}
    with ScriptedServer(broken) as s, _client(s, tmp_path) as c:
        accepted, records = concepts.label_with_llm(c, found, "faithful")
        assert accepted == {"add": []}
        assert {r["response"] for r in records} == {concepts.NO_RESPONSE}
        with pytest.raises(LLMError, match="not valid JSON"):
            concepts.label_with_llm(c, found, "fixed")


def test_strict_parse():
    assert concepts.accepts("**Yes** - it does", "fixed") is True
    assert concepts.accepts(" no.", "fixed") is False
    assert concepts.accepts("I think yes", "fixed") is None
    assert concepts.accepts("I think yes", "faithful") is True
