"""CoT-choice data generation against a scripted OpenAI-compatible server on 127.0.0.1: the
three prompts, the parsing and filtering rules, retries, the seeded swap and the CSV."""

from __future__ import annotations

import re

import pytest

from jaxreason.llm import LLMClient, LLMConfig
from jaxreason.tasks import cot_choice as cc
from jaxreason.tasks import cot_choice_generate as gen
from jaxreason.tasks.readers import read_cot_choice_csv
from llm_server import Action, ScriptedServer, ok_body

ENV = "JAXREASON_TEST_COT_KEY"

# question -> (argument-first completion, answer-first completion)
ANSWERS = {
    "Q1": ('5 - 2 = 3 pens.",\n"answer": "3"\n}', '7",\n"argument": "5 + 2 = 7 pens."\n}'),
    "Q2": ('4 * 2 = 8.",\n"answer": 8\n}', '9",\n"argument": "4 * 2 = 9."\n}'),  # 4 pieces
    "Q3": ('wrong 6.",\n"answer": "6"\n}', '1",\n"argument": "x"\n}'),  # correct misses gold
    "Q4": ('10 / 2 = 5.",\n"answer": "5"\n}', '5",\n"argument": "same"\n}'),  # incorrect == gold
    "Q5": ('-5.",\n"answer": "-5"\n}', '5",\n"argument": "sign lost"\n}'),  # only the sign differs
}
GOLD = {"Q1": 3, "Q2": 8, "Q3": 5, "Q4": 5, "Q5": -5}


def policy(i, path, body):
    prompt = body["prompt"]
    if i == 0:  # the first request is rate limited, then retried
        return Action(status=429, body={"error": {"message": "slow down"}})
    question = re.search(r'"question": "([^"]+)"', prompt).group(1)
    if gen.CHOOSE in prompt:
        text = ('Candidate 1 is right.",\n"answer_choice": "candidate_1"\n}' if question != "Q2"
                else 'Neither.",\n"answer_choice": "both"\n}')
    elif prompt.endswith('"argument": "'):
        text = ANSWERS[question][0]
    else:
        text = ANSWERS[question][1]
    return Action(body=ok_body(body, path, [text]))


@pytest.fixture()
def client_for(monkeypatch, tmp_path):
    monkeypatch.setenv(ENV, "sk-test")

    def make(server):
        return LLMClient(LLMConfig(model="m", base_url=server.base_url, api_key_env=ENV,
                                   max_attempts=3, backoff_initial_s=0.001, backoff_max_s=0.01,
                                   progress=False, max_concurrency=1,
                                   cache_dir=str(tmp_path / "cache")))
    return make


def test_prompts_and_parsers():
    p = gen.argument_first_prompt('Sam "has" 5')
    assert p.startswith("Below is an instruction") and p.endswith('{\n"argument": "')
    assert '{"question": "Sam \\"has\\" 5"}' in p
    assert gen.answer_first_prompt("q").endswith('{\n"answer": "')
    c = gen.choose_prompt("q", "A Final answer: 1.0", "B Final answer: 2.0")
    assert '"candidate_1": A Final answer: 1.0, "candidate_2": B' in c
    assert gen.to_float("$1,234.5") == 1234.5 and gen.to_float("3/4") == 0.75
    assert gen.to_float("-5") == 5.0 and gen.to_float("-5", keep_sign=True) == -5.0
    assert gen.to_float("none") is None
    assert gen.parse_correct('a.",\n"answer": "3"\n}', 3.0) == ("a.", 3.0)
    assert gen.parse_correct('a.",\n"answer": 3\n}', "3") == ("a.", 3.0)
    assert gen.parse_correct('a "b" c', 3) is None
    assert gen.parse_incorrect('4",\n"argument": "x"\n}', 3) == ("x", 4.0)
    assert gen.parse_choice('y",\n"answer_choice": "candidate_2"\n}') == ("y", "candidate_2")


@pytest.mark.parametrize("mode", ["fixed", "faithful"])
def test_generation_filters_retries_and_writes_the_csv(mode, client_for, tmp_path):
    problems = [(q, GOLD[q]) for q in ANSWERS]
    with ScriptedServer(policy) as server, client_for(server) as client:
        rows, tally = gen.generate_rows(problems, client, mode=mode, seed=7)
        assert client.usage()["retries"] == 1
    # Q3 (misses gold), Q4 (incorrect == gold) dropped; Q2's choice malformed; Q5 differs only
    # in its sign, which faithful mode loses
    kept = ["Q1"] if mode == "faithful" else ["Q1", "Q5"]
    assert [r.question for r in rows] == kept
    assert tally["bad_choice"] == 1 and tally["rows"] == len(kept)
    assert tally["bad_correct"] + tally["bad_incorrect"] == len(ANSWERS) - 1 - len(kept)
    r = rows[0]
    assert (r.correct_argument, r.correct_answer) == ("5 - 2 = 3 pens.", 3.0)
    assert (r.incorrect_argument, r.incorrect_answer) == ("5 + 2 = 7 pens.", 7.0)
    assert r.choice_answer == "candidate_1" and r.choice_argument == "Candidate 1 is right."
    if mode == "fixed":  # the seeded swap reproduces
        with ScriptedServer(policy) as server, client_for(server) as client:
            again, _ = gen.generate_rows(problems, client, mode=mode, seed=7)
        assert [x.swapped for x in again] == [x.swapped for x in rows]
    path = cc.write_cot_choice_csv(rows, tmp_path / f"{mode}.csv")
    assert read_cot_choice_csv(path) == [r for r in rows]
