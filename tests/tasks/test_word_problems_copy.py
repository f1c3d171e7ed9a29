"""The copy-attention diagnostic: where each looked-up number sits, and the teacher-forced
accuracy and attention it reports, checked against a forward pass by hand."""

import json
import re

import jax.numpy as jnp
import numpy as np
import pytest

from jaxreason.models import load_pretrained, load_tokenizer
from jaxreason.tasks import word_problem_lexicon as lex
from jaxreason.tasks.word_problem_variants import few_shot_prompt
from jaxreason.tasks.word_problems import make_splits
from jaxreason.tasks.word_problems_copy import cli, copy_attention, copy_sites


@pytest.fixture(scope="module")
def test_split():
    return make_splits()["test"]


def test_sites_point_at_the_number_in_the_step_and_in_its_sentence(test_split):
    counted = 0
    for p in test_split:
        sites = copy_sites(p)
        wanted = [s for k, s in enumerate(p.steps)
                  if k and s.op in "+-" and s.right_ref is None]
        assert len(sites) == len(wanted)
        for (in_solution, in_question), step in zip(sites, wanted):
            digits = str(step.right)
            assert p.solution[in_solution:in_solution + len(digits)] == digits
            assert p.question[in_question:in_question + len(digits)] == digits
            assert not p.question[in_question + len(digits)].isdigit()
            sentence = re.split(r"(?<=\.) ", p.question[:in_question])[-1]
            opener = next(c for c in lex.CONNECTIVES if step.before.startswith(c + " "))
            assert sentence.startswith(opener + " ")
            counted += 1
    assert counted > 100
    # a first step and a step whose right operand is an earlier result are no sites
    one_step = next(p for p in test_split if p.n_steps == 1)
    assert copy_sites(one_step) == []


def test_accuracy_and_attention_match_a_forward_by_hand(tiny_world_model, test_split):
    model, params = load_pretrained(tiny_world_model)
    tok = load_tokenizer(tiny_world_model)
    problems = [p for p in test_split if copy_sites(p)][:3]
    result = copy_attention(model, params, tok, problems, batch_size=2)  # a short last batch
    L, H = model.config.num_layers, model.config.num_heads
    assert result["sites"] == sum(len(copy_sites(p)) for p in problems)
    attention = np.asarray(result["attention"])
    assert attention.shape == (L, H)
    # by hand: each problem alone, unpadded, every site's positions found from the text
    demos = few_shot_prompt("cot_prompt", 4)
    right, weight = 0, np.zeros((L, H))
    for p in problems:
        head = demos + p.prompt
        ids = tok(head + p.solution)["input_ids"]
        out = model.jit_apply(params, jnp.asarray([ids]), jnp.ones((1, len(ids)), jnp.int32),
                              capture={f"blocks.{i}.attn.hook_pattern" for i in range(L)})
        for in_solution, in_question in copy_sites(p):
            query = len(tok(head + p.solution[:in_solution])["input_ids"]) - 1
            key = len(tok(demos + "Question: " + p.question[:in_question])["input_ids"])
            assert tok.decode([ids[query + 1]]) == p.solution[in_solution]
            assert tok.decode([ids[key]]) == p.question[in_question]
            right += int(np.argmax(out.logits[0, query]) == ids[query + 1])
            weight += np.stack([np.asarray(out.captured[f"blocks.{i}.attn.hook_pattern"])
                                [0, :, query, key] for i in range(L)])
    n = result["sites"]
    assert result["copy_accuracy"] == right / n
    np.testing.assert_allclose(attention, weight / n, atol=1e-5)


def test_problems_without_a_looked_up_number_are_refused(tiny_world_model, test_split):
    model, params = load_pretrained(tiny_world_model)
    one_step = [p for p in test_split if p.n_steps == 1][:3]
    with pytest.raises(ValueError, match="pass 2-step problems or longer"):
        copy_attention(model, params, load_tokenizer(tiny_world_model), one_step)


def test_cli(tiny_world_model, capsys):
    assert cli(["--model", str(tiny_world_model), "--problems", "3", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(result) == {"sites", "copy_accuracy", "attention"} and result["sites"] >= 3
    assert cli(["--model", str(tiny_world_model), "--problems", "3"]) == 0
    printed = capsys.readouterr().out
    assert "| layer | head 0 | head 1 |" in printed and "teacher-forced copy" in printed
    with pytest.raises(SystemExit):
        cli(["--model", str(tiny_world_model), "--split", "nope"])
    assert "--split 'nope': allowed" in capsys.readouterr().err
