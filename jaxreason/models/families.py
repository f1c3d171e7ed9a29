"""The registry of model families, and the lookups that dispatch on it.

Every family's :class:`~jaxreason.models.family.Family` description sits beside its module
(``FAMILY`` in ``models/gpt2.py`` and ``models/llama.py``); this file only lists them. To add
a family, write its model file and append its ``FAMILY`` to ``_DESCRIPTIONS``.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, Callable, Mapping

from jaxreason.models import gpt2, llama
from jaxreason.models.family import Family

_DESCRIPTIONS: tuple[Family, ...] = (gpt2.FAMILY, llama.FAMILY)

FAMILIES: Mapping[str, Family] = MappingProxyType({f.name: f for f in _DESCRIPTIONS})


def family_of(thing: Any) -> Family:
    """The description of a family, given its name, a config, a ``CausalLM`` or a Family.

    Raises ValueError naming the known families for anything else.
    """
    if isinstance(thing, Family):
        return thing
    config = getattr(thing, "config", thing)
    name = getattr(config, "family", config)
    if isinstance(name, str) and name in FAMILIES:
        return FAMILIES[name]
    shown = name if isinstance(name, str) else type(thing).__name__
    raise ValueError(f"unknown model family {shown!r}; known families: {sorted(FAMILIES)}")


def family_for_hf(model_type: Any) -> Family:
    """The family whose checkpoints have this HF ``config.json`` ``model_type``."""
    for family in _DESCRIPTIONS:
        if model_type in family.hf_model_types:
            return family
    allowed = [t for f in _DESCRIPTIONS for t in f.hf_model_types]
    raise ValueError(f"model_type={model_type!r} is not supported; allowed: {allowed}")


def presets() -> dict[str, Callable[..., Any]]:
    """Every family's named presets: name -> config factory taking field overrides."""
    out: dict[str, Callable[..., Any]] = {}
    for family in _DESCRIPTIONS:
        clash = sorted(set(out) & set(family.presets))
        if clash:
            raise ValueError(f"presets {clash} are defined by two families")
        out.update(family.presets)
    return out


def config_classes() -> tuple[type, ...]:
    """The config classes of all families (for isinstance checks)."""
    return tuple(f.config_class for f in _DESCRIPTIONS)


def config_from_hf(hf: dict, strict: bool = True, **overrides):
    """Dispatch a HF config dict to the family that implements its ``model_type``."""
    family = family_for_hf(hf.get("model_type"))
    return family.config_class.from_hf(hf, strict=strict, **overrides)


def config_from_dict(d: dict):
    """Inverse of ``BaseConfig.to_dict`` (used for configs saved beside checkpoints)."""
    d = dict(d)
    family = d.pop("family", None)
    if family not in FAMILIES:
        raise ValueError(f"config family={family!r} is not one of {sorted(FAMILIES)}")
    return FAMILIES[family].config_class(**d)
