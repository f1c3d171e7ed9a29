"""Study configs by name: a YAML file with a top-level ``study:`` key names its schema and
runner, so one command line (``python -m jaxreason.probe``) serves every study."""

from __future__ import annotations

import difflib
import importlib

from jaxreason.config_io import ConfigError, load_config, load_yaml

# study name -> (module, config class, run function)
STUDIES = {"mechprobe_kth": ("jaxreason.studies.mechprobe_kth", "MechProbeConfig", "run"),
           "mechprobe_llama": ("jaxreason.studies.mechprobe_llama", "MechProbeLlamaConfig", "run"),
           "think_to_talk": ("jaxreason.studies.think_to_talk", "ThinkToTalkConfig", "run")}


def resolve(name: str):
    if name not in STUDIES:
        close = difflib.get_close_matches(str(name), STUDIES, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown study {name!r}.{hint} Known studies: {sorted(STUDIES)}")
    module, cls, fn = STUDIES[name]
    mod = importlib.import_module(module)
    return getattr(mod, cls), getattr(mod, fn)


def load_study(path, overrides=()):
    """(config, run function) for a study YAML file plus dotted overrides."""
    raw = load_yaml(path)
    if "study" not in raw:
        raise ConfigError(f"{path} has no top-level 'study:' key; known studies: {sorted(STUDIES)}")
    cls, run = resolve(raw["study"])
    return load_config(cls, path, overrides), run
