"""Fixtures of the K/V-transplant tests: the world tokenizer (from the session's tiny world
model), a random two-layer Llama with grouped-query attention over the world's vocabulary,
and a few encoded world examples."""

from __future__ import annotations

import pytest

from jaxreason.models import LlamaConfig, from_config, load_tokenizer
from jaxreason.tasks import cot_choice as cc


@pytest.fixture(scope="session")
def world_tokenizer(tiny_world_model):
    return load_tokenizer(tiny_world_model)


@pytest.fixture(scope="session")
def tiny_llama():
    config = LlamaConfig.tiny(vocab_size=256, hidden_size=32, intermediate_size=64,
                              max_position_embeddings=512)
    return from_config(config, seed=3)


@pytest.fixture(scope="session")
def world_items():
    return [cc.item_of(r) for r in cc.world_rows(6, seed=2, steps=(1, 2))]
