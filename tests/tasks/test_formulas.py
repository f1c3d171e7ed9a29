"""The Think-to-Talk formula task (Kudo et al., github.com/keitokudo/TTT): the problem
generator, the embedded tokenizer and HF wrapper, and the packed ``formulas`` training task."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest

from jaxreason.data import build_dataset
from jaxreason.tasks import formula_tokens as FT
from jaxreason.tasks import formulas as F
from jaxreason.tasks import formulas_lm as FL
from jaxreason.tasks.formulas import Formula, Problem

SMALL = {"train": 12, "valid": 30, "test": 30, "probing_train": 60}
N_FORMULAS = {"1step": 2, "2step": 2, "3step": 3, "2step_distractor": 3, "2step_in_order": 2,
              "general_3formulas": 3}
# The original's source / target token lengths and 3-shot prompt lengths under Llama-3's tokenizer
# (the embedded tokenizer splits alike).
LENGTHS = {"1step": (15, 32, 141), "2step": (18, 40, 174), "3step": (25, 67, 276),
           "2step_distractor": (26, 40, 198), "2step_in_order": (18, 40, 174)}
TOK = FT.FormulaTokenizer()


# --------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def small_splits():
    return {c: F.make_splits(c, sizes=SMALL) for c in F.ALL_CONFIGS}


@pytest.fixture(scope="module")
def splits_2step():
    return F.make_splits("2step")


@pytest.fixture(scope="module")
def splits_1step():
    """1step's problem space is small (~71k), so the full splits really exercise the
    exclusions and the de-duplication."""
    return F.make_splits("1step")


def _example_2step() -> Problem:
    """z = 0 + o , o = 4 + 5 ; z =? (the original's 2step example)."""
    return Problem("2step", (Formula("o", 4, "+", 5), Formula("z", 0, "+", "o")), (1, 0))


def _parse_source(src: str) -> tuple[list[Formula], str]:
    """Formulas (display order) and query of a char-formatted source."""
    passage, question = src.replace(" ", "").split(";")
    assert question.endswith("=?"), src
    operand = lambda x: int(x) if x.isdigit() else x  # noqa: E731
    fs = []
    for item in passage.split(","):
        var, rhs = item.split("=")
        if len(rhs) == 1:
            fs.append(Formula(var, operand(rhs)))
        else:
            assert len(rhs) == 3 and rhs[1] in "+-", item
            fs.append(Formula(var, operand(rhs[0]), rhs[1], operand(rhs[2])))
    return fs, question[:-2]


def _key_of_source(src: str) -> tuple[str, str]:
    fs, query = _parse_source(src)
    return Problem("x", tuple(fs), tuple(range(len(fs)))).passage, f"{query} ="


def _spans(mask_row: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) runs of ones."""
    m = np.concatenate([[0], (mask_row > 0).astype(np.int8), [0]])
    d = np.diff(m)
    return list(zip(np.flatnonzero(d == 1), np.flatnonzero(d == -1)))


def _packed_problems(tokens: np.ndarray, loss: np.ndarray) -> list[tuple[str, str]]:
    """(source, target) texts of every packed problem (each source precedes its target)."""
    out = []
    for r in range(len(tokens)):
        prev = 0
        for a, b in _spans(loss[r]):
            out.append((TOK.decode(tokens[r, prev:a]), TOK.decode(tokens[r, a:b])))
            prev = b
    return out


# --------------------------------------------------------------------------- 1. gold CoT

def test_gold_cot_2step_and_surface():
    p = _example_2step()
    assert p.cot == ["z = 0 + o", "o = 4 + 5", "o = 9", "z = 0 + o", "z = 0 + 9", "z = 9"]
    assert p.query == "z" and p.intermediate_answers == (9, 9) and p.answer == 9
    assert p.passage == "z = 0 + o, o = 4 + 5"
    assert p.key == ("z = 0 + o, o = 4 + 5", "z =")
    assert p.source == "z = 0 + o , o = 4 + 5 ; z =?"
    assert p.target == " z = 0 + o , o = 4 + 5 , o = 9 , z = 0 + o , z = 0 + 9 , z = 9\n"
    assert p.target.startswith(" ") and p.target.endswith("\n")
    # char-level spacing: every other character is a space
    body = p.target[1:-1]
    assert all(c == " " for c in body[1::2]) and " " not in body[0::2]
    assert F.char_format("q = 12 +x") == "q = 1 2 + x"


def test_gold_cot_1step():
    p = Problem("1step", (Formula("o", 4), Formula("z", 4, "-", "o")), (1, 0))
    assert p.cot == ["z = 4 - o", "o = 4", "z = 4 - o", "z = 4 - 4", "z = 0"]
    assert p.intermediate_answers == (4, 0)


def test_gold_cot_3step():
    p = Problem("3step", (Formula("b", 3, "+", 1), Formula("j", 7, "-", "b"),
                          Formula("l", 5, "+", "j")), (2, 1, 0))
    assert " , ".join(p.cot) == ("l = 5 + j , j = 7 - b , b = 3 + 1 , b = 4 , j = 7 - b , "
                                 "j = 7 - 4 , j = 3 , l = 5 + j , l = 5 + 3 , l = 8")
    assert p.intermediate_answers == (4, 3, 8)


def test_gold_cot_distractor():
    p = Problem("2step_distractor", (Formula("o", 4, "+", 5), Formula("z", 0, "+", 5),
                                     Formula("q", 7, "-", "z")), (2, 1, 0))
    assert p.passage == "q = 7 - z, z = 0 + 5, o = 4 + 5"
    assert " , ".join(p.cot) == "q = 7 - z , z = 0 + 5 , z = 5 , q = 7 - z , q = 7 - 5 , q = 2"
    assert p.intermediate_answers == (9, 5, 2)


def test_cot_substitutes_references_one_at_a_time():
    # general_3formulas shapes: a plain variable substitution and var-first add
    fs = (Formula("u", 3, "+", 2), Formula("a", "u", "+", 1), Formula("y", "a"))
    assert F.backtracking_cot(fs, "y") == ["y = a", "a = u + 1", "u = 3 + 2", "u = 5",
                                           "a = u + 1", "a = 5 + 1", "a = 6", "y = a", "y = 6"]
    assert F.backtracking_cot((Formula("e", 5),), "e") == ["e = 5"]


# --------------------------------------------------------------------------- 2. constraints

def _check_cot_lines(p: Problem):
    """Literal-only lines are right: ``v = n`` is v's value, ``v = a op b`` is followed by
    ``v = value``; every number in the CoT is one digit."""
    values = p.values
    for i, line in enumerate(p.cot):
        var, rhs = line.split(" = ")
        parts = rhs.split(" ")
        assert len(parts) in (1, 3)
        for x in parts[::2]:
            assert x in F.LETTERS or (len(x) == 1 and F.LOW <= int(x) <= F.HIGH), line
        if not all(x.isdigit() for x in parts[::2]):
            continue
        if len(parts) == 1:
            assert int(parts[0]) == values[var], (line, p)
        else:
            a, op, b = int(parts[0]), parts[1], int(parts[2])
            assert p.cot[i + 1] == f"{var} = {a + b if op == '+' else a - b}" == \
                f"{var} = {values[var]}", (line, p)
    assert p.cot[-1] == f"{p.query} = {p.answer}"
    assert p.cot[0] == p.formulas[-1].text()


@pytest.mark.parametrize("config", F.ALL_CONFIGS)
def test_generated_problem_constraints(small_splits, config):
    for name, probs in small_splits[config].items():
        for p in probs:
            assert p.config == config
            assert len(p.formulas) == N_FORMULAS[config]
            names = [f.var for f in p.formulas]
            assert len(set(names)) == len(names) and all(v in F.LETTERS for v in names)
            for f in p.formulas:
                for x in (f.left, f.right):
                    assert not isinstance(x, int) or F.LOW <= x <= F.HIGH
                assert f.op in (None, "+", "-")
                # references only to earlier variables
                assert all(r in names[:names.index(f.var)] for r in f.refs)
            assert all(F.LOW <= v <= F.HIGH for v in p.values.values())
            assert p.query == p.formulas[-1].var
            assert p.intermediate_answers == tuple(p.values[v] for v in names)
            assert sorted(p.display) == list(range(len(p.formulas)))
            if config == "2step_in_order":
                assert p.display == (0, 1)
            elif config != "general_3formulas":
                assert p.display == tuple(reversed(range(len(p.formulas))))
            _check_cot_lines(p)


def test_template_shapes(small_splits):
    for p in small_splits["1step"]["test"]:
        v0, v1 = p.formulas
        assert v0.op is None and isinstance(v0.left, int) and v1.right == v0.var
        assert isinstance(v1.left, int)  # number first
    for config in ("2step", "3step"):
        for p in small_splits[config]["test"]:
            assert p.formulas[0].refs == ()
            for prev, f in zip(p.formulas, p.formulas[1:]):
                assert isinstance(f.left, int) and f.right == prev.var
    for p in small_splits["2step_distractor"]["test"]:
        v0, v1, v2 = p.formulas
        assert v0.refs == () and v1.refs == () and v2.right == v1.var
        # the distractor never appears in the chain of thought
        assert all(v0.var not in line.split() for line in p.cot)
        assert v0.var not in p.target.split()


def test_general_3formulas_display_is_shuffled(small_splits):
    probs = [p for s in small_splits["general_3formulas"].values() for p in s]
    assert len({p.display for p in probs}) >= 4
    kinds = Counter((f.op is None, len(f.refs)) for p in probs for f in p.formulas)
    assert kinds[(True, 1)] and kinds[(False, 1)] and kinds[(True, 0)] and kinds[(False, 0)]


def test_in_range_rejects():
    assert not F.in_range(Problem("2step", (Formula("o", 5, "+", 5), Formula("z", 0, "+", "o")),
                                  (1, 0)))
    assert not F.in_range(Problem("2step", (Formula("o", 1, "-", 2), Formula("z", 9, "+", "o")),
                                  (1, 0)))
    assert not F.in_range(Problem("1step", (Formula("o", 10), Formula("z", 9, "-", "o")), (1, 0)))
    assert F.in_range(_example_2step())


def test_unknown_config_and_split():
    with pytest.raises(ValueError, match="unknown formula config"):
        F.make_splits("4step")
    with pytest.raises(ValueError, match="unknown split"):
        F.make_splits("2step", sizes={"tset": 3})
    with pytest.raises(ValueError, match="unknown formula config"):
        F.sample_problem("4step", random.Random(0))


# --------------------------------------------------------------------------- 3. splits

def test_split_sizes_and_determinism(small_splits):
    for config in F.ALL_CONFIGS:
        assert {k: len(v) for k, v in small_splits[config].items()} == SMALL
    again = F.make_splits("3step", sizes=SMALL)
    assert again == small_splits["3step"]
    again = F.make_splits("general_3formulas", sizes=SMALL)
    assert again == small_splits["general_3formulas"]


def test_full_split_sizes(splits_2step):
    assert {k: len(v) for k, v in splits_2step.items()} == F.SPLIT_SIZES


def test_train_prefix_does_not_depend_on_size(small_splits, splits_2step):
    assert splits_2step["train"][:SMALL["train"]] == small_splits["2step"]["train"]


def _check_exclusions(splits):
    keys = {n: [p.key for p in ps] for n, ps in splits.items()}
    for n, ks in keys.items():
        assert len(set(ks)) == len(ks), f"duplicates in {n}"
    for n, excl in F.SPLIT_EXCLUDES.items():
        for other in excl:
            assert not set(keys[n]) & set(keys[other]), (n, other)


@pytest.mark.parametrize("config", F.ALL_CONFIGS)
def test_exclusions_small(small_splits, config):
    _check_exclusions(small_splits[config])


def test_exclusions_full_1step(splits_1step):
    _check_exclusions(splits_1step)
    # the problem space is small enough that the exclusions had something to exclude
    rng_draws = F.sample_problems("1step", 10000, F.SPLIT_SEEDS["probing_train"])
    earlier = {p.key for n in ("train", "valid", "test") for p in splits_1step[n]}
    assert sum(p.key in earlier for p in rng_draws) > 50


def test_sample_problems_exclude_is_honoured():
    first = F.sample_problems("2step", 40, 7)
    exclude = {p.key for p in first[::2]}
    second = F.sample_problems("2step", 40, 7, exclude)
    assert not {p.key for p in second} & exclude
    assert second[0] == first[1]  # the same stream, the excluded draws skipped
    with pytest.raises(ValueError, match="n must be"):
        F.sample_problems("2step", -1, 0)


def test_sample_problems_gives_up_when_exhausted():
    with pytest.raises(ValueError, match="distinct problems"):
        F.sample_problems("1step", 5, 0, max_tries=3,
                          exclude={p.key for p in F.sample_problems("1step", 50, 0)})


def test_in_order_has_2step_problems(small_splits):
    a, b = small_splits["2step"], small_splits["2step_in_order"]
    for name in F.SPLIT_SIZES:
        assert [p.formulas for p in a[name]] == [p.formulas for p in b[name]], name
        for p, q in zip(a[name], b[name]):
            assert q.display == (0, 1) and p.display == (1, 0)
            assert q.passage == ", ".join(f.text() for f in p.formulas)
            assert q.cot == p.cot and q.intermediate_answers == p.intermediate_answers


_HASH_SCRIPT = """
from jaxreason.tasks import formulas as F
sizes = {"train": 5, "valid": 5, "test": 5, "probing_train": 5}
for c in ("2step", "general_3formulas", "2step_distractor"):
    for p in F.make_splits(c, sizes=sizes)["test"]:
        print(c, p.source)
for mode in F.MODES:
    print(F.make_edit_pairs(3, mode=mode)[-1])
    print(F.general_prompt(5, mode=mode).replace("\\n", "|"))
    print(F.sample_problems("general_3formulas", 5, 3, mode=mode)[-1])
print({x for x in F.general_prompt(5).split()})
"""


def test_independent_of_python_hash_seed():
    outs = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "JAX_PLATFORMS": "cpu"}
        r = subprocess.run([sys.executable, "-c", _HASH_SCRIPT], env=env, capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        outs.append(r.stdout)
    assert outs[0].count("\n") >= 21
    # the set's print order depends on the hash seed: compare it as a set
    body = [o.splitlines() for o in outs]
    assert body[0][:-1] == body[1][:-1]
    assert eval(body[0][-1]) == eval(body[1][-1])  # noqa: S307


# --------------------------------------------------------------------------- 4. labels

def test_label_statistics_2step_test(splits_2step):
    a = F.answers_array(splits_2step["test"])
    assert a.shape == (2000, 2) and a.dtype == np.int32
    v0, v1 = Counter(a[:, 0].tolist()), Counter(a[:, 1].tolist())
    top, count = v0.most_common(1)[0]
    assert top == 0 and 0.14 <= count / 2000 <= 0.22
    assert v0[9] / 2000 < 0.05  # skewed toward small values
    assert max(v1.values()) / 2000 < 0.15 and len(v1) == 10


# --------------------------------------------------------------------------- 5. prompts

def test_few_shot_prompt(small_splits):
    train = small_splits["2step"]["train"]
    prompt = F.few_shot_prompt(train)
    assert prompt == "".join(p.source + p.target for p in train[:3])
    assert prompt.count("\n") == 3 and prompt.endswith("\n")
    assert prompt.startswith(train[0].source + " ")
    assert "<" not in prompt  # no BOS / special text
    assert F.few_shot_prompt(train, shots=5).count("\n") == 5
    with pytest.raises(ValueError, match="few-shot"):
        F.few_shot_prompt(train[:2])


def test_general_prompt():
    prompt = F.general_prompt(50)
    assert prompt.count("\n") == 50 and prompt.count("?") == 50
    train = F.sample_problems("general_3formulas", 100, F.SPLIT_SEEDS["train"])
    assert prompt == F.few_shot_prompt(train, 50)
    TOK.encode(prompt)  # within the embedded vocabulary


# --------------------------------------------------------------------------- 6. edit pairs

@pytest.fixture(scope="module")
def edit_pairs(splits_2step):
    return F.edit_pairs_for(splits_2step, n=300)


def test_edit_pairs(edit_pairs, splits_2step):
    assert len(edit_pairs) == 300
    excluded = {p.key for n in ("train", "valid") for p in splits_2step[n]}
    keys = []
    for pair in edit_pairs:
        b, e = pair.base, pair.edited
        assert b.config == e.config == "2step"
        assert b.formulas[1] == e.formulas[1] and b.display == e.display == (1, 0)
        assert b.formulas[0].var == e.formulas[0].var and b.formulas[0].left == e.formulas[0].left
        assert b.formulas[0].op == e.formulas[0].op
        assert b.formulas[0].right != e.formulas[0].right
        assert F.in_range(b) and F.in_range(e)
        diff = [i for i, (x, y) in enumerate(zip(b.source, e.source)) if x != y]
        assert len(b.source) == len(e.source) and len(diff) == 1
        assert diff == [20]  # the digit that is token 13 (the original's first patch position)
        bt, et = TOK.encode(b.source), TOK.encode(e.source)
        assert len(bt) == len(et) == 18
        assert [i for i in range(18) if bt[i] != et[i]] == [13]
        assert b.key not in excluded and e.key not in excluded
        keys.append(b.key)
    assert len(set(keys)) == len(keys)
    assert not {p.edited.key for p in edit_pairs} & set(keys)  # fixed: no edit is a base
    # so v0's value (the probe target) changes too
    assert sum(p.base.intermediate_answers[0] != p.edited.intermediate_answers[0]
               for p in edit_pairs) == len(edit_pairs)


def test_edit_pairs_deterministic(edit_pairs, splits_2step):
    assert F.edit_pairs_for(splits_2step, n=40) == edit_pairs[:40]
    assert F.make_edit_pairs(20) == F.make_edit_pairs(20)


def test_edit_pairs_exclude_is_honoured():
    first = F.make_edit_pairs(30)
    exclude = {p.base.key for p in first[::2]} | {p.edited.key for p in first[1::2]}
    for pair in F.make_edit_pairs(30, exclude=exclude):
        assert pair.base.key not in exclude and pair.edited.key not in exclude


def test_edit_second_operand_choices():
    # o = 4 + 5, z = 0 + o: right operand r must keep 4 + r in [0, 9]: r in 0..5 minus 5
    p = _example_2step()
    seen = {F.edit_second_operand(p, random.Random(s)).formulas[0].right for s in range(200)}
    assert seen == {0, 1, 2, 3, 4}
    # z = 0 - o forces o = 0, so v0 = 0 + r allows no r other than 0
    q = Problem("2step", (Formula("o", 0, "+", 0), Formula("z", 0, "-", "o")), (1, 0))
    assert F.edit_second_operand(q, random.Random(0)) is None


# --------------------------------------------------------------------------- 7. tokenizer

def test_embedded_tokenizer_example_positions():
    p = _example_2step()
    src, tgt = TOK.encode(p.source), TOK.encode(p.target)
    assert len(src) == 18 and len(tgt) == 40
    assert TOK.token_strings(src) == ["z", " =", " ", "0", " +", " o", " ,", " o", " =", " ",
                                      "4", " +", " ", "5", " ;", " z", " =", "?"]
    full = TOK.token_strings(src + tgt)
    # prompt-free coordinates: position = 18 + index in the target
    assert full[36] == "9" and full[34:36] == [" =", " "] and full[33] == " o"
    assert full[56] == "9" and full[53] == " z" and full[57] == "\n" and len(full) == 58
    assert tgt[-1] == TOK.eos_id and TOK.vocab[TOK.eos_id] == "\n"
    assert TOK.pad_id == 0 and TOK.vocab_size == len(set(FT.VOCAB))


@pytest.mark.parametrize("config", F.CONFIGS)
def test_token_lengths_per_config(small_splits, config):
    s_len, t_len, prompt_len = LENGTHS[config]
    for probs in small_splits[config].values():
        assert {len(TOK.encode(p.source)) for p in probs} == {s_len}
        assert {len(TOK.encode(p.target)) for p in probs} == {t_len}
    prompt = F.few_shot_prompt(small_splits[config]["train"])
    assert len(TOK.encode(prompt)) == prompt_len
    # any 3 problems give that length, not just the first 3
    assert len(TOK.encode(F.few_shot_prompt(small_splits[config]["test"][5:]))) == prompt_len
    arr = FT.encode_batch(TOK, [p.source for p in small_splits[config]["test"]])
    assert arr.shape == (SMALL["test"], s_len) and arr.dtype == np.int32


def test_roundtrip_and_unknown_characters(small_splits):
    texts = [F.few_shot_prompt(small_splits[c]["train"]) for c in F.CONFIGS]
    texts += [p.source + p.target for p in small_splits["general_3formulas"]["test"]]
    for t in texts:
        assert TOK.decode(TOK.encode(t)) == t
    assert TOK.decode([TOK.pad_id] + TOK.encode("a =?")) == "a =?"
    with pytest.raises(ValueError, match="'A'"):
        TOK.encode("z = A")
    with pytest.raises(ValueError, match=r"'\*'"):
        TOK.encode("z = 1 * 2")


def test_encode_batch_unequal_lengths():
    with pytest.raises(ValueError, match="token lengths differ"):
        FT.encode_batch(TOK, ["z = 1 ; z =?", "z = 1 + 2 ; z =?"])


# --------------------------------------------------------------------------- 8. HFCodec

def _hf_tokenizer(split_newline: bool = False):
    """Char-level BPE (no merges) over the formula characters, with a BOS post-processor so
    that "no special tokens" is observable; ``split_newline`` makes "\\n" two tokens."""
    from tokenizers import Tokenizer, decoders, models, normalizers, processors
    from transformers import PreTrainedTokenizerFast

    chars = ["<s>", "<unk>", " ", "?", "=", "+", "-", ",", ";"] + list("0123456789") + list(
        F.LETTERS) + (["\\"] if split_newline else ["\n"])
    vocab = {c: i for i, c in enumerate(chars)}
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    if split_newline:
        tk.normalizer = normalizers.Replace("\n", "\\n")
    tk.decoder = decoders.Fuse()
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", unk_token="<unk>")


def test_hf_codec():
    hf = _hf_tokenizer()
    assert hf.encode("z")[0] == 0  # the raw tokenizer does add BOS
    codec = FT.HFCodec(hf)
    assert codec.eos_id == hf.convert_tokens_to_ids("\n")
    p = _example_2step()
    ids = codec.encode(p.source)
    assert 0 not in ids and len(ids) == len(p.source)  # char-level, no BOS
    assert codec.decode(ids) == p.source
    assert codec.encode(p.target)[-1] == codec.eos_id
    assert codec.token_strings(codec.encode("z =?")) == ["z", " ", "=", "?"]
    assert codec.vocab_size == len(hf)
    assert codec.pad_id == 0  # no pad token, no eos token: falls back to 0
    arr = FT.encode_batch(codec, [_example_2step().source] * 3)
    assert arr.shape == (3, 28)


def test_hf_codec_rejects_multi_token_newline():
    hf = _hf_tokenizer(split_newline=True)
    assert len(hf.encode("\n", add_special_tokens=False)) == 2
    with pytest.raises(ValueError, match="single-token newline"):
        FT.HFCodec(hf)


# --------------------------------------------------------------------------- 9. training task

@pytest.fixture(scope="module")
def held_2step():
    """The real held-out keys of 2step (all its splits and the edit pairs), computed once."""
    return FL.held_out_keys(["2step"])


def _build_with_held(held, **args):
    with pytest.MonkeyPatch.context() as mp:
        calls = []
        mp.setattr(FL, "held_out_keys", lambda configs: calls.append(list(configs)) or held)
        ds = build_dataset("formulas", **args)
    assert calls == [list(args["configs"])]
    return ds


@pytest.fixture(scope="module")
def packed(held_2step):
    return _build_with_held(held_2step, seed=0, rows=8, seq_len=256, configs=["2step"])


def test_formulas_task_shapes_and_masks(packed):
    a = packed.arrays
    assert packed.name == "formulas" and len(packed) == 8 and packed.seq_len == 256
    tokens, attn, loss = a["tokens"], a["attention_mask"], a["loss_mask"]
    assert tokens.shape == attn.shape == loss.shape == (8, 256)
    assert tokens.dtype == np.int32 and loss.dtype == np.float32
    for r in range(8):
        n = int(attn[r].sum())
        assert n > 0 and attn[r, :n].all() and not attn[r, n:].any()  # a prefix
        assert (tokens[r, :n] != TOK.pad_id).all() and (tokens[r, n:] == TOK.pad_id).all()
        assert not loss[r, n:].any()
        # 2step rows hold 58-token problems: as many as fit
        assert n % 58 == 0 and n == 58 * (256 // 58)
        spans = _spans(loss[r])
        assert len(spans) == n // 58
        assert [(int(s), int(e)) for s, e in spans] == [(58 * k + 18, 58 * (k + 1))
                                                        for k in range(n // 58)]
    for src, tgt in _packed_problems(tokens, loss):
        assert tgt.startswith(" ") and tgt.endswith("\n") and tgt.count("\n") == 1
        fs, query = _parse_source(src)
        assert src.endswith(f"; {query} =?")
        assert tgt == " " + F.char_format(" , ".join(F.backtracking_cot(fs, query))) + "\n"
        assert len(fs) == 2 and fs[0].right == fs[1].var  # 2step, reversed display


def test_formulas_task_avoids_held_out(packed, held_2step, splits_2step):
    held = held_2step
    expected = {p.key for n in FL.HELD_OUT_SPLITS for p in splits_2step[n]}
    assert expected <= held and not {p.key for p in splits_2step["train"]} <= held
    pairs = F.edit_pairs_for(splits_2step, n=20)
    assert {k for pr in pairs for k in (pr.base.key, pr.edited.key)} <= held
    assert 14000 < len(held) <= 14000 + 2 * len(F.MODES) * F.EDIT_SIZE
    keys = [_key_of_source(src) for src, _ in _packed_problems(packed.arrays["tokens"],
                                                               packed.arrays["loss_mask"])]
    assert keys and not set(keys) & held


def test_formulas_task_deterministic(packed, held_2step):
    # the rows depend on data_seed only, not on the training seed
    other = _build_with_held(held_2step, seed=5, rows=8, seq_len=256, configs=["2step"])
    np.testing.assert_array_equal(other.arrays["loss_mask"], packed.arrays["loss_mask"])
    third = _build_with_held(held_2step, seed=0, rows=8, seq_len=256, configs=["2step"],
                             data_seed=1)
    assert not np.array_equal(third.arrays["tokens"], packed.arrays["tokens"])
    np.testing.assert_array_equal(other.arrays["tokens"], packed.arrays["tokens"])


def _pool():
    return F.make_splits("2step", sizes={"train": 3, "valid": 3, "test": 10,
                                         "probing_train": 3})["test"]


def test_pack_rows_excludes_keys(monkeypatch):
    """A pool of 10 problems, 5 of them held out: only the other 5 may be packed."""
    pool = _pool()
    monkeypatch.setattr(FL, "sample_problem", lambda base, rng: rng.choice(pool))
    monkeypatch.setattr(FL, "held_out_keys", lambda configs: {p.key for p in pool[:5]})
    ds = build_dataset("formulas", seed=0, rows=6, seq_len=256, configs=["2step"])
    sources = [s for s, _ in _packed_problems(ds.arrays["tokens"], ds.arrays["loss_mask"])]
    assert len(sources) == 6 * 4
    assert set(sources) <= {p.source for p in pool[5:]}


def test_pack_rows_excludes_keys_in_order_alone(monkeypatch):
    pool = _pool()
    in_order = [Problem("2step_in_order", p.formulas, (0, 1)) for p in pool]
    small = {n: in_order[:5] for n in F.SPLIT_SIZES}
    monkeypatch.setattr(FL, "make_splits", lambda config: small)
    monkeypatch.setattr(FL, "sample_problem", lambda base, rng: rng.choice(pool))
    ds = build_dataset("formulas", seed=0, rows=6, seq_len=256, configs=["2step_in_order"])
    sources = [s for s, _ in _packed_problems(ds.arrays["tokens"], ds.arrays["loss_mask"])]
    assert sources and set(sources) <= {p.source for p in in_order}  # definition order
    assert set(sources) <= {p.source for p in in_order[5:]}


def test_formulas_task_mixed_configs_and_errors(monkeypatch):
    monkeypatch.setattr(FL, "held_out_keys", lambda configs: set())
    ds = build_dataset("formulas", seed=0, rows=12, seq_len=200, configs=["1step", "3step"],
                     weights=[1, 1])
    lengths = {int(ds.arrays["attention_mask"][r].sum()) for r in range(12)}
    assert lengths == {47 * 4, 92 * 2}  # 1step 15+32, 3step 25+67, as many as fit in 200
    with pytest.raises(ValueError, match="unknown configs"):
        build_dataset("formulas", seed=0, rows=2, configs=["4step"])
    with pytest.raises(ValueError, match="unknown configs"):
        build_dataset("formulas", seed=0, rows=2, configs=["general_3formulas"])
    with pytest.raises(ValueError, match="weights"):
        build_dataset("formulas", seed=0, rows=2, configs=["1step"], weights=[1, 2])
    with pytest.raises(ValueError, match="too short"):
        build_dataset("formulas", seed=0, rows=2, seq_len=40, configs=["2step"])
