"""MechanisticProbe k-th smallest against the original's code: the case study's slots and
edit, the random twin's HuggingFace initialisation (checked leaf by leaf against
``transformers``' own GPT-2 init), one random masking draw (faithful) against the mean of
several (fixed), and the training data's ``data_seed`` reaching the study."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from jaxreason.config_io import from_dict
from jaxreason.models import CausalLM, GPT2Config
from jaxreason.models.families import family_of
from jaxreason.studies.mechprobe import kth as study
from jaxreason.studies.mechprobe.config import FIXED_RANDOM_MASK_DRAWS, MechProbeConfig
from jaxreason.studies.mechprobe.random_twin import hf_init_params
from jaxreason.tasks import kth_smallest as kth
from jaxreason.tree_utils import flatten

# ----------------------------------------------------------------------------- case study

DESCENDING = list(range(115, 99, -1))  # 115, 114, ..., 100
# the 2nd smallest (101) sits in the leaf slot and the smallest (100) after it
SECOND_IN_LEAF = [150, 151, 152, 153, 154, 155, 156, 101, 158, 159, 160, 161, 162, 163, 100,
                  165]


def test_case_study_slots_are_the_originals_positions_8_and_12():
    # the original writes to data_num[pos - 1] with pos = 8, 12 (1-based axis labels)
    assert (study.LEAF_SLOT, study.ROOT_SLOT) == (7, 11)


@pytest.mark.parametrize("faithful", [True, False])
def test_descending_list_moves_100_to_slot_7_and_101_to_slot_11(faithful):
    out = kth.move_two_smallest(DESCENDING, study.LEAF_SLOT, study.ROOT_SLOT, faithful)
    want = list(DESCENDING)
    want[15], want[7] = want[7], 100  # 108 goes where 100 was
    want[14], want[11] = want[11], 101  # 104 goes where 101 was
    assert out.tolist() == want
    assert sorted(out.tolist()) == sorted(DESCENDING)


def test_faithful_edit_keeps_the_originals_duplicate_and_loss():
    out = kth.move_two_smallest(SECOND_IN_LEAF, study.LEAF_SLOT, study.ROOT_SLOT, True)
    want = [150, 151, 152, 153, 154, 155, 156, 100, 158, 159, 160, 101, 162, 163, 101, 165]
    assert out.tolist() == want
    assert out.tolist().count(101) == 2 and 161 not in out.tolist()


def test_fixed_edit_is_a_permutation():
    out = kth.move_two_smallest(SECOND_IN_LEAF, study.LEAF_SLOT, study.ROOT_SLOT, False)
    want = [150, 151, 152, 153, 154, 155, 156, 100, 158, 159, 160, 101, 162, 163, 161, 165]
    assert out.tolist() == want
    assert sorted(out.tolist()) == sorted(SECOND_IN_LEAF)


def test_move_two_smallest_refuses_bad_slots():
    with pytest.raises(ValueError, match="leaf=3, root=3"):
        kth.move_two_smallest(DESCENDING, 3, 3, True)
    with pytest.raises(ValueError, match="root=16"):
        kth.move_two_smallest(DESCENDING, 7, 16, False)


# ----------------------------------------------------------------------------- random twin

LAYERS = 4  # the scaled c_proj std is 0.02 / sqrt(8), far from 0.02
SMALL = dict(vocab_size=256, hidden_size=64, num_layers=LAYERS, num_heads=4,
             intermediate_size=256, max_position_embeddings=64)


@pytest.fixture(scope="module")
def hf_tensors():
    """``transformers``' own freshly initialised GPT-2 of the same small shape."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=SMALL["vocab_size"], n_embd=SMALL["hidden_size"],
                                  n_layer=LAYERS, n_head=SMALL["num_heads"],
                                  n_inner=SMALL["intermediate_size"],
                                  n_positions=SMALL["max_position_embeddings"],
                                  bos_token_id=0, eos_token_id=0)
    hf = transformers.GPT2LMHeadModel(cfg)
    return {name: p.detach().numpy().astype(np.float64) for name, p in hf.named_parameters()}


def _same_distribution(ours: np.ndarray, theirs: np.ndarray) -> tuple[bool, str]:
    """Whether two tensors look drawn from the same init: identical when HF's is constant,
    else mean and std equal within 5 standard errors of their sampling error (the std of a
    sample std of n normal draws is sigma / sqrt(2 (n - 1)))."""
    if theirs.std() == 0:
        return bool(np.array_equal(ours, theirs)), f"constant {theirs.flat[0]} vs {ours[:3]}"
    sigma = theirs.std()
    n, m = ours.size, theirs.size
    mean_tol = 5 * sigma * math.sqrt(1 / n + 1 / m)
    std_tol = 5 * sigma * math.sqrt(1 / (2 * (n - 1)) + 1 / (2 * (m - 1)))
    ok = abs(ours.mean() - theirs.mean()) < mean_tol and abs(ours.std() - sigma) < std_tol
    return ok, f"std {ours.std():.5f} vs HF {sigma:.5f} (tol {std_tol:.5f})"


def test_random_twin_matches_transformers_gpt2_init_leaf_by_leaf(hf_tensors):
    model = CausalLM(GPT2Config(**SMALL))
    ours = {p: np.asarray(v, np.float64) for p, v in flatten(hf_init_params(model, 0)).items()}
    seen = set()
    for path, value in ours.items():
        key, transposed = family_of(model).hf_key(path)
        theirs = hf_tensors[key].T if transposed else hf_tensors[key]
        assert value.shape == theirs.shape, key
        ok, why = _same_distribution(value, theirs)
        assert ok, f"{'/'.join(path)} ({key}): {why}"
        seen.add(key)
    assert seen == set(hf_tensors)  # every HF parameter (the head is tied to wte)
    # the kinds the original's baseline has, with their HF stds
    assert ours[("wpe", "embedding")].std() == pytest.approx(0.02, rel=0.05)
    assert ours[("h_0", "mlp", "c_proj", "kernel")].std() == pytest.approx(
        0.02 / math.sqrt(2 * LAYERS), rel=0.05)


def test_the_init_check_catches_the_deviations_it_guards(hf_tensors):
    """The comparison has the power to fail: ``wpe`` at half HF's std (jaxreason's own init
    draws it at 0.01) and an unscaled ``c_proj`` are both rejected."""
    wpe = hf_tensors["transformer.wpe.weight"]
    ok, why = _same_distribution(0.5 * wpe, wpe)
    assert not ok, why
    c_proj = hf_tensors["transformer.h.0.mlp.c_proj.weight"]
    ok, why = _same_distribution(c_proj * math.sqrt(2 * LAYERS), c_proj)
    assert not ok, why


def test_random_twin_is_seeded():
    model = CausalLM(GPT2Config.tiny())
    a, b, c = (flatten(hf_init_params(model, s)) for s in (0, 0, 1))
    path = ("h_0", "attn", "c_attn", "kernel")
    assert np.array_equal(a[path], b[path]) and not np.array_equal(a[path], c[path])


# ----------------------------------------------------------------------------- masking draws

def _config(mode: str, **extra) -> MechProbeConfig:
    return from_dict(MechProbeConfig, {"mode": mode, **extra})


def test_mask_draws_default_by_mode_and_explicit_value_honoured():
    assert _config("faithful").mask_draws == 1
    assert _config("fixed").mask_draws == FIXED_RANDOM_MASK_DRAWS > 1
    assert _config("faithful", random_mask_draws=4).mask_draws == 4


@pytest.mark.parametrize("mode", ["faithful", "fixed"])
def test_random_masking_curve_is_one_draw_or_the_mean_of_draws(mode, monkeypatch):
    """Every accuracy call is recorded; a masked call scores the kept heads of layer 0, which
    differs between random draws, so the curve must be exactly one draw's value (faithful) or
    the mean over `mask_draws` draws (fixed)."""
    calls = []

    def fake_accuracy(model, params, tokens, labels, batch_size, interventions=None):
        value = 1.0 if interventions is None else float(interventions[0].sum())
        calls.append(value)
        return value

    monkeypatch.setattr(study, "accuracy", fake_accuracy)
    monkeypatch.setattr(study, "head_mask_interventions", lambda mask, every_layer: mask)
    draws = _config(mode).mask_draws
    config = SimpleNamespace(seed=3, batch_size=8, masking_fractions=(0.25, 0.5),
                             mask_draws=draws)
    entropies = np.random.default_rng(0).random((4, 8))
    curves = study.masking_curves(None, None, None, None, entropies, entropies, config,
                                  faithful=mode == "faithful")
    per_level = draws + 2  # the random draws, then the two entropy policies
    assert len(calls) == 1 + per_level * len(config.masking_fractions)
    for i in range(len(config.masking_fractions)):
        group = calls[1 + i * per_level: 1 + i * per_level + draws]
        assert curves["random"][i + 1] == pytest.approx(np.mean(group))
    if mode == "fixed":  # the draws really differ, so averaging changed the value
        assert any(len(set(calls[1 + i * per_level: 1 + i * per_level + draws])) > 1
                   for i in range(len(config.masking_fractions)))


# ----------------------------------------------------------------------------- data_seed

def test_data_seed_reaches_the_study_lists():
    task_args = {"k": 1, "rows": 400, "numbers": 32, "data_seed": 7}
    config = _config("fixed", train={"data": {"source": "kth_smallest", "task_args": task_args}})
    lists = study.study_lists(config)
    assert lists["data_seed"] == 7
    # the test rows the study probes are the task's own test split under that seed ...
    trained_test = kth.kth_smallest_task(seed=0, split="test", **task_args)
    assert np.array_equal(lists["vocab"].encode(lists["test"]), trained_test.arrays["tokens"])
    # ... and not the default seed's
    default = kth.kth_smallest_lists(k=1, rows=400, numbers=32)
    assert default["data_seed"] == kth.ORIGINAL_SEED
    assert not np.array_equal(default["test"], lists["test"])
