"""Fixtures for the HuggingFace parity tests; the helpers live in hf_parity_utils.py."""

from __future__ import annotations

import pytest

from hf_parity_utils import build_hf
from jaxreason.models import load_pretrained


@pytest.fixture
def make_pair(tmp_path):
    """``make_pair(case, **overrides) -> (hf_model, jax_model, params, hf_dir)``."""
    counter = iter(range(1000))

    def make(case: str, seed: int = 0, **overrides):
        hf = build_hf(case, seed, **overrides)
        d = tmp_path / f"{case}-{next(counter)}"
        hf.save_pretrained(d)
        model, params = load_pretrained(d)
        return hf, model, params, d

    return make
