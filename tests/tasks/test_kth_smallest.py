"""The k-th smallest task (MechanisticProbe, Hou et al., 2023): number set, faithful lists, the
duplicate-aware probe labels, the double-softmax objective and the registered dataset."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from jaxreason.data import build_dataset
from jaxreason.studies.mechprobe.objectives import last_token_double_softmax
from jaxreason.tasks import kth_smallest as kth
from jaxreason.train import objectives

# --------------------------------------------------------------------------- fake tokenizers

# Numbers whose "n" and " n" are both single tokens (closed: every first digit of a two-digit
# one is itself in, since its Ġ-chain makes "Ġd" a token), and numbers with only "n" single.
BOTH = (0, 1, 2, 5, 7, 10, 12, 15, 21, 22, 27, 50, 51, 57, 70, 75, 77)
PLAIN_ONLY = (3, 11, 13, 80)


def _bpe_tokenizer():
    """A real byte-level BPE (GPT-2's pre-tokenizer) with a hand-made vocabulary: "n" is one
    token for n in BOTH + PLAIN_ONLY, " n" (Ġn) only for n in BOTH; other numbers split into
    digits. Merges of Ġ-chains rank first so " 12" becomes Ġ1 + 2 -> Ġ12."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate("0123456789Ġ")}
    merges = []

    def chain(form):
        cur = form[0]
        for ch in form[1:]:
            if (cur, ch) not in merges:
                merges.append((cur, ch))
            cur += ch
            vocab.setdefault(cur, len(vocab))

    for n in BOTH:
        chain("Ġ" + str(n))
    for n in BOTH + PLAIN_ONLY:
        if len(str(n)) > 1:
            chain(str(n))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok)


class DuckTokenizer:
    """Duck-typed: splits on spaces; a word is one id if known, else one id per digit plus
    an end marker; returns an object with ``input_ids`` (not a mapping)."""

    def __init__(self, singles):
        self.singles = set(singles)

    def __call__(self, text, add_special_tokens=True):
        ids = []
        for i, word in enumerate(text.split(" ")):
            key = word if i == 0 else " " + word
            if int(word) in self.singles:
                ids.append(hash(key) % 1000 + 100)
            else:
                ids.extend([*(int(d) for d in word), 99])
        return type("Enc", (), {"input_ids": ids})()


@pytest.fixture(scope="module")
def bpe():
    return _bpe_tokenizer()


# --------------------------------------------------------------------------- number set

def test_bpe_fake_behaves_as_designed(bpe):
    ids = lambda s: bpe(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    assert len(ids("12")) == 1 and len(ids(" 12")) == 1
    assert len(ids("13")) == 1 and len(ids(" 13")) == 2 and len(ids("14")) == 2
    assert ids("12 12 5") == ids("12") + ids(" 12") + ids(" 5")


def test_number_set_scans_in_order_and_stops_at_size(bpe):
    assert kth.number_set_from_tokenizer(bpe, size=len(BOTH)) == list(BOTH)
    assert kth.number_set_from_tokenizer(bpe, size=5) == [0, 1, 2, 5, 7]
    with pytest.raises(ValueError, match=f"only {len(BOTH)} numbers"):
        kth.number_set_from_tokenizer(bpe, size=len(BOTH) + 1, limit=500)


def test_number_set_with_duck_typed_tokenizer():
    duck = DuckTokenizer({4, 9, 2, 30})
    assert kth.number_set_from_tokenizer(duck, size=4) == [2, 4, 9, 30]


def test_label_token_is_the_unspaced_number(bpe):
    for n in (0, 12, 77):
        assert kth.label_token_id(bpe, n) == bpe(str(n), add_special_tokens=False)["input_ids"][0]
        assert kth.label_token_id(bpe, n) != bpe(" " + str(n), add_special_tokens=False)["input_ids"][0]
    with pytest.raises(ValueError, match="not one"):
        kth.label_token_id(bpe, 14)


def test_tokenizer_vocab_matches_tokenizing_the_joined_list(bpe):
    vocab = kth.tokenizer_vocab(bpe, size=len(BOTH))
    lists = kth.faithful_lists(vocab.numbers, 200, seed=3)["train"]
    tokens = vocab.encode(lists)
    assert tokens.shape == (len(lists), 16)
    for row, toks in zip(lists[:50], tokens[:50]):
        want = bpe(" ".join(map(str, row)), add_special_tokens=False)["input_ids"]
        assert toks.tolist() == want
    kth._check_tokenization(bpe, vocab, lists)  # the whole-sample check agrees
    assert vocab.vocab_size == len(bpe)


# --------------------------------------------------------------------------- faithful lists

def test_faithful_lists_reproduce_python_random_seed_42():
    numbers = [0, 3, 4, 8, 15, 16, 23, 42]
    state = random.getstate()
    out = kth.faithful_lists(numbers, 500, length=16, seed=42)
    assert random.getstate() == state  # the global generator is untouched
    random.seed(42)
    ref = [random.choices(numbers, k=16) for _ in range(500)]
    random.setstate(state)
    got = np.concatenate([out["train"], out["validation"], out["test"]])
    assert got.tolist() == ref
    again = kth.faithful_lists(numbers, 500, length=16, seed=42)
    assert all((again[s] == out[s]).all() for s in kth.SPLITS)
    other = kth.faithful_lists(numbers, 500, length=16, seed=7)
    assert not (other["train"] == out["train"]).all()


@pytest.mark.parametrize("count, sizes", [(1_000_000, (980_000, 10_000, 10_000)),
                                          (100_000, (98_000, 1_000, 1_000)),
                                          (1234, (1209, 12, 13)), (100, (98, 1, 1))])
def test_split_98_1_1_by_order(count, sizes):
    assert kth.faithful_split_sizes(count) == sizes
    if count <= 100_000:
        out = kth.faithful_lists(range(10), count, length=4, seed=1)
        assert tuple(len(out[s]) for s in kth.SPLITS) == sizes


def test_probe_sample_continues_the_generation_stream():
    lists = kth.kth_smallest_lists(seed=42, k=1, rows=3000, numbers=20)
    state = random.getstate()
    random.seed(42)
    data = [random.choices(list(range(20)), k=16) for _ in range(3000)]
    test = data[2970:]
    ref = random.sample(test, 16)
    random.setstate(state)
    assert kth.faithful_probe_sample(lists, 16).tolist() == ref


# --------------------------------------------------------------------------- labels

@pytest.mark.parametrize("values, k, useful, answer", [
    # no duplicates: the two smallest (1 at 3, 3 at 1) are useful, the 2nd smallest answers
    ([5, 3, 9, 1, 7], 1, {1, 3}, 1),
    # the minimum duplicated: rank 1 does not exist, walks down to rank 0 -> one useful number
    ([4, 2, 7, 2, 9], 1, {1}, 1),
    ([4, 2, 7, 2, 9], 2, {0, 1}, 0),
    ([4, 2, 7, 2, 9], 0, {1}, 1),
    # the 2nd smallest duplicated, k=2: ranks 0, 1 exist, rank 2 walks down to rank 1
    ([6, 1, 3, 3, 8], 2, {1, 2}, 2),
    # all equal: only the first position, whatever k
    ([5, 5, 5, 5], 3, {0}, 0),
    # triple minimum, k=3: ranks 0 and 3 exist
    ([2, 9, 2, 4, 2, 6], 3, {0, 3}, 3),
])
def test_useful_and_answer_labels_by_hand(values, k, useful, answer):
    p1, ans = kth.useful_and_answer_labels(values, k)
    assert p1.dtype == np.int8 and p1.shape == (len(values),)
    assert set(np.flatnonzero(p1).tolist()) == useful
    assert ans == answer and p1[ans] == 1


def test_labels_equal_first_occurrences_of_the_k_plus_1_smallest():
    """The net effect of the original's labels: the first occurrence of each distinct value
    among the k+1 smallest (with multiplicity); checked on many duplicate-heavy lists."""
    rng = np.random.default_rng(0)
    lists = rng.integers(0, 8, size=(300, 16))
    for k in (0, 1, 3, 7):
        p1, ans = kth.useful_and_answer_labels_batch(lists, k)
        for row, p, a in zip(lists, p1, ans):
            s = sorted(row.tolist())
            want = {row.tolist().index(v) for v in set(s[:k + 1])}
            assert set(np.flatnonzero(p).tolist()) == want
            assert a == row.tolist().index(s[k])


def test_labels_reject_bad_k():
    with pytest.raises(ValueError):
        kth.useful_and_answer_labels([1, 2, 3], 3)


# --------------------------------------------------------------------------- objective

class _FixedLogits:
    """A stand-in model: ``apply`` returns the same (B, T, V) logits whatever the input."""

    def __init__(self, logits):
        self.logits = logits

    def apply(self, params, tokens, attention_mask=None, dropout_rng=None):
        return type("Out", (), {"logits": self.logits})()


def _batch(labels, predict_at, seq=3):
    import jax.numpy as jnp

    b = len(labels)
    return {"tokens": jnp.zeros((b, seq), jnp.int32),
            "attention_mask": jnp.ones((b, seq), jnp.int32),
            "labels": jnp.asarray(labels, jnp.int32),
            "predict_at": jnp.asarray(predict_at, jnp.int32)}


def test_double_softmax_objective_by_hand():
    import jax.numpy as jnp

    fn = objectives.get("last_token_double_softmax")
    assert fn is last_token_double_softmax
    # row 0 predicts at position 1 with equal logits: p = (.5, .5), loss = log(2e^.5) - .5 = ln 2
    # row 1 predicts at position 2 with logits (ln 3, 0): p = (.75, .25), label 0
    logits = np.full((2, 3, 2), 9.0, np.float32)  # other positions would be wrong if read
    logits[0, 1] = [0.0, 0.0]
    logits[1, 2] = [math.log(3.0), 0.0]
    loss, metrics = fn(_FixedLogits(jnp.asarray(logits)), None, _batch([1, 0], [1, 2]), None)
    row1 = math.log(math.exp(0.75) + math.exp(0.25)) - 0.75
    assert float(loss) == pytest.approx((math.log(2.0) + row1) / 2, rel=1e-6)
    assert float(metrics["loss"]) == pytest.approx(float(loss))
    assert float(metrics["accuracy"]) == pytest.approx(0.5)  # row 0 ties -> argmax 0 != 1


def test_double_softmax_matches_torch_cross_entropy_on_probabilities():
    torch = pytest.importorskip("torch")
    import jax.numpy as jnp

    rng = np.random.default_rng(1)
    logits = rng.normal(size=(4, 5, 11)).astype(np.float32) * 3
    labels = rng.integers(0, 11, size=4)
    loss, _ = last_token_double_softmax(_FixedLogits(jnp.asarray(logits)), None,
                                            _batch(labels, [4] * 4, seq=5), None)
    probs = torch.softmax(torch.from_numpy(logits[:, -1]), -1)
    ref = torch.nn.CrossEntropyLoss()(probs, torch.from_numpy(labels).long())
    assert float(loss) == pytest.approx(float(ref), rel=1e-5)


# --------------------------------------------------------------------------- registered task

def test_registry_builds_the_embedded_dataset():
    ds = build_dataset("kth_smallest", seed=0, k=1, rows=1000, numbers=16)
    lists = kth.kth_smallest_lists(k=1, rows=1000, numbers=16)
    trainval = np.concatenate([lists["train"], lists["validation"]])
    assert len(ds) == 990 and ds.seq_len == 16  # the test split is left out
    toks = ds.arrays["tokens"]
    assert toks.dtype == np.int32 and (toks == trainval + kth.FIRST).all()
    assert toks.min() >= kth.FIRST and toks.max() < kth.FIRST + 16
    assert (ds.arrays["labels"] == np.sort(trainval, 1)[:, 1] + kth.FIRST).all()
    assert (ds.arrays["predict_at"] == 15).all()
    assert lists["vocab_size"] == 17 and lists["vocab"].source == "embedded"

    test = build_dataset("kth_smallest", seed=123, k=1, rows=1000, numbers=16, split="test")
    assert (test.arrays["tokens"] == lists["test"] + kth.FIRST).all()  # trainer seed: no effect
    assert len(build_dataset("kth_smallest", seed=0, rows=1000, split="all")) == 1000
    k0 = build_dataset("kth_smallest", seed=0, k=0, rows=1000, numbers=16, split="train")
    assert (k0.arrays["labels"] == lists["train"].min(1) + kth.FIRST).all()
    with pytest.raises(ValueError, match="split"):
        build_dataset("kth_smallest", seed=0, rows=1000, split="dev")
    with pytest.raises(ValueError, match="k=16"):
        build_dataset("kth_smallest", seed=0, rows=1000, k=16)


def test_registry_builds_from_a_local_tokenizer_dir(bpe, tmp_path):
    bpe.save_pretrained(tmp_path / "tok")
    kth._hf_vocab.cache_clear()
    ds = build_dataset("kth_smallest", seed=0, k=2, rows=400, numbers=len(BOTH),
                     tokenizer_path=str(tmp_path / "tok"), split="validation")
    lists = kth.kth_smallest_lists(k=2, rows=400, numbers=len(BOTH),
                                   tokenizer_path=str(tmp_path / "tok"))
    assert lists["numbers"] == list(BOTH) and len(ds) == 4
    for row, toks, label in zip(lists["validation"], ds.arrays["tokens"], ds.arrays["labels"]):
        assert toks.tolist() == bpe(" ".join(map(str, row)), add_special_tokens=False)["input_ids"]
        assert label == bpe(str(sorted(row)[2]), add_special_tokens=False)["input_ids"][0]


def test_double_softmax_trains_in_the_loop(tmp_path):
    """The objective is accepted by the config and runs under jaxreason.train."""
    from jaxreason.train.config import load_train_config
    from jaxreason.train.loop import main

    config = load_train_config(None, [
        "--model.preset=gpt2", "--model.overrides={vocab_size: 17, hidden_size: 32, "
        "num_layers: 1, num_heads: 2, intermediate_size: 64, max_position_embeddings: 16}",
        "--data.source=kth_smallest", "--data.task_args={rows: 600, numbers: 16}",
        "--data.batch_size=16", "--data.eval_batches=1", "--trainer.steps=3",
        "--trainer.eval_every=3", "--trainer.progress=false", "--trainer.plot=false",
        "--trainer.objective=last_token_double_softmax", f"--trainer.run_dir={tmp_path}"])
    result = main(config)
    # probabilities as logits: the loss is close to ln(vocab)
    assert abs(result["loss"] - math.log(17)) < 0.1 and 0 <= result["eval_accuracy"] <= 1
