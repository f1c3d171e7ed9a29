"""Models: configs, the two families, HF import/export and generation."""

from jaxreason.models.config import BaseConfig, GPT2Config, LlamaConfig
from jaxreason.models.families import FAMILIES, config_from_hf, family_of
from jaxreason.models.family import Family
from jaxreason.models.layers import KVCache
from jaxreason.models.lm import CausalLM, ModelOutput, count_params, from_config

__all__ = ["BaseConfig", "GPT2Config", "LlamaConfig", "config_from_hf", "FAMILIES", "Family",
           "family_of", "KVCache", "CausalLM", "ModelOutput", "count_params", "from_config"]

from jaxreason.models.hf import load_pretrained, load_tokenizer, save_pretrained  # noqa: E402

__all__ += ["load_pretrained", "load_tokenizer", "save_pretrained"]
