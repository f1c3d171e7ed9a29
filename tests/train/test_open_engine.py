"""The training engine is open: a dataset carries any per-example arrays (batched along rows,
trimmed by length buckets only when declared a sequence field) and an objective declares its
own options, which the config passes through ``trainer.objective_options``."""

from __future__ import annotations

import numpy as np
import pytest

from jaxreason.config_io import ConfigError
from jaxreason.data import TokenDataset
from jaxreason.registry import OBJECTIVES
from jaxreason.train import objectives
from jaxreason.train.config import load_train_config

ROWS, SEQ = 32, 8


def _dataset(seq_fields=("new_token_mask",)) -> TokenDataset:
    rng = np.random.default_rng(0)
    lengths = rng.integers(2, 5, size=ROWS)  # every row fits a bucket of 4
    attn = (np.arange(SEQ)[None] < lengths[:, None]).astype(np.int32)
    return TokenDataset({
        "tokens": rng.integers(3, 40, size=(ROWS, SEQ)) * attn,
        "attention_mask": attn,
        "splice_map": np.tile(np.arange(SEQ)[None], (ROWS, 1)) + 100 * np.arange(ROWS)[:, None],
        "new_token_mask": rng.integers(0, 2, size=(ROWS, SEQ)).astype(np.float32),
        "row_id": np.arange(ROWS),
    }, name="open", seq_fields=seq_fields)


def test_extra_arrays_batch_by_row_and_only_sequence_fields_are_bucketed(tmp_path):
    """The splice map is (N, P) with P == T by coincidence: it is not declared a sequence
    field, so a bucket of 4 trims tokens and the new-token mask but leaves it whole; every
    array of a batch comes from the same rows; save/load keeps the declaration."""
    data = _dataset()
    for ds in (data, TokenDataset.load(data.save(tmp_path / "d"))):
        assert ds.seq_fields >= {"tokens", "attention_mask", "loss_mask", "new_token_mask"}
        batch = ds.batch(3, 8, seed=0, buckets=(4, 8), process_index=0, process_count=1)
        rows = ds.batch_rows(3, 8, seed=0)
        assert batch["tokens"].shape == batch["new_token_mask"].shape == (8, 4)
        assert batch["splice_map"].shape == (8, SEQ) and batch["row_id"].shape == (8,)
        np.testing.assert_array_equal(batch["row_id"], rows)
        np.testing.assert_array_equal(batch["splice_map"], np.asarray(ds.arrays["splice_map"])[rows])
        np.testing.assert_array_equal(batch["new_token_mask"],
                                      np.asarray(ds.arrays["new_token_mask"])[rows, :4])
        halves = [ds.batch(3, 8, seed=0, process_index=i, process_count=2)["row_id"]
                  for i in range(2)]
        np.testing.assert_array_equal(np.concatenate(halves), rows)  # hosts split by rows


def test_bad_extra_arrays_are_named():
    with pytest.raises(ValueError, match="'row_id' has shape \\(3,\\) but tokens has 32 rows"):
        TokenDataset({"tokens": np.zeros((ROWS, SEQ), np.int32), "row_id": np.arange(3)})
    with pytest.raises(ValueError, match="sequence field 'row_id' has shape \\(32,\\)"):
        _dataset(seq_fields=("row_id",))


SEEN: dict = {}


@OBJECTIVES.register("test_weighted_lm")
def weighted_lm(model, params, batch, rng, *, weight: float, extra_key: str = "new_token_mask"):
    """causal_lm scaled by ``weight``; records the extra arrays it was given."""
    SEEN.update(keys=sorted(batch), extra=batch[extra_key].shape, splice=batch["splice_map"].shape,
                weight=weight)
    loss, metrics = objectives.causal_lm(model, params, batch, rng)
    return loss * weight, dict(metrics, loss=loss * weight)


def test_objective_options_reach_the_objective_with_the_extra_arrays(train, tmp_path):
    path = _dataset().save(tmp_path / "data")
    result, rows = train(tmp_path / "run", "--data.source=arrays", f"--data.path={path}",
                         "--data.batch_size=8", "--data.buckets=[4, 8]", "--data.eval_fraction=0",
                         "--trainer.objective=test_weighted_lm",
                         "--trainer.objective_options={weight: 0.5}", "--trainer.steps=2")
    assert SEEN["weight"] == 0.5
    assert {"splice_map", "new_token_mask", "row_id"} <= set(SEEN["keys"])
    assert SEEN["extra"] == (8, 4) and SEEN["splice"] == (8, SEQ)
    assert len(rows) == 2 and np.isfinite(result["loss"])


@pytest.mark.parametrize("overrides, pattern", [
    (["--trainer.objective=test_weighted_lm", "--trainer.objective_options={wieght: 1}"],
     r"objective_options: objective 'test_weighted_lm' has no option\(s\) \['wieght'\]; its "
     r"options: \['weight', 'extra_key'\]"),
    (["--trainer.objective=test_weighted_lm"], r"needs option\(s\) \['weight'\]"),
    (["--trainer.objective_options={classify_tokens: [1, 2]}"],
     r"objective 'causal_lm' has no option\(s\) \['classify_tokens'\]; its options: none"),
    (["--trainer.objective=classify", "--trainer.objective_options={classify_tokens: [1, 2]}",
      "--trainer.classify_tokens=[1, 2]"], r"set classify_tokens once"),
])
def test_bad_objective_options_are_config_errors(overrides, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_train_config(None, overrides)


def test_classify_tokens_alias_and_option_agree():
    new = load_train_config(None, ["--trainer.objective=classify",
                                   "--trainer.objective_options={classify_tokens: [5, 7]}"])
    old = load_train_config(None, ["--trainer.objective=classify",
                                   "--trainer.classify_tokens=[5, 7]"])
    assert list(new.trainer.options()["classify_tokens"]) == list(old.trainer.options()[
        "classify_tokens"]) == [5, 7]
    # the alias is not passed to objectives that do not take it
    assert load_train_config(None, ["--trainer.classify_tokens=[5, 7]"]).trainer.options() == {}
