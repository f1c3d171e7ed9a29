"""Forward-pass parity with HuggingFace ``transformers`` in float32 (max abs diff <= 1e-5).

For every architecture variant jaxreason claims to load, the logits, the residual stream at
every block boundary, the final-norm output and the attention patterns must equal HF's eager
implementation, with and without padding.

HF ``hidden_states`` mapping (transformers 5): ``hidden_states[0]`` is the embedding output
(= ``blocks.0.hook_resid_pre``; GPT-2's includes position embeddings), ``hidden_states[i]``
for ``0 < i < L`` is the output of block ``i-1`` (= ``blocks.{i}.hook_resid_pre``), and
``hidden_states[L]`` is the final norm output (= ``ln_final.hook_normalized``), not the raw
output of the last block; that one is read with a forward hook on HF's last layer.
"""

from __future__ import annotations

import numpy as np
import pytest

from hf_parity_utils import (CASES, SEQ, assert_close, hf_forward, jax_forward, max_diff,
                             padded_batch, random_ids)
from jaxreason.models import CausalLM

ATOL = 1e-5
CAPTURE = ("blocks.*.hook_resid_pre", "blocks.*.hook_resid_post", "blocks.*.attn.hook_pattern",
           "ln_final.hook_normalized")


def run_jax(model, params, ids, mask=None, position_ids=None):
    return jax_forward(model, params, ids, mask, position_ids, CAPTURE)


@pytest.mark.parametrize("case", list(CASES))
def test_forward_matches_hf(make_pair, case):
    """Logits, resid_pre/resid_post of every block, ln_final and attention patterns equal HF's
    on an unpadded batch (SEQ=20 exceeds llama3's original context and Mistral's window)."""
    hf, model, params, _ = make_pair(case)
    ids = random_ids(3, SEQ)
    ref = hf_forward(hf, ids)
    # an all-ones mask (same shapes as the padded tests, so the compiled program is shared)
    logits, cap = run_jax(model, params, ids, np.ones_like(ids))
    assert logits.dtype == np.float32
    n_layers = model.config.num_layers
    assert len(ref["hidden"]) == n_layers + 1
    assert_close(logits, ref["logits"], ATOL, "logits")
    for i in range(n_layers):
        assert_close(cap[f"blocks.{i}.hook_resid_pre"], ref["hidden"][i], ATOL, f"resid_pre {i}")
        assert_close(cap[f"blocks.{i}.hook_resid_post"], ref["block_out"][i], ATOL,
                     f"resid_post {i}")
        assert_close(cap[f"blocks.{i}.attn.hook_pattern"], ref["attn"][i], ATOL, f"pattern {i}")
    assert_close(cap["ln_final.hook_normalized"], ref["hidden"][n_layers], ATOL, "ln_final")
    # transformers 5: the last hidden state is normed, not the last block's raw output
    assert max_diff(ref["hidden"][n_layers], ref["block_out"][n_layers - 1]) > 1e-2
    # the comparison is only meaningful if the logits are not nearly constant
    assert np.std(ref["logits"]) > 0.1


def test_sliding_window_is_applied(make_pair):
    """The Mistral case really exercises the window: HF's patterns are zero beyond 4 keys back,
    and the logits differ from the same weights without a window."""
    hf, model, params, _ = make_pair("mistral_window")
    ids = random_ids(3, SEQ)
    pattern = hf_forward(hf, ids)["attn"][0][0]  # (H, T, S)
    q, k = np.indices(pattern.shape[1:])
    assert np.all(pattern[:, (q - k) >= 4] == 0)
    assert np.all(pattern[:, ((q - k) < 4) & (q >= k)] > 0)
    mask = np.ones_like(ids)
    windowed, _ = run_jax(model, params, ids, mask)
    unwindowed, _ = run_jax(CausalLM(model.config.replace(sliding_window=None)), params, ids, mask)
    assert max_diff(windowed, unwindowed) > 1e-2


def _real(cols_mask_row):
    return np.flatnonzero(cols_mask_row)


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("case", list(CASES))
def test_padded_batch_matches_unpadded_hf(make_pair, case, side):
    """With padding and an attention mask, every real token gets exactly what HF computes for
    that row alone, unpadded: logits, residual stream, final norm and attention patterns
    (restricted to real query rows and real key columns; pad keys get zero weight)."""
    hf, model, params, _ = make_pair(case)
    ids, mask, rows = padded_batch([SEQ, 14, 7], SEQ, side)
    logits, cap = run_jax(model, params, ids, mask)
    n_layers = model.config.num_layers
    for r, row in enumerate(rows):
        ref = hf_forward(hf, row[None])
        real = _real(mask[r])
        assert_close(logits[r, real], ref["logits"][0], ATOL, f"row {r} logits")
        for i in range(n_layers):
            assert_close(cap[f"blocks.{i}.hook_resid_pre"][r, real], ref["hidden"][i][0], ATOL,
                         f"row {r} resid_pre {i}")
            pat = cap[f"blocks.{i}.attn.hook_pattern"][r][:, real]  # (H, real queries, S)
            assert_close(pat[:, :, real], ref["attn"][i][0], ATOL, f"row {r} pattern {i}")
            pad_cols = np.flatnonzero(mask[r] == 0)
            assert np.all(pat[:, :, pad_cols] == 0), "pad keys must get zero attention"
        assert_close(cap["ln_final.hook_normalized"][r, real], ref["hidden"][n_layers][0], ATOL,
                     f"row {r} ln_final")


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("case", ["gpt2", "llama_gqa", "qwen2", "mistral_window"])
def test_padded_batch_matches_padded_hf(make_pair, case, side):
    """On the same padded batch, with HF given position_ids = clip(cumsum(mask) - 1, 0), the
    real tokens' logits, residual stream and attention rows (all key columns) agree."""
    hf, model, params, _ = make_pair(case)
    ids, mask, _ = padded_batch([SEQ, 14, 7], SEQ, side, seed=1)
    pos = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    ref = hf_forward(hf, ids, mask, pos)
    logits, cap = run_jax(model, params, ids, mask)
    real = mask.astype(bool)
    assert_close(logits[real], ref["logits"][real], ATOL, "logits")
    for i in range(model.config.num_layers):
        assert_close(cap[f"blocks.{i}.hook_resid_pre"][real], ref["hidden"][i][real], ATOL,
                     f"resid_pre {i}")
        jp = np.transpose(cap[f"blocks.{i}.attn.hook_pattern"], (0, 2, 1, 3))  # (B, T, H, S)
        hp = np.transpose(ref["attn"][i], (0, 2, 1, 3))
        assert_close(jp[real], hp[real], ATOL, f"pattern {i}")
