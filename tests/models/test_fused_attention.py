"""The fused attention path (``jax.nn.dot_product_attention``) against the explicit one.

``attention_impl="auto"`` takes the fused path in every layer whose scores and pattern no one
asked for; ``"explicit"`` always builds them. Both must agree with GQA, left padding, a
sliding window, plain causal calls (where the fused call builds its own causal mask) and
cached decoding, and the choice must follow the hooks requested, layer by layer.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxreason.hooks import Scale
from jaxreason.models import CausalLM, GPT2Config, LlamaConfig, from_config, layers, layout
from jaxreason.models.generate import generate

CONFIGS = {
    "gpt2": GPT2Config.tiny(),
    "llama_gqa_window": LlamaConfig.tiny(sliding_window=3),
}


@pytest.fixture(scope="module", params=list(CONFIGS))
def models(request):
    config = CONFIGS[request.param]
    fused, params = from_config(config, seed=2)
    return fused, CausalLM(config.replace(attention_impl="explicit")), params


def _close(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    np.testing.assert_allclose(a, b, atol=2e-5 * max(1.0, float(np.abs(b).max())))


def _batch(seed=0):
    ids = jnp.asarray(np.random.default_rng(seed).integers(1, 100, (3, 9)), jnp.int32)
    mask = jnp.asarray([[1] * 9, [0, 0, 0] + [1] * 6, [0] * 7 + [1] * 2], jnp.int32)
    return ids, mask


def test_paths_agree_on_forward(models):
    fused, explicit, params = models
    ids, mask = _batch()
    cap = {"blocks.*.hook_resid_post", "blocks.*.attn.hook_z"}
    for m in (mask, None):  # padded (explicit mask), and plain causal (is_causal)
        a = fused.jit_apply(params, ids, m, capture=cap)
        b = explicit.jit_apply(params, ids, m, capture=cap)
        real = np.ones(ids.shape, bool) if m is None else np.asarray(m, bool)
        _close(a.logits[real], b.logits[real])
        for name in b.captured:
            _close(a.captured[name][real], b.captured[name][real])


def test_paths_agree_on_decoding(models):
    fused, explicit, params = models
    if fused.family != "llama":
        pytest.skip("the cached path is the same code for both families; GQA is llama's")
    ids, mask = _batch(1)
    outs = [generate(m, params, ids, mask, max_new_tokens=5, capture="blocks.*.hook_resid_post")
            for m in (fused, explicit)]
    np.testing.assert_array_equal(outs[0].tokens, outs[1].tokens)
    for name in outs[1].captured:
        _close(outs[0].captured[name], outs[1].captured[name])


def test_fused_path_follows_the_hooks(models, monkeypatch):
    """Traced once per layer that needs no scores or pattern, never for layers that do;
    under scan (one body for all layers) only when no layer asks for them."""
    fused, explicit, params = models
    calls = []
    real = layers.fused_attention
    monkeypatch.setattr(layers, "fused_attention", lambda *a: calls.append(1) or real(*a))
    ids, _ = _batch()

    def trace(model, p, capture=None, edits=None):  # tracing decides the path: no compile
        jax.eval_shape(lambda q: model.apply(q, ids, capture=capture, interventions=edits), p)

    for capture, edits, want in ((None, None, 2), ({"blocks.1.attn.hook_pattern"}, None, 1),
                                 (None, {"blocks.0.attn.hook_attn_scores": Scale(0.5)}, 1)):
        calls.clear()
        trace(fused, params, capture, edits)
        assert len(calls) == want, (capture, edits)
    calls.clear()
    trace(explicit, params)
    assert not calls
    scanned = CausalLM(fused.config.replace(scan_layers=True))  # one body for every layer
    sp = layout.to_layout(scanned, params)
    for capture, want in ((None, True), ({"blocks.1.attn.hook_pattern"}, False)):
        calls.clear()
        trace(scanned, sp, capture)
        assert bool(calls) == want

