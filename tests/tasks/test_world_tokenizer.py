"""The world's HF tokenizer: exact round trip, single digits, loads with AutoTokenizer."""

import json
import random

import pytest
from transformers import AutoTokenizer

from jaxreason.tasks import word_problem_variants as wv
from jaxreason.tasks.word_problems import make_splits, sample_problems
from jaxreason.tasks.world_tokenizer import (SPECIALS, save_world_tokenizer, stop_token_id,
                                             world_vocab)


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok") / "world_tokenizer"
    save_world_tokenizer(d)
    return d


@pytest.fixture(scope="module")
def tok(tok_dir):
    return AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True)


def texts():
    rng = random.Random(1)
    fresh = sample_problems(400, seed=987654)  # draws no split holds: the vocab must cover them
    out = [p.text for p in list(make_splits()["test"][:400]) + fresh]
    out += [wv.few_shot_prompt(t, 8, seed=2) for t in wv.PROMPT_TYPES]
    for p in fresh[:100]:
        c = wv.choice_example(p, rng, 0.5)
        out += [c.argument, c.candidate_1, c.candidate_2, "\n".join(wv.tagged_steps(p))]
    return out


def test_round_trip_is_exact_and_closed(tok):
    batch = texts()
    ids = tok(batch, add_special_tokens=False)["input_ids"]
    for text, row in zip(batch, ids):
        assert tok.unk_token_id not in row, text
        assert tok.decode(row) == text
    with_bos = tok(batch[0])["input_ids"]
    assert with_bos[0] == tok.bos_token_id and with_bos[1:] == ids[0]
    assert tok.decode(with_bos, skip_special_tokens=True) == batch[0]


def test_numbers_are_single_digit_tokens(tok):
    vocab = tok.get_vocab()
    digit_tokens = [t for t in vocab if any(c.isdigit() for c in t)]
    assert sorted(digit_tokens) == list("0123456789")
    pieces = tok.convert_ids_to_tokens(tok.encode("So Tom has 36 + 5 = 41 eggs.",
                                                  add_special_tokens=False))
    assert pieces == ["So", "ĠTom", "Ġhas", "Ġ", "3", "6", "Ġ+", "Ġ", "5", "Ġ=", "Ġ", "4", "1",
                      "Ġeggs", "."]


def test_specials_and_stop(tok):
    assert [tok.pad_token, tok.bos_token, tok.eos_token, tok.unk_token] == list(SPECIALS)
    ids = [tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id]
    assert ids == [0, 1, 2, 3]
    assert tok.padding_side == "left"
    stop = stop_token_id(tok)
    assert tok.encode("The answer is 7.\n\nQuestion:", add_special_tokens=False)[-3] == stop
    assert len(tok) == len(world_vocab())
    assert tok.encode("Zork", add_special_tokens=False) == [tok.unk_token_id]


def test_directory_is_plain_and_replaced_atomically(tok_dir):
    cfg = json.loads((tok_dir / "tokenizer_config.json").read_text())
    assert "auto_map" not in cfg  # nothing that needs remote code
    again = save_world_tokenizer(tok_dir)  # over an existing directory
    assert again.get_vocab() == world_vocab()
    assert not [p for p in tok_dir.parent.iterdir() if p.name.startswith(".")]
