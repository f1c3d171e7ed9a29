"""The world base model helper: trains once when the export is missing, then reuses it."""

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
    hf = world_model.world_base_model(str(config), overrides)
    assert hf == tmp_path / "run" / "hf" and world_model.is_finished_export(hf)
    stamp = (hf / "model.safetensors").stat().st_mtime_ns

    def no_training(*a, **k):
        raise AssertionError("a finished export must not be trained again")

    monkeypatch.setattr(world_model, "main", no_training)
    assert world_model.world_base_model(str(config), overrides) == hf
    assert (hf / "model.safetensors").stat().st_mtime_ns == stamp


def test_model_path_wins_and_bad_paths_are_named(tmp_path):
    class Config:
        model_path = str(tmp_path / "missing")
        world_train_config = "unused.yaml"

    with pytest.raises(ConfigError, match="missing"):
        world_model.resolve_model_path(Config())
    Config.model_path = ""
    with pytest.raises(ConfigError, match="unused.yaml"):
        world_model.resolve_model_path(Config())
