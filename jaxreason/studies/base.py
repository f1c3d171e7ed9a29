"""What every study shares: its registry entry, the config fields all studies have, training
its model through the shared loop, and loading a study YAML by its ``study:`` key.

A study is a subpackage of ``jaxreason.studies`` (config, run and report modules) whose
``__init__`` registers a :class:`Study` in :data:`jaxreason.registry.STUDIES`. One command
line (``python -m jaxreason.probe --config X.yaml``) serves them all: it reads the file's
``study:`` key, the registry imports that study's package, and the study says how its
metrics are summarised on the console.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Literal

from jaxreason.config_io import ConfigError, load_config, load_yaml
from jaxreason.registry import STUDIES
from jaxreason.train.config import TrainConfig


@dataclasses.dataclass(frozen=True)
class Study:
    """A registered study: its config class, its run function (``run(config) -> metrics``),
    and what of the metrics the command line prints: ``summarize(metrics)`` if given, else
    the ``summary_keys`` present in the metrics."""

    config: type
    run: Callable[[Any], dict]
    summary_keys: tuple[str, ...] = ()
    summarize: Callable[[dict], dict] | None = None

    def __call__(self, config) -> dict:
        return self.run(config)

    def summary(self, metrics: dict) -> dict:
        if self.summarize is not None:
            return self.summarize(metrics)
        return {k: metrics[k] for k in self.summary_keys if k in metrics}


@dataclasses.dataclass(frozen=True)
class StudyConfig:
    """Fields of every study config. Subclasses narrow ``study`` to their own name and set
    their own ``run_dir`` default; every number in a report names the ``mode`` that made
    it (``faithful``: the original's behaviour, quirks included; ``fixed``: its bugs fixed)."""

    study: str = ""
    mode: Literal["faithful", "fixed"] = "fixed"
    run_dir: str = "runs/study"


@dataclasses.dataclass(frozen=True)
class TrainedStudyConfig(StudyConfig):
    """A study that trains its own model with ``jaxreason.train`` first: ``train`` is a full
    training config; ``skip_training`` loads the run that already finished in
    ``train.trainer.run_dir`` instead."""

    train: TrainConfig = TrainConfig()
    skip_training: bool = False


def train_or_load(config: TrainedStudyConfig):
    """``(model, params, train_metrics)``: the study's model trained through
    :func:`jaxreason.train.loop.main` (``resume=auto``, so a finished run is not trained again; a
    checkpoint is saved at least at the end), or with ``skip_training`` the trained run
    loaded as it is. ``train_metrics`` are the numeric final metrics ({} when skipped)."""
    from jaxreason.train.loop import load_trained, main

    ckpt = config.train.checkpoint
    train_cfg = dataclasses.replace(config.train, checkpoint=dataclasses.replace(
        ckpt, resume="auto", save_every=ckpt.save_every or config.train.trainer.steps))
    result = {} if config.skip_training else main(train_cfg)
    try:
        model, params = load_trained(train_cfg)
    except FileNotFoundError as e:
        if not config.skip_training:
            raise
        raise FileNotFoundError(f"{e} (skip_training=true needs a finished training run)") from None
    return model, params, {k: v for k, v in result.items() if isinstance(v, (int, float))}


def resolve(name: str) -> tuple[type, Callable]:
    """(config class, run function) of the study registered as ``name``."""
    study = STUDIES.get(name)
    return study.config, study.run


def load_study(path, overrides=()) -> tuple[Any, Study]:
    """(config, study) for a study YAML file plus dotted overrides; the study is callable
    (``study(config)`` runs it)."""
    raw = load_yaml(path)
    if "study" not in raw:
        raise ConfigError(f"{path} has no top-level 'study:' key; known studies: "
                          f"{STUDIES.names()}")
    study = STUDIES.get(raw["study"])
    return load_config(study.config, path, overrides), study
