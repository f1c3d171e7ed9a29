"""Every study config shipped in configs/ loads with its study's schema."""

from pathlib import Path

import pytest
import yaml

from jaxreason.studies.base import load_study

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
STUDY_FILES = sorted(p for p in CONFIG_DIR.glob("*.yaml")
                     if "study" in (yaml.safe_load(p.read_text()) or {}))


def test_study_configs_exist():
    assert STUDY_FILES, CONFIG_DIR


@pytest.mark.parametrize("path", STUDY_FILES, ids=lambda p: p.name)
def test_study_config_loads(path):
    config, run = load_study(path)
    assert callable(run) and config.study == yaml.safe_load(path.read_text())["study"]
