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
import json
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Literal

from jaxreason import atomic
from jaxreason.config_io import ConfigError, load_config, load_yaml
from jaxreason.registry import STUDIES
from jaxreason.train.config import TrainConfig
from jaxreason.train.loop import load_trained, main


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


# ----------------------------------------------------------------------------- input checks

#: compute dtypes a study's ``dtype`` may name
COMPUTE_DTYPES = ("float32", "bfloat16", "float16")
#: the file in a run directory that says which study wrote it
RUN_MARKER = "study.json"
#: files every study writes at the top of its run directory (a rerun replaces them)
STUDY_OUTPUTS = ("metrics.json", "report.md")


def check_sizes(config, positive: Iterable[str] = (), non_negative: Iterable[str] = ()) -> None:
    """Refuse a size key below its minimum, naming the key, the value and what is allowed."""
    for names, low in ((positive, 1), (non_negative, 0)):
        for name in names:
            values = getattr(config, name)
            for v in (values if isinstance(values, tuple) else (values,)):
                if v is not None and v < low:
                    raise ConfigError(f"{name}={values!r} must be "
                                      f"{'positive' if low else 'non-negative'} (>= {low})")


def check_compute_dtype(value: str, key: str = "dtype") -> None:
    if value not in COMPUTE_DTYPES:
        raise ConfigError(f"{key} = {value!r} is not a compute dtype; choose one of "
                          f"{list(COMPUTE_DTYPES)}")


def check_model_dir(path, key: str = "model_path") -> Path:
    """A local HF checkpoint directory (config.json plus safetensors weights), checked before
    anything long runs; the error names the config key."""
    p = Path(path).expanduser()
    if not p.is_dir():
        raise ConfigError(f"{key} = {str(path)!r} is not a local directory; it must name a "
                          f"HF checkpoint folder (config.json and model.safetensors). "
                          f"jaxreason never downloads weights")
    weights = [n for n in ("model.safetensors", "model.safetensors.index.json")
               if (p / n).is_file()]
    if not (p / "config.json").is_file() or not weights:
        raise ConfigError(f"{key} = {str(path)!r} is not a HF checkpoint folder: it needs "
                          f"config.json and model.safetensors (or model.safetensors.index."
                          f"json); found {sorted(e.name for e in p.iterdir())[:10]}")
    return p


def prepare_run_dir(config: StudyConfig) -> Path:
    """Claim ``config.run_dir`` for this study and return it (resolved, created).

    A run directory records the study that writes it in ``study.json``. Refused: a path
    that is a file, a directory another study wrote, and one holding a study's outputs
    (``metrics.json``, ``report.md``) without that record (their origin is unknown, and a
    rerun would replace them). A directory this study wrote is resumed: its finished exports
    and training are reused, and a warning says so and that the metrics, report and figures
    are rewritten."""
    out = Path(config.run_dir).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"run_dir = {config.run_dir!r} is a file, not a directory; choose "
                          f"a directory for the study's outputs")
    marker = out / RUN_MARKER
    record = {"study": config.study, "mode": config.mode}
    if marker.is_file():
        try:
            stored = json.loads(marker.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{marker} is not JSON ({e}); it should say which study wrote "
                              f"run_dir = {config.run_dir!r}") from e
        if not isinstance(stored, dict) or stored.get("study") != config.study:
            other = stored.get("study") if isinstance(stored, dict) else stored
            raise ConfigError(f"run_dir = {config.run_dir!r} holds the outputs of study "
                              f"{other!r}, not {config.study!r}; refusing to overwrite them. "
                              f"Choose another run_dir")
        change = (f" (mode {stored.get('mode')!r} -> {config.mode!r})"
                  if stored.get("mode") != config.mode else "")
        warnings.warn(f"resuming {out} (study {config.study!r}){change}: finished exports and "
                      f"training are reused; metrics.json, report.md and figures are rewritten",
                      stacklevel=2)
    elif out.is_dir():
        found = [n for n in STUDY_OUTPUTS if (out / n).exists()]
        if found:
            raise ConfigError(f"run_dir = {config.run_dir!r} holds {found} but no {RUN_MARKER}"
                              f": they were not written by this version of study "
                              f"{config.study!r}, and a rerun would replace them. Move them "
                              f"away or choose another run_dir")
    out.mkdir(parents=True, exist_ok=True)
    atomic.write_json(out / RUN_MARKER, record)
    return out
