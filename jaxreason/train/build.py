"""Build what a training run starts from: the model, its parameters (with LoRA adapters or
new token rows when asked) and their logical axes, and the dataset splits."""

from __future__ import annotations

import dataclasses
import difflib

import jax

from jaxreason.config_io import ConfigError
from jaxreason.data import TokenDataset, build_dataset
from jaxreason.models import from_config, load_pretrained
from jaxreason.models.families import FAMILIES, family_of, presets
from jaxreason.models.lm import CausalLM
from jaxreason.train.config import DataSection, ModelSection, PeftSection
from jaxreason.train.lora import add_lora, lora_logical_axes, lora_paths
from jaxreason.train.vocab import add_tokens


def build_model(section: ModelSection, seed: int) -> tuple[CausalLM, dict]:
    """A fresh model from a preset, or a local HF checkpoint."""
    dtypes = {"dtype": section.dtype, "param_dtype": section.param_dtype,
              "scan_layers": section.scan_layers, "remat": section.remat}
    if section.hf_path is not None:
        if section.overrides:
            raise ValueError("model.overrides only apply to presets, not to model.hf_path")
        return load_pretrained(section.hf_path, **dtypes)
    known = presets()
    if section.preset not in known:
        raise ValueError(f"model.preset={section.preset!r} is not one of {sorted(known)}")
    make = known[section.preset]
    _check_override_keys(section.preset, section.overrides)
    try:
        config = make(**{**section.overrides, **dtypes})
    except TypeError as e:
        raise ValueError(f"model.overrides {sorted(section.overrides)}: {e}") from None
    return from_config(config, seed)


# config fields that model.* sets itself (not through model.overrides)
_SECTION_FIELDS = ("dtype", "param_dtype", "scan_layers", "remat")


def _check_override_keys(preset: str, overrides: dict) -> None:
    """Refuse ``model.overrides`` keys that are not fields of the preset's config class,
    listing the fields (with the closest match)."""
    family = next(f for f in FAMILIES.values() if preset in f.presets)
    fields = sorted(f.name for f in dataclasses.fields(family.config_class) if f.init
                    and f.name not in _SECTION_FIELDS)
    for key in overrides:
        if key in _SECTION_FIELDS:
            raise ConfigError(f"model.overrides.{key}: set model.{key} instead")
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"model.overrides: {key!r} is not a field of "
                             f"{family.config_class.__name__} (preset {preset!r}).{hint} "
                             f"Allowed: {', '.join(fields)}")


def apply_peft(model: CausalLM, params: dict, peft: PeftSection, seed: int):
    """Add new token rows and LoRA adapters as the mode asks.

    Returns ``(model, params, old_vocab)``; ``old_vocab`` is None unless tokens were added.
    """
    old_vocab = None
    if peft.new_tokens:
        old_vocab = model.config.vocab_size
        model, params = add_tokens(model, params, peft.new_tokens, init=peft.new_token_init)
    if "lora" in peft.mode:
        params = add_lora(params, model.family, peft.lora_targets or None, rank=peft.lora_rank,
                          alpha=peft.lora_alpha, dropout=peft.lora_dropout,
                          rng=jax.random.PRNGKey(seed + 1))
    return model, params, old_vocab


def logical_axes(model: CausalLM, params: dict) -> dict:
    """Logical axis specs for ``params``, including LoRA leaves when present."""
    axes = model.logical_axes()
    return lora_logical_axes(axes, params) if lora_paths(params) else axes


def build_data(section: DataSection, seed: int, model: CausalLM | None = None
               ) -> tuple[TokenDataset, TokenDataset | None]:
    """Train and eval splits from a task or an on-disk array directory (eval is None when
    ``data.eval_fraction`` is 0). With ``model``, the whole dataset is first checked to fit
    it (:meth:`TokenDataset.check_fits`: integer ids inside the vocabulary, no more positions
    than the model has, a loss mask that marks something)."""
    if section.source == "arrays":
        if not section.path:
            raise ValueError("data.source=arrays needs data.path (a directory of .npy files)")
        full = TokenDataset.load(section.path)
    else:
        full = build_dataset(section.source, seed=seed, **section.task_args)
    if model is not None:
        full.check_fits(model.config.vocab_size, family_of(model).position_limit(model.config))
    return full.split(section.eval_fraction, section.shuffle_seed)
