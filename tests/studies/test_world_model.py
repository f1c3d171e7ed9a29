"""The world base model helper: trains once when the export is missing, then reuses it, and
checks each export once against the studies' bar."""

import json
import os
import shutil
from pathlib import Path

import pytest

from jaxreason.config_io import ConfigError
from jaxreason.studies import world_model

ROOT = Path(__file__).resolve().parents[2]


def test_trains_once_then_reuses_the_export(tmp_path, monkeypatch, world_overrides):
    config = ROOT / "configs/world_base.yaml"
    overrides = world_overrides(tmp_path)
    with pytest.raises(FileNotFoundError, match="python -m jaxreason.train"):
        world_model.world_base_model(str(config), overrides, train=False)
    # the check's decoding is tested on its own below; here, that a new export gets checked
    monkeypatch.setattr(world_model, "evaluate_prompt_type",
                        lambda *a, **k: {"accuracy": 0.5, "n_shots": 4})
    with pytest.warns(UserWarning, match="under the 80%"):
        hf = world_model.world_base_model(str(config), overrides, check_problems=2)
    assert hf == tmp_path / "run" / "hf" and world_model.is_finished_export(hf)
    assert json.loads((tmp_path / "run" / world_model.CHECK_FILE).read_text())["problems"] == 2
    stamp = (hf / "model.safetensors").stat().st_mtime_ns

    def no_training(*a, **k):
        raise AssertionError("a finished export must not be trained again")

    monkeypatch.setattr(world_model, "main", no_training)
    monkeypatch.setattr(world_model, "evaluate_prompt_type", no_training)
    with pytest.warns(UserWarning, match="under the 80%"):  # the stored check, not a new one
        assert world_model.world_base_model(str(config), overrides, check_problems=2) == hf
    assert (hf / "model.safetensors").stat().st_mtime_ns == stamp


@pytest.fixture
def export(tmp_path, tiny_world_model):
    """A copy of the tiny world model's export in a run directory of this test's own."""
    hf = tmp_path / "run" / "hf"
    shutil.copytree(tiny_world_model, hf)
    return hf


def test_an_export_under_the_bar_is_named_with_its_figure(export):
    with pytest.warns(UserWarning, match=r"reached \d+% exact match on 3 held-out 2-step") as w:
        done = world_model.check_export(export, 3)
    assert "--trainer.seed" in str(w[0].message) and str(export) in str(w[0].message)
    stored = json.loads((export.parent / world_model.CHECK_FILE).read_text())
    assert stored == done and not done["passed"] and 0 <= done["exact_match"] < 0.8
    assert (done["split"], done["steps"], done["prompt_type"], done["n_shots"], done["bar"]) \
        == ("test", 2, "cot_prompt", 4, 0.8)


def test_a_passing_export_is_checked_once_per_weights(export, monkeypatch, capsys):
    calls = []

    def evaluate(model, params, tokenizer, problems, prompt_type, **kwargs):
        calls.append([p.n_steps for p in problems])
        return {"accuracy": 0.9, "n_shots": 4}

    monkeypatch.setattr(world_model, "evaluate_prompt_type", evaluate)
    assert world_model.check_export(export, 5)["passed"]
    assert "90% exact match on 5 held-out 2-step problems" in capsys.readouterr().err
    assert world_model.check_export(export, 5)["exact_match"] == 0.9 and len(calls) == 1
    weights = export / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    world_model.check_export(export, 5)  # other weights: checked again
    assert calls == [[2] * 5, [2] * 5]
    (export.parent / world_model.CHECK_FILE).write_text("{cut by a kill")
    assert world_model.check_export(export, 5)["passed"] and len(calls) == 3  # checked anew


def test_more_problems_than_the_split_holds_are_refused(export):
    with pytest.raises(ValueError, match="check_problems = 100000"):
        world_model.check_export(export, 100000)


def test_model_path_wins_and_bad_paths_are_named(tmp_path):
    class Config:
        model_path = str(tmp_path / "missing")
        world_train_config = "unused.yaml"
        world_fallbacks = 2

    with pytest.raises(ConfigError, match="missing"):
        world_model.resolve_model_path(Config())
    Config.model_path = ""
    with pytest.raises(ConfigError, match="unused.yaml"):
        world_model.resolve_model_path(Config())


def test_a_stored_check_is_read_back_for_its_own_weights_only(export, monkeypatch):
    assert world_model.stored_check(export) is None and world_model.check_sentence(None) == ""
    monkeypatch.setattr(world_model, "evaluate_prompt_type",
                        lambda *a, **k: {"accuracy": 0.9, "n_shots": 4})
    done = world_model.check_export(export, 5)
    assert world_model.stored_check(export) == done
    assert world_model.check_sentence(done) == (
        " World base model check: 90% exact match on 5 held-out 2-step problems (greedy, "
        "4-shot, full chain of thought; bar 80%): passed.")
    under = world_model.check_sentence({**done, "exact_match": 0.38, "passed": False})
    assert "38% exact match" in under and "UNDER THE BAR" in under
    weights = export / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    assert world_model.stored_check(export) is None  # a check of other weights


@pytest.fixture
def fake_training(monkeypatch, tiny_world_model):
    """Training replaced by a copy of the tiny world model's export (the real training is
    tested above), recording each trained run's (run_dir name, seed)."""
    trained = []

    def train(config):
        run = Path(config.trainer.run_dir)
        trained.append((run.name, config.trainer.seed))
        shutil.copytree(tiny_world_model, run / "hf")

    monkeypatch.setattr(world_model, "main", train)
    return trained


def checks_scoring(monkeypatch, accuracies):
    """Checks that score the exports in the order they are checked."""
    left = list(accuracies)
    monkeypatch.setattr(world_model, "evaluate_prompt_type",
                        lambda *a, **k: {"accuracy": left.pop(0), "n_shots": 4})
    return left


def test_an_export_under_the_bar_gives_way_to_the_first_seed_that_passes(
        tmp_path, monkeypatch, capsys, world_overrides, fake_training):
    config = str(ROOT / "configs/world_base.yaml")
    overrides = world_overrides(tmp_path)
    checks_scoring(monkeypatch, [0.38, 0.66, 0.96])
    hf = world_model.world_base_model(config, overrides, check_problems=2)
    assert hf == tmp_path / "run-seed1" / "hf"
    assert fake_training == [("run", 0), ("run-seed2", 2), ("run-seed1", 1)]
    err = capsys.readouterr().err
    assert "run/hf: 38% exact match on 2 held-out" in err and "under the 80% bar" in err
    assert "again from seed 1 (fallback 2 of 2)" in err
    assert "run-seed1/hf: 96% exact match" in err
    checks_scoring(monkeypatch, [])  # stored checks only, no training, from now on
    assert world_model.world_base_model(config, overrides, check_problems=2) == hf
    assert len(fake_training) == 3
    with pytest.warns(UserWarning, match="38% exact match"):  # no fallbacks: the first, warned
        assert world_model.world_base_model(config, overrides, check_problems=2,
                                            fallbacks=0) == tmp_path / "run" / "hf"


def test_when_no_seed_passes_the_best_is_used_and_named(tmp_path, monkeypatch,
                                                        world_overrides, fake_training):
    config = str(ROOT / "configs/world_base.yaml")
    overrides = world_overrides(tmp_path)
    checks_scoring(monkeypatch, [0.38, 0.66, 0.33])
    with pytest.warns(UserWarning, match=r"66% exact match.*best of 3 seeds") as w:
        hf = world_model.world_base_model(config, overrides, check_problems=2)
    assert hf == tmp_path / "run-seed2" / "hf" and "not trained yet" not in str(w[0].message)


def test_the_fallback_seeds_skip_the_configured_one():
    config = str(ROOT / "configs/world_base.yaml")
    configured, *fallbacks = world_model.candidate_configs(config, ["--trainer.seed=2"], 2)
    assert configured.trainer.seed == 2
    assert [(c.trainer.seed, c.trainer.run_dir) for c in fallbacks] == [
        (1, "runs/world_base-seed1")]
    assert all(c.schedule == configured.schedule and c.optimizer == configured.optimizer
               for c in fallbacks)  # the same recipe


def test_fallbacks_are_not_trained_without_training(tmp_path, monkeypatch, world_overrides,
                                                     fake_training):
    config = str(ROOT / "configs/world_base.yaml")
    overrides = world_overrides(tmp_path)
    checks_scoring(monkeypatch, [0.38])
    world_model.world_base_model(config, overrides, check_problems=0)  # trained, not checked
    with pytest.warns(UserWarning, match=r"38% exact match.*2 fallback seed\(s\) not trained"):
        assert world_model.world_base_model(config, overrides, train=False,
                                            check_problems=2) == tmp_path / "run" / "hf"
    assert len(fake_training) == 1
    with pytest.raises(ConfigError, match=r"world_fallbacks = 3: it must be 0 to 2"):
        world_model.world_base_model(config, overrides, fallbacks=3)


def test_the_cli_prints_the_export_it_chose(tmp_path, monkeypatch, capsys, world_overrides,
                                            fake_training):
    checks_scoring(monkeypatch, [0.38, 0.9])
    hf = world_model.cli(["--config", str(ROOT / "configs/world_base.yaml"),
                          "--check_problems", "2", *world_overrides(tmp_path)])
    assert hf == tmp_path / "run-seed2" / "hf"
    assert capsys.readouterr().out.strip() == str(hf)
