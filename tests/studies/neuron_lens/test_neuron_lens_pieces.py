"""Pieces of the neuron-lens study against independent computations: the in-program top-k
against a plain forward's activations, the vocabulary projection against a matrix product,
the seed filter, the random controls and each ablation way against its definition."""

from __future__ import annotations

import dataclasses
import json
import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxreason.models import load_pretrained, load_tokenizer
from jaxreason.models import weights as W
from jaxreason.models.generate import generate
from jaxreason.studies.neuron_lens import ablation, concepts, neurons
from jaxreason.studies.neuron_lens.config import NeuronLensConfig
from jaxreason.studies.neuron_lens.data import (load_data, sample_correct,
                                                world_problem_records, world_prompt_text)
from jaxreason.studies.neuron_lens.decoding import PromptSet, dominant_run


@pytest.fixture(scope="module")
def world(tiny_world_model):
    model, params = load_pretrained(tiny_world_model)
    return model, params, load_tokenizer(tiny_world_model)


def _config(**kw):
    base = dict(model_path="x", batch_size=2, max_new_tokens=8, neuron_steps=6, top_k=5,
                neuron_examples=2, progress=False, dtype="float32")
    base.update(kw)
    return NeuronLensConfig(**base)


@pytest.mark.parametrize("mode", ["faithful", "fixed"])
def test_topk_in_the_decoding_program_matches_a_plain_forward(world, tmp_path, mode):
    model, params, tok = world
    config = _config(mode=mode)
    prompts = PromptSet.build(tok, "cot_prompt", world_prompt_text("cot_prompt", 1), mode)
    problems = world_problem_records("test")[:3]
    dom = dominant_run(config, model, params, prompts, problems, [2, 0], tmp_path / mode)
    assert dom.indices.shape == (2, 1, 6, 5) and dom.problem_index.tolist() == [2, 0]
    norms = np.asarray(W.value_norms(model, params))
    for row, p in enumerate([problems[2], problems[0]]):
        ids = prompts.encode_full(p)
        # the run's own tokens, teacher forced through one forward without a KV cache
        full = np.concatenate([ids, dom.generated[row]])
        out = model.jit_apply(params, jnp.asarray(full[None]),
                              capture={"blocks.0.mlp.hook_post"})
        act = np.asarray(out.captured["blocks.0.mlp.hook_post"][0])  # (T, F)
        scores = np.abs(act) * norms[0]
        want = scores[len(ids) - 1:len(ids) - 1 + 6]  # last prompt token + 5 generated
        top = np.sort(want, axis=-1)[:, ::-1][:, :5]
        np.testing.assert_allclose(dom.scores[row, 0], top, rtol=1e-4,
                                   atol=1e-5 * float(want.max()))
        picked = np.take_along_axis(want, dom.indices[row, 0], axis=-1)
        np.testing.assert_allclose(picked, top, rtol=1e-4, atol=1e-5 * float(want.max()))
    assert dom.valid.shape == (2, 6) and dom.valid[:, 0].all()


def test_projection_matches_a_direct_matrix_product(world):
    model, params, tok = world
    ids, probs = neurons.top_promoted(model, params, 0, 7)
    v = np.asarray(W.value_vectors(model, params, 0), np.float64)  # (F, D)
    logits = v @ np.asarray(W.unembedding(model, params), np.float64)  # (F, V)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    want = np.argsort(-p, axis=-1, kind="stable")[:, :7]
    np.testing.assert_array_equal(ids, want)
    np.testing.assert_allclose(probs, np.take_along_axis(p, want, -1), rtol=1e-4, atol=1e-7)
    found = {0: {3: neurons.Neuron(0, 3, 1.0)}}
    neurons.project(model, params, tok, found, 7)
    assert found[0][3].token_ids == want[3].tolist()
    assert found[0][3].tokens == [tok.decode([t]) for t in want[3]]
    normed = neurons.project(model, params, tok, found, 7, final_norm=True)
    lens = np.asarray(W.logit_lens(model, params, W.final_norm(model, params, v[3:4]
                                                               .astype(np.float32))))
    assert normed["L0N3"]["token_ids"] == np.argsort(-lens[0], kind="stable")[:7].tolist()


def test_aggregate_keeps_the_first_seen_record_of_valid_positions():
    dom = type("D", (), {})()
    dom.indices = np.asarray([[[[4, 1], [1, 2], [9, 9]]]])  # (N=1, L=1, T=3, k=2)
    dom.scores = np.asarray([[[[5., 3.], [7., 6.], [99., 98.]]]])
    dom.valid = np.asarray([[True, True, False]])
    got = neurons.aggregate(dom)[0]
    assert list(got) == [4, 1, 2]  # position 2 is not valid: neuron 9 never counts
    assert (got[1].score, got[1].count, got[1].best) == (3.0, 2, 7.0)


def test_seed_filter_skips_layers_and_needs_two_hits():
    def n(layer, tokens):
        return neurons.Neuron(layer, 0, 1.0, tokens=tokens)
    seeds = concepts.ORIGINAL_SEEDS
    a = n(7, [" so", "Then", "cat"] + ["z"] * 17)  # 2 connection hits
    b = n(7, [" so", "cat"] + ["z"] * 18)  # 1 hit
    c = n(3, [" so", "Then"] + ["z"] * 18)  # skipped layer
    d = n(9, ["+", " plus ", " Sum", "="] + ["z"] * 16)  # add (3) and equals_to (1)
    found = concepts.candidates([a, b, c, d], seeds, skip=6)
    assert found["connections"] == [a] and found["add"] == [d] and found["equals_to"] == []
    assert concepts.skipped_layers(32) == 6 and concepts.skipped_layers(4) == 1
    with pytest.raises(ValueError, match="skip_layers=4"):
        concepts.skipped_layers(4, 4)
    world = concepts.world_seeds()
    assert set(concepts.ORIGINAL_SEEDS["add"]) < set(world["add"]) and "more" in world["add"]


def test_random_controls():
    assert ablation.original_random(32, 11008)[:3] == [(7, 61), (1, 191), (17, 447)]
    before = random.getstate()
    pairs = ablation.original_random(4, 64)
    assert random.getstate() == before and all(0 <= i < 64 and 0 <= l < 4 for l, i in pairs)
    targets = [(1, 5), (1, 6), (2, 7), (1, 5)]
    ctrl = ablation.same_count_random(targets, 64, seed=3)
    assert sorted(l for l, _ in ctrl) == [1, 1, 2]
    assert not set(ctrl) & set(targets) and len(set(ctrl)) == 3
    assert ablation.faithful_hooks([(3, 10), (3, 11), (5, 12)]) == [(3, 10), (5, 11)]
    # 10 only-first and 2 only-second of 12: 2 * P(X <= 2), X ~ Binomial(12, 1/2)
    test = ablation.paired_sign_test([1] * 10 + [0] * 3, [0] * 10 + [1] * 2 + [0])
    assert (test["only_first"], test["only_second"]) == (10, 2)
    assert test["p"] == pytest.approx(2 * (1 + 12 + 66) / 4096)
    assert sample_correct(list(range(10)), [i % 2 == 0 for i in range(10)], 3, 42) == \
        _shuffled([0, 2, 4, 6, 8])[:3]


def _shuffled(items):
    rng_state = random.getstate()
    random.seed(42)
    items = list(items)
    random.shuffle(items)
    random.setstate(rng_state)
    return items


def test_ablation_ways_against_their_definitions(world):
    model, params, _ = world
    D = model.config.hidden_size
    eps = ablation.noise(D)
    np.testing.assert_array_equal(eps, np.random.RandomState(1).normal(-1, 1, D)
                                  .astype(np.float32))
    pairs = [(0, 3), (0, 9)]
    old = np.asarray(W.value_vectors(model, params, 0)).copy()
    # clean: the noise once per neuron, on a new tree; the model's weights are untouched
    clean = ablation.clean_params(model, params, pairs + [(0, 3)], eps)
    new = np.asarray(W.value_vectors(model, clean, 0))
    np.testing.assert_allclose(new[[3, 9]] - old[[3, 9]], np.stack([eps, eps]), atol=1e-5)
    np.testing.assert_array_equal(np.delete(new, [3, 9], 0), np.delete(old, [3, 9], 0))
    np.testing.assert_array_equal(np.asarray(W.value_vectors(model, params, 0)), old)
    # faithful: one neuron per layer (de-dup), drift m * eps growing with every call
    drift = ablation.CumulativeCorruption(model, params, pairs, eps, batch_size=4,
                                          calls_per_batch=10)
    deltas = []
    for start, call in ((0, 0), (0, 1), (0, 9), (4, 0), (8, 3)):
        v = np.asarray(W.value_vectors(model, drift(start, call), 0))
        deltas.append(v[3] - old[3])
        np.testing.assert_array_equal(v[9], old[9])  # the de-duplicated layer hooks one
    for m, d in zip((1, 2, 10, 11, 24), deltas):
        np.testing.assert_allclose(d, m * eps, rtol=1e-5, atol=1e-4 * m)
    np.testing.assert_array_equal(np.asarray(W.value_vectors(model, params, 0)), old)
    # the runner asks for the weights of every forward call: the prefill, then each step
    calls = []

    def weights(n):
        calls.append(n)
        return drift(0, n)
    gen = generate(model, params, np.asarray([[1, 20, 30]]), max_new_tokens=4,
                   params_for_call=weights)
    assert calls == [0, 1, 2, 3] and gen.generated.shape == (1, 4)
    # zero: the activations of the listed neurons are 0 at every position
    edits = ablation.zero_interventions(pairs)
    ids = jnp.asarray([[1, 20, 30, 40]])
    out = model.jit_apply(params, ids, capture={"blocks.0.mlp.hook_post"}, interventions=edits)
    act = np.asarray(out.captured["blocks.0.mlp.hook_post"])
    assert (act[..., [3, 9]] == 0).all() and (act[..., 4] != 0).any()


def test_config_refuses_bad_values():
    from jaxreason.config_io import ConfigError

    with pytest.raises(ConfigError, match="prompt_types: unknown"):
        NeuronLensConfig(prompt_types=("cot", "text_only"))
    with pytest.raises(ConfigError, match="labeller: llm needs"):
        NeuronLensConfig(labeller="llm")
    with pytest.raises(ConfigError, match="give both"):
        NeuronLensConfig(data_path="x.jsonl")
    assert dataclasses.replace(NeuronLensConfig(), top_k=3).top_k == 3
    assert jax.tree_util.tree_leaves(ablation.zero_interventions([(0, 1)]))


def test_user_gsm8k_and_prompt_files_take_the_world_code_path(world, tmp_path):
    _, _, tok = world
    text = world_prompt_text("cot_prompt", 2)
    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "cot_prompt.txt").write_text(text + "\n")
    p = world_problem_records("test")[0]
    (tmp_path / "test.jsonl").write_text(json.dumps({"question": p.question,
                                                     "answer": p.answer}) + "\n")
    config = _config(data_path=str(tmp_path / "test.jsonl"),
                     prompt_dir=str(tmp_path / "prompts"), prompt_types=("cot_prompt",))
    data = load_data(config)
    assert data.source == "gsm8k" and data.problems[0].final_answer == p.final_answer
    ps = PromptSet.build(tok, "cot_prompt", data.prompts["cot_prompt"], "fixed")
    # the file (one trailing newline more) gives the world's own prompt, token for token
    world_ps = PromptSet.build(tok, "cot_prompt", text, "fixed")
    assert ps.encode_full(data.problems[0]) == world_ps.encode_full(p)
    assert ps.prompt(p) == text + "\n\n" + p.question.join(["Question: ",
                                                             "\nLet's think step by step\n"])
    assert ps.shown_answers == 2
