"""The stacked (scanned) layout against ``transformers`` in float32: a checkpoint loaded with
``scan_layers=True`` gives HF's logits, residual stream and attention patterns on a padded
batch, and exports back to a checkpoint HF loads with the same logits."""

from __future__ import annotations

import numpy as np
import pytest
import transformers

from hf_parity_utils import SEQ, assert_close, hf_forward, jax_forward, padded_batch
from jaxreason.models import load_pretrained, save_pretrained

ATOL = 1e-5
CAPTURE = ("blocks.*.hook_resid_pre", "blocks.*.attn.hook_pattern", "ln_final.hook_normalized")


@pytest.mark.parametrize("case", ["gpt2", "llama_gqa", "mistral_window"])
def test_scanned_layout_matches_hf(make_pair, tmp_path, case):
    hf, _, _, hf_dir = make_pair(case)
    model, params = load_pretrained(hf_dir, scan_layers=True)
    assert model.config.scanned
    ids, mask, _ = padded_batch([SEQ, 14, 7], SEQ, "left", seed=1)
    pos = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    ref = hf_forward(hf, ids, mask, pos)
    logits, cap = jax_forward(model, params, ids, mask, capture=CAPTURE)
    real = mask.astype(bool)
    assert_close(logits[real], ref["logits"][real], ATOL, "logits")
    n = model.config.num_layers
    for i in range(n):
        assert_close(cap[f"blocks.{i}.hook_resid_pre"][real], ref["hidden"][i][real], ATOL,
                     f"resid_pre {i}")
        jp = np.transpose(cap[f"blocks.{i}.attn.hook_pattern"], (0, 2, 1, 3))  # (B, T, H, S)
        hp = np.transpose(ref["attn"][i], (0, 2, 1, 3))
        assert_close(jp[real], hp[real], ATOL, f"pattern {i}")
    assert_close(cap["ln_final.hook_normalized"][real], ref["hidden"][n][real], ATOL, "ln_final")

    out = save_pretrained(model, params, tmp_path / "export")
    hf2 = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager")
    assert_close(hf_forward(hf2.eval(), ids[:1])["logits"], hf_forward(hf, ids[:1])["logits"],
                 ATOL, "export logits")
