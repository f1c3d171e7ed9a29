"""The embedded world's base model, shared by every study that runs on the word-problem world.

The neuron lens, K/V transplant and planning-token studies all need a model that has really
learned something, with no downloads. That model is the small Llama of
``configs/world_base.yaml`` trained from scratch on the word-problem world
(:mod:`jaxreason.tasks.word_problems_lm`), exported as a HuggingFace directory with the world's
tokenizer beside the weights. It is trained once and cached in its run directory: the first
study that needs it trains it (``jaxreason.train`` with ``resume: auto``, so a killed
training continues), every later study and rerun loads the export.

A study config names its model in one field, ``model_path``; an empty value means "the world
base model", found (or trained) through ``world_train_config``. A user with a real
checkpoint sets ``model_path`` to its local directory and the world config is never read.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

from jaxreason.config_io import ConfigError
from jaxreason.studies.base import check_model_dir
from jaxreason.train.config import load_train_config
from jaxreason.train.loop import main

#: the training config of the world base model, relative to the repository root
WORLD_TRAIN_CONFIG = "configs/world_base.yaml"
#: the file a finished HF export of a jaxreason run holds (besides the weights)
_EXPORT_FILES = ("config.json", "model.safetensors", "tokenizer.json")


@dataclasses.dataclass(frozen=True)
class WorldModelFields:
    """Config fields of a study that may run on the world base model (mix into its config).

    ``model_path``: a local HF checkpoint directory (config.json + safetensors, and its
    tokenizer); empty: the world base model of ``world_train_config``, trained first when its
    export does not exist yet."""

    model_path: str = ""
    world_train_config: str = WORLD_TRAIN_CONFIG


def export_dir_of(train_config) -> Path:
    """Where the training run of ``train_config`` (a TrainConfig) writes its HF export."""
    return Path(train_config.trainer.run_dir).expanduser() / "hf"


def is_finished_export(path) -> bool:
    """Whether ``path`` holds a complete HF export with its tokenizer (the export is written
    atomically, so a directory that has these files is whole)."""
    p = Path(path)
    return all((p / name).is_file() for name in _EXPORT_FILES)


def world_base_model(train_config: str = WORLD_TRAIN_CONFIG, overrides: Sequence[str] = (),
                     train: bool = True) -> Path:
    """The HF directory of the world base model of ``train_config`` (a YAML path plus dotted
    ``overrides``), trained first when its export is missing and ``train`` is true.

    A finished export is returned without reading any checkpoint; a partial run continues from
    its newest checkpoint (``checkpoint.resume: auto``)."""
    path = Path(train_config)
    if not path.is_file():
        raise ConfigError(f"world_train_config = {train_config!r} is not a file; it must name "
                          f"the world base model's training config (default "
                          f"{WORLD_TRAIN_CONFIG!r}, relative to the repository root)")
    config = load_train_config(path, overrides)
    if not config.checkpoint.export_hf or not config.checkpoint.export_tokenizer:
        raise ConfigError(f"{train_config}: the world base model's config must set "
                          f"checkpoint.export_hf: true and checkpoint.export_tokenizer, so the "
                          f"studies load model and tokenizer from one directory")
    hf_dir = export_dir_of(config)
    if is_finished_export(hf_dir):
        return hf_dir
    if not train:
        raise FileNotFoundError(f"the world base model has no export at {hf_dir}; train it "
                                f"with: python -m jaxreason.train --config {train_config}")
    main(dataclasses.replace(config, checkpoint=dataclasses.replace(
        config.checkpoint, resume="auto")))
    if not is_finished_export(hf_dir):
        raise RuntimeError(f"training {train_config} finished but left no complete export "
                           f"in {hf_dir}")
    return hf_dir


def resolve_model_path(config, train: bool = True) -> Path:
    """The checkpoint directory a study config (with :class:`WorldModelFields`) runs on:
    ``model_path`` when set (checked to be a local HF folder), else the world base model."""
    if config.model_path:
        return check_model_dir(config.model_path)
    return world_base_model(config.world_train_config, train=train)
