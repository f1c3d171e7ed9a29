"""Training data is checked against the model once, when the run loads it: every refusal
names the file (or task), the first bad row and position, and what is allowed. The checks
read memory-mapped arrays in chunks, and find a bad row in a later chunk too."""

from __future__ import annotations

import numpy as np
import pytest

from jaxreason import data as data_module
from jaxreason.data import DataError, TokenDataset

VOCAB, POSITIONS = 128, 128  # gpt2-tiny


def _saved(tmp_path, tokens, **extra):
    return TokenDataset({"tokens": tokens, **extra}).save(tmp_path / "data")


def _tokens(rows=32, seq=8, dtype=np.int32):
    return (np.arange(rows * seq).reshape(rows, seq) % 50 + 3).astype(dtype)


def _check(path):
    TokenDataset.load(path).check_fits(VOCAB, POSITIONS)


@pytest.mark.parametrize("value, row, col", [(VOCAB, 17, 3), (-1, 5, 0), (10**6, 31, 7)])
def test_token_ids_outside_vocabulary(value, row, col, tmp_path):
    tokens = _tokens()
    tokens[row, col] = value
    with pytest.raises(DataError) as e:
        _check(_saved(tmp_path, tokens))
    msg = str(e.value)
    assert str(tmp_path / "data" / "tokens.npy") in msg
    assert f"row {row}, position {col} holds token id {value}" in msg and "[0, 128)" in msg


def test_bad_row_found_in_a_later_chunk(tmp_path, monkeypatch):
    monkeypatch.setattr(data_module, "CHECK_CHUNK", 16)  # two rows of 8 per chunk
    tokens = _tokens()
    tokens[29, 6] = VOCAB + 5
    tokens[30, 1] = -3
    with pytest.raises(DataError, match=r"row 29, position 6 holds token id 133"):
        _check(_saved(tmp_path, tokens))


def test_float_tokens_are_refused_not_truncated(tmp_path):
    with pytest.raises(DataError, match=r"tokens.npy: tokens have dtype float32; token ids "
                                        r"must be integers"):
        _check(_saved(tmp_path, _tokens(dtype=np.float32) + 0.7))


def test_sequences_longer_than_the_models_positions(tmp_path):
    tokens = np.full((4, POSITIONS + 4), 5, np.int32)
    mask = np.zeros_like(tokens)
    mask[:, :10] = 1
    mask[2, :POSITIONS + 1] = 1
    with pytest.raises(DataError, match=rf"rows have {POSITIONS + 4} positions \(row 2 has a "
                                        rf"real token at position {POSITIONS} or later\) but "
                                        rf"the model addresses only {POSITIONS}"):
        _check(_saved(tmp_path, tokens, attention_mask=mask))


def test_unbounded_positions_are_not_limited(tmp_path):
    TokenDataset.load(_saved(tmp_path, np.full((2, 300), 5, np.int32))).check_fits(VOCAB, None)


def test_all_zero_loss_mask(tmp_path):
    tokens = _tokens()
    with pytest.raises(DataError, match=r"loss_mask.npy: the loss_mask is zero in every one of "
                                        r"the 32 rows"):
        _check(_saved(tmp_path, tokens, loss_mask=np.zeros_like(tokens)))
    mask = np.zeros_like(tokens)
    mask[31, 7] = 1  # one target is enough
    TokenDataset.load(_saved(tmp_path, tokens, loss_mask=mask)).check_fits(VOCAB, POSITIONS)


@pytest.mark.parametrize("shape", [(32, 8, 1), (32, 8, 2)])
def test_attention_mask_shape_must_match_tokens(shape, tmp_path):
    (tmp_path / "data").mkdir()
    np.save(tmp_path / "data" / "tokens.npy", _tokens())
    np.save(tmp_path / "data" / "attention_mask.npy", np.ones(shape, np.int32))
    with pytest.raises(ValueError) as e:
        TokenDataset.load(tmp_path / "data")
    assert f"{tmp_path / 'data'}: attention_mask has shape {shape} but tokens has (32, 8)" \
        in str(e.value)


def test_training_run_checks_data_path_at_load(train, tmp_path):
    tokens = _tokens(rows=64)
    tokens[40, 2] = VOCAB
    path = _saved(tmp_path, tokens)
    with pytest.raises(DataError, match=r"row 40, position 2 holds token id 128"):
        train(tmp_path / "run", "--data.source=arrays", f"--data.path={path}",
              "--trainer.steps=2")
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_task_built_dataset_is_checked_against_the_model(train, tmp_path):
    """The copy task's symbols (ids 3..3+symbols) do not fit a 16-token vocabulary."""
    with pytest.raises(DataError, match=r"copy: tokens: row \d+, position \d+ holds token id "
                                        r"\d+, outside the model's vocabulary \[0, 16\)"):
        train(tmp_path, "--model.overrides={vocab_size: 16}", "--trainer.steps=2")
