"""MechanisticProbe with Llama on ProofWriter-style data: parser, labels, sampling, spans,
query-row capture and a tiny end-to-end run (random tiny Llama + WordLevel tokenizer)."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest

from jaxreason.tasks import proofwriter as pw

ANIMALS = ["cat", "dog", "cow", "bear", "mouse", "lion"]
ADJS = ["big", "red", "kind", "cold", "nice", "round"]


def _record(rng: random.Random, depth: int) -> dict:
    a1, a2 = rng.sample(ANIMALS, 2)
    j1, j2, j3, j4 = rng.sample(ADJS, 4)
    triples = {"triple1": f"The {a1} is {j1}.", "triple2": f"The {a2} is {j2}."}
    rules = {"rule1": f"If something is {j1} then it is {j3}.",
             "rule2": f"If something is {j2} and {j1} then it is {j4}."}
    if depth == 0:
        proof = "[(triple1)]"
        question = triples["triple1"][:-1]
    else:
        proof = rng.choice(["[((triple1) -> rule1)]", "[((triple1 triple2) -> rule2)]"])
        question = f"The {a1} is {j3 if 'rule1' in proof else j4}"
    answer = rng.random() < 0.5
    if not answer:
        question = question.replace(" is ", " is not ", 1)
    ctx = " ".join(list(triples.values()) + list(rules.values()))
    return {"context": ctx, "triples": triples, "rules": rules, "question": question,
            "answer": answer, "proof": proof}


def _write_data(root, n0=10, n1=20, seed=0):
    rng = random.Random(seed)
    cwa = root / "CWA"
    cwa.mkdir(parents=True)
    texts = []
    for split in pw.SPLITS:
        data = {"0": [_record(rng, 0) for _ in range(n0)],
                "1": [_record(rng, 1) for _ in range(n1)]}
        if split == "test":  # an alternative proof that the pool must drop
            alt = _record(rng, 1)
            alt["proof"] = "[((triple1) -> rule1)] OR [((triple2) -> rule2)]"
            data["1"].append(alt)
        (cwa / f"{split}.json").write_text(json.dumps(data))
        texts += [r["context"] + " " + r["question"] for d in data.values() for r in d]
    return texts


def _make_model_dir(path, texts):
    import torch
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    pre = pre_tokenizers.Whitespace()
    words = {"True", "False", "or", "?", ":", ".", "That", "false", "not", "is"}
    for t in texts:
        words.update(w for w, _ in pre.pre_tokenize_str(t))
    vocab = {"[UNK]": 0, "<s>": 1, "</s>": 2}
    for w in sorted(words):
        vocab[w] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]",
                                                bos_token="<s>", eos_token="</s>")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=len(vocab), hidden_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2,
                                   intermediate_size=128, max_position_embeddings=2048)
    transformers.LlamaForCausalLM(cfg).save_pretrained(str(path))
    fast.save_pretrained(str(path))
    return fast


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("mpl")
    texts = _write_data(root / "data")
    tok = _make_model_dir(root / "model", texts)
    return root, tok


# ----------------------------------------------------------------------------- parser / labels

def test_proof_parser():
    assert pw.get_proof_graph("[(triple1)]") == (["triple1"], [])
    assert pw.get_proof_graph("((triple1) -> rule1)") == (["triple1", "rule1"],
                                                          [("triple1", "rule1")])
    nodes, edges = pw.get_proof_graph("(triple2 triple3) -> rule2")
    assert nodes == ["triple2", "triple3", "rule2"]
    assert edges == [("triple2", "rule2"), ("triple3", "rule2")]
    nodes, edges = pw.get_proof_graph("[(((triple1) -> rule1) triple2) -> rule2]")
    assert nodes == ["triple1", "rule1", "triple2", "rule2"]
    assert edges == [("triple1", "rule1"), ("rule1", "rule2"), ("triple2", "rule2")]
    # an edge reversing an earlier one is dropped
    _, edges = pw.get_proof_graph("((triple1) -> rule1) ((rule1) -> triple1)")
    assert edges == [("triple1", "rule1")]
    # chain links: kept when fixed, lost in PRover's parser (as in the original)
    assert pw.get_proof_graph("(a b p0) -> p1 -> p2")[1] == [
        ("a", "p1"), ("b", "p1"), ("p0", "p1"), ("p1", "p2")]
    assert pw.get_proof_graph("(a b p0) -> p1 -> p2", chain_links=False)[1] == [
        ("a", "p1"), ("b", "p1"), ("p0", "p1")]
    with pytest.raises(ValueError):
        pw.get_proof_graph("((triple1) -> rule1")


def test_labels_faithful_vs_fixed():
    rec = {"triples": {"triple1": "A.", "triple2": "B.", "triple3": "C."},
           "rules": {"rule1": "R1.", "rule2": "R2."}, "question": "q", "answer": True,
           "proof": "[((triple2 triple3) -> rule2)]"}
    p1, p2 = pw.label_parser(rec, 1, faithful=True)
    assert p1 == [0, 1, 1, 0, 1]
    # edges[:1] keeps triple2 -> rule2 only: triple3 becomes a root (as in the original)
    assert p2 == [0, 1, 1]
    p1f, p2f = pw.label_parser(rec, 1, faithful=False)
    assert p1f == p1 and p2f == [0, 0, 1]
    rec0 = dict(rec, proof="[(triple1)]")
    assert pw.label_parser(rec0, 0) == ([1, 0, 0, 0, 0], [0])
    assert pw.label_parser(rec0, 0, faithful=False) == ([1, 0, 0, 0, 0], [0])
    assert pw.label_length(1) == 0 and pw.label_length(4) == 1
    assert pw.label_length(1, "arc") == 0 and pw.label_length(2, "arc") == 1


def test_bucket_sampling(setup):
    root, _ = setup
    data = pw.load_dataset(root / "data")  # resolves <dir>/CWA
    assert pw.load_dataset(root / "data" / "CWA").keys() == data.keys()
    b = pw.bucket_sample(data, seed=1)
    assert sorted(b) == [1, 4]
    assert len(b[1]) == 30 and len(b[4]) == 60  # test+dev+train, "OR" proof dropped
    assert all("OR" not in r["proof"] for r in b[4])
    capped = pw.bucket_sample(data, seed=1, cap=7, include_train=False)
    assert len(capped[1]) == 7 and len(capped[4]) == 7
    no_train = pw.bucket_sample(data, seed=1, include_train=False)
    train_ids = {json.dumps(r, sort_keys=True) for d in data["train"].values() for r in d}
    assert len(no_train[4]) == 40
    assert not any(json.dumps(r, sort_keys=True) in train_ids for r in no_train[4])
    assert pw.bucket_sample(data, seed=1)[4] == b[4]  # deterministic in the seed


# ----------------------------------------------------------------------------- spans / capture

def test_spans_plus_one_shift(setup):
    from jaxreason.studies.mechprobe.llama import demo_text, feature_prompt

    _, tok = setup
    data = pw.load_dataset(setup[0] / "data")
    rec, demo = data["test"]["1"][0], data["train"]["1"][0]
    fp = feature_prompt(tok, rec, [demo], "proofwriter", faithful=True)
    n_icl = len(tok.encode(demo_text(demo, "proofwriter")))  # includes <s>
    lens = [len(tok.encode(t)) for _, t in pw.statements(rec)]  # each includes <s> too
    expect = np.cumsum([n_icl] + lens)
    expect[0] += 1
    np.testing.assert_array_equal(fp.boundaries, expect)
    assert fp.ids == tok.encode(demo_text(demo, "proofwriter")
                                + "".join(t for _, t in pw.statements(rec))
                                + f" {rec['question']} True or False?")
    # fixed: exact spans; statement j's tokens decode to its text
    fx = feature_prompt(tok, rec, [demo], "proofwriter", faithful=False)
    for j, (_, text) in enumerate(pw.statements(rec)):
        span = fx.ids[fx.boundaries[j]:fx.boundaries[j + 1]]
        assert span == tok.encode(text, add_special_tokens=False)


def test_query_rows_match_full_pattern(setup):
    import jax.numpy as jnp

    from jaxreason.models import load_pretrained
    from jaxreason.studies.mechprobe.llama import query_attention

    root, tok = setup
    model, params = load_pretrained(root / "model")
    ids = tok.encode("The cat is big. The dog is red. The cat is red: True or False?")
    start = 9
    rows, _ = query_attention(model, params, ids, start, reduce=False, pad_multiple=16)
    full = model.apply(params, jnp.asarray([ids]), capture={"blocks.*.attn.hook_pattern"})
    for layer in range(model.config.num_layers):
        pat = np.asarray(full.captured[f"blocks.{layer}.attn.hook_pattern"])[0]  # (H, T, T)
        np.testing.assert_allclose(rows[layer], pat[:, start:], atol=1e-5)
    pooled, _ = query_attention(model, params, ids, start, pad_multiple=16)
    np.testing.assert_allclose(pooled["max"], rows.max(axis=2).mean(axis=1), atol=1e-6)
    np.testing.assert_allclose(pooled["mean"], rows.mean(axis=2).mean(axis=1), atol=1e-6)


def test_batched_forward_matches_one_by_one(setup):
    """Three prompts of different lengths in batches of two (the second batch is one real row
    plus a filler copy): every pooled row and answer logit equals the one-prompt path."""
    from jaxreason.models import load_pretrained
    from jaxreason.studies.mechprobe.llama import query_attention, query_attention_batch

    root, tok = setup
    model, params = load_pretrained(root / "model")
    texts = ["The cat is big. The dog is red. The cat is red: True or False?",
             "The cow is kind: True or False?",
             "The bear is cold. If something is cold then it is nice. The bear is nice: True or "
             "False?"]
    prompts = [(tok.encode(t), s) for t, s in zip(texts, (9, 2, 12))]
    got = query_attention_batch(model, params, prompts, (3, 4), pad_multiple=16, batch_size=2)
    for (ids, start), (pooled, choice) in zip(prompts, got):
        ref, ref_choice = query_attention(model, params, ids, start, (3, 4), pad_multiple=16)
        for k in ("max", "mean"):
            assert pooled[k].shape == ref[k].shape == (model.config.num_layers, len(ids))
            np.testing.assert_allclose(pooled[k], ref[k], atol=1e-6)
        np.testing.assert_allclose(choice, ref_choice, atol=1e-5 * np.abs(ref_choice).max())
    with pytest.raises(ValueError, match="prompt 1: query start 40 outside"):
        query_attention_batch(model, params, [prompts[0], (prompts[1][0], 40)])


def test_corrupt():
    from jaxreason.studies.mechprobe.llama import corrupt

    s = ["The cat is big.", "The dog is red."]
    rng = random.Random(0)
    assert corrupt(s, "counter", 1, rng) == ["The cat is big.", "That The dog is red is false."]
    assert sorted(corrupt(s, "shuffle", None, rng)) == sorted(s)
    assert corrupt(s, "noise", 0, rng, "X.") == ["X.", *s]


# ----------------------------------------------------------------------------- end to end

@pytest.mark.parametrize("mode", ["faithful", "fixed"])
def test_end_to_end(setup, tmp_path, mode):
    from jaxreason.studies.mechprobe.llama import MechProbeLlamaConfig, run
    from jaxreason.studies.base import resolve

    root, _ = setup
    cls, fn = resolve("mechprobe_llama")
    assert cls is MechProbeLlamaConfig and fn is run
    cfg = MechProbeLlamaConfig(mode=mode, data_dir=str(root / "data"),
                               model_path=str(root / "model"), run_dir=str(tmp_path / "run"),
                               max_examples_per_bucket=16, corrupt_pool=16,
                               corrupt_iterations=3, corrupt_subset=(10, 16), pad_multiple=64)
    m = run(cfg)
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["mode"] == mode and set(saved["buckets"]) == {"1", "4"}
    for e in saved["buckets"].values():
        for who in ("model", "random"):
            assert math.isfinite(e[who]["f1_p1"]) and math.isfinite(e[who]["f1_p2"])
        assert 0.0 <= e["icl_accuracy"] <= 1.0
    assert saved["buckets"]["1"]["model"]["f1_p2"] == 1.0  # depth-0: a single P2 class
    c = saved["corruption"]
    assert len(c["sp2"]) == 3 and set(k for k in c if k.startswith("corrupt_")) == {
        "corrupt_counter", "corrupt_shuffle", "corrupt_noise"}
    assert m["keep_layers"] == [0, 1]
    report = (tmp_path / "run" / "report.md").read_text()
    assert f"({mode} mode)" in report and "Corruption" in report


def test_arc_end_to_end(setup, tmp_path):
    """ARC format: rules {}, options, buckets by depth (<= 2), no accuracy, no corruption."""
    from jaxreason.studies.mechprobe.llama import MechProbeLlamaConfig, run

    root, _ = setup
    rng = random.Random(3)
    arc = tmp_path / "arc"
    arc.mkdir()
    for split in pw.SPLITS:
        data = {}
        for depth, proof in (("1", "(triple1 triple2) -> triple3"),
                             ("2", "(triple1) -> triple2 -> triple3")):
            recs = []
            for _ in range(8):
                r = _record(rng, 1)
                triples = dict(r["triples"], triple3=r["rules"]["rule1"], triple4=r["rules"]["rule2"])
                recs.append({"context": r["context"], "triples": triples, "rules": {},
                             "question": r["question"] + "? (A) big (B) red", "answer": "A",
                             "options": ["(A) big", "(B) red"], "proof": proof})
            data[depth] = recs
        (arc / f"{split}.json").write_text(json.dumps(data))
    assert pw.get_proof_graph("(triple1) -> triple2 -> triple3", chain_links=False)[1] == [
        ("triple1", "triple2")]
    m = run(MechProbeLlamaConfig(mode="faithful", dataset="arc", data_dir=str(arc),
                                 model_path=str(root / "model"), run_dir=str(tmp_path / "run")))
    assert set(m["buckets"]) == {"1", "2"} and "corruption" not in m
    assert all(math.isfinite(e["model"]["f1_p1"]) for e in m["buckets"].values())
    assert "icl_accuracy" not in m["buckets"]["1"]
