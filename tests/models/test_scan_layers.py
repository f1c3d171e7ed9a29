"""Blocks under scan (stacked parameters) compute what the unrolled blocks compute, hook for
hook: every capture under the same name with the same value, interventions only at their
layers, the KV cache and generation, gradients under every activation-checkpointing setting,
and checkpoints restoring across the two layouts.

The unrolled model is the reference here (its parity with ``transformers`` is tested in
``tests/models/parity``; the scanned layout's own is in ``test_scan_hf_parity.py``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxreason.hooks import Add, HeadMask, NeuronScale, Replace, TopK, Zero
from jaxreason.models import CausalLM, GPT2Config, LlamaConfig, from_config, layout
from jaxreason.models.generate import generate

L = 3


CONFIGS = {"gpt2": GPT2Config.tiny(num_layers=L),
           "llama": LlamaConfig.tiny(num_layers=L, sliding_window=4)}


@functools.lru_cache(maxsize=None)
def _pair(family: str):
    config = CONFIGS[family]
    model, params = from_config(config.replace(scan_layers=False), seed=1)
    scanned = CausalLM(config.replace(scan_layers=True))
    return model, params, scanned, layout.to_layout(scanned, params)


@pytest.fixture(params=list(CONFIGS))
def pair(request):
    """Both families: the unrolled model, its params, the scanned model, its params."""
    return _pair(request.param)


@pytest.fixture
def llama_pair():
    """One family for the costlier checks (GQA, RoPE, a sliding window; the block stack is
    the same code for both families)."""
    return _pair("llama")


def _batch():
    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(1, 100, (2, 7)), jnp.int32)
    mask = jnp.asarray([[0, 0, 1, 1, 1, 1, 1], [1] * 7], jnp.int32)  # left padding
    return ids, mask


def _edits(config):
    k, e = config.num_kv_heads, config.head_dim
    return {  # per-layer specs of different kinds; two K edits of one shape share a group
        "blocks.1.hook_resid_post": Replace(jnp.full((2, 2, config.hidden_size), 0.5),
                                            positions=jnp.array([3, 5])),
        "blocks.2.mlp.hook_post": NeuronScale(jnp.array([1, 5]), 0.0),
        "blocks.0.attn.hook_k": Add(jnp.ones((2, 1, k, e)), positions=jnp.array([[2], [4]])),
        "blocks.2.attn.hook_k": Add(-jnp.ones((2, 1, k, e)), positions=jnp.array([[3], [0]])),
        "blocks.*.attn.hook_z": HeadMask(jnp.array([1.0, 0.0, 1.0, 1.0])),
        "blocks.1.hook_attn_out": Zero(),
    }


def _assert_same(a, b, what):
    assert set(a) == set(b), (what, sorted(set(a) ^ set(b)))
    for name in a:
        for x, y in zip(jax.tree_util.tree_leaves(a[name]), jax.tree_util.tree_leaves(b[name])):
            x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
            assert x.shape == y.shape, (what, name, x.shape, y.shape)
            scale = max(1.0, float(np.abs(x).max()))
            np.testing.assert_allclose(y, x, atol=1e-5 * scale, err_msg=f"{what}: {name}")


def test_layouts_convert_both_ways(pair):
    model, params, scanned, sparams = pair
    assert "h_0" in params or "layers_0" in params
    scanned.check_params(sparams)
    leaf = jax.tree_util.tree_leaves(sparams[scanned.family == "gpt2" and "h" or "layers"])[0]
    assert leaf.shape[0] == L
    back = layout.to_layout(model, sparams)
    for x, y in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(back)):
        np.testing.assert_array_equal(x, y)
    with pytest.raises(ValueError, match="layout.to_layout"):
        scanned.check_params(params)


def test_every_hook_and_edit_matches_unrolled(pair):
    """All hooks captured (a TopK reduction and a positions request among them) with
    per-layer interventions: same names, same values, same logits."""
    model, params, scanned, sparams = pair
    ids, mask = _batch()
    capture = {n: None for n in model.hook_names}
    capture["blocks.1.mlp.hook_post"] = TopK(3)
    capture["blocks.2.hook_resid_pre"] = jnp.array([2, 6])
    edits = _edits(model.config)
    a, b = (jax.jit(lambda p, m=m: m.apply(p, ids, mask, capture=capture,
                                           interventions=edits))(p)
            for m, p in ((model, params), (scanned, sparams)))
    _assert_same(a.captured, b.captured, "captures")
    _assert_same({"logits": a.logits}, {"logits": b.logits}, "logits")


def test_edit_applies_only_at_its_layer(llama_pair):
    """A replacement at block 1 leaves block 0 as it was and changes block 2 (scanned)."""
    _, _, scanned, sparams = llama_pair
    ids, mask = _batch()
    cap = {"blocks.*.hook_resid_post"}
    plain = scanned.jit_apply(sparams, ids, mask, capture=cap).captured
    edit = {"blocks.1.hook_resid_post": Replace(jnp.zeros((2, 1, scanned.config.hidden_size)),
                                                positions=jnp.array([4]))}
    got = scanned.jit_apply(sparams, ids, mask, capture=cap, interventions=edit).captured
    np.testing.assert_array_equal(got["blocks.0.hook_resid_post"],
                                  plain["blocks.0.hook_resid_post"])
    np.testing.assert_array_equal(got["blocks.1.hook_resid_post"][:, 4], 0.0)
    assert np.abs(got["blocks.2.hook_resid_post"] - plain["blocks.2.hook_resid_post"]).max() > 1e-3


def test_bad_neuron_is_refused_under_scan(llama_pair):
    _, _, scanned, sparams = llama_pair
    ids, mask = _batch()
    width = scanned.config.intermediate_size
    edit = {"blocks.1.mlp.hook_post": NeuronScale(jnp.array([width]), 0.0)}
    with pytest.raises(ValueError, match="neuron"):
        scanned.apply(sparams, ids, mask, interventions=edit)
    with pytest.raises(ValueError, match="neuron"):
        scanned.jit_apply(sparams, ids, mask, interventions=edit)


def test_generation_with_cache_matches_unrolled(llama_pair):
    """Greedy decoding with captures at every slot and an edit at every step."""
    model, params, scanned, sparams = llama_pair
    ids, mask = _batch()
    cap = ("blocks.*.hook_resid_post", "blocks.1.attn.hook_pattern")
    edit = {"blocks.2.hook_mlp_out": Add(jnp.full((2, 1, model.config.hidden_size), 0.1),
                                        positions=jnp.array([2]))}
    outs = [generate(m, p, ids, mask, max_new_tokens=4, capture=cap, interventions=edit,
                     intervene_on="all") for m, p in ((model, params), (scanned, sparams))]
    np.testing.assert_array_equal(outs[0].tokens, outs[1].tokens)
    _assert_same(outs[0].captured, outs[1].captured, "generate captures")
    assert scanned.init_cache(2, 8).stacked and not model.init_cache(2, 8).stacked


def test_gradients_under_remat_match(llama_pair):
    """The gradient of a loss that reads a capture, through a Replace whose values train, is
    the same unrolled and scanned, with the block checkpointed or only its products kept."""
    model, params, _, _ = llama_pair
    ids, mask = _batch()
    values = jnp.full((2, 1, model.config.hidden_size), 0.3)

    def grad_of(m):
        def f(p, v):
            out = m.apply(p, ids, mask, capture={"blocks.2.hook_resid_mid"},
                          interventions={"blocks.1.hook_resid_pre": Replace(
                              v, positions=jnp.array([5]))})
            return jnp.mean(out.logits ** 2) + jnp.mean(out.captured["blocks.2.hook_resid_mid"])
        g_params, g_values = jax.jit(jax.grad(f, argnums=(0, 1)))(layout.to_layout(m, params),
                                                                  values)
        return layout.unrolled(model, g_params), g_values

    ref = grad_of(model)
    assert float(jnp.abs(ref[1]).max()) > 0  # the edit's values really get a gradient
    for scan, remat in ((False, "block"), (True, "dots")):  # scan without remat: above
        got = grad_of(CausalLM(model.config.replace(scan_layers=scan, remat=remat)))
        for x, y in zip(jax.tree_util.tree_leaves(ref), jax.tree_util.tree_leaves(got)):
            np.testing.assert_allclose(y, x, atol=1e-5 * max(1.0, float(jnp.abs(x).max())),
                                       err_msg=f"scan={scan} remat={remat}")


def test_checkpoint_restores_across_layouts(pair, tmp_path):
    """A state saved by the unrolled model restores into the scanned one and back."""
    from jaxreason.train.checkpoint import Checkpointer

    model, params, scanned, sparams = pair
    state = {"params": params, "opt": {"mu": params}, "step": jnp.asarray(3)}
    with Checkpointer(tmp_path / "u", save_every=1) as ck:
        ck.save(1, state, config={})
    target = {"params": sparams, "opt": {"mu": sparams}, "step": jnp.asarray(0)}
    with Checkpointer(tmp_path / "u", save_every=1,
                      convert=layout.checkpoint_conversion(scanned)) as ck:
        got = ck.restore(None, target)
        with pytest.raises(ValueError):  # without the conversion the structure is refused
            Checkpointer(tmp_path / "u", save_every=1).restore(None, target)
    for x, y in zip(jax.tree_util.tree_leaves(target), jax.tree_util.tree_leaves(got)):
        assert x.shape == y.shape
    for x, y in zip(jax.tree_util.tree_leaves(sparams), jax.tree_util.tree_leaves(got["params"])):
        np.testing.assert_array_equal(x, y)
    assert int(got["step"]) == 3


def test_deep_models_scan_by_default():
    assert LlamaConfig.tiny(num_layers=16).scanned
    assert not LlamaConfig.tiny(num_layers=15).scanned
    assert not LlamaConfig.tiny(num_layers=32, scan_layers=False).scanned
    with pytest.raises(ValueError, match="remat"):
        GPT2Config.tiny(remat="sometimes")


def test_weights_and_lora_work_on_stacked_blocks(llama_pair):
    """Value vectors, neuron edits and LoRA adapters read and write the stacked leaves as
    they do the per-layer ones."""
    from jaxreason.models import weights as W
    from jaxreason.train.lora import add_lora, merge_lora

    model, params, scanned, sparams = llama_pair
    np.testing.assert_array_equal(W.value_vectors(scanned, sparams, 2),
                                  W.value_vectors(model, params, 2))
    edits = {1: [3, 7], 2: [0]}
    got = layout.unrolled(model, W.zero_neurons(scanned, sparams, edits))
    for x, y in zip(jax.tree_util.tree_leaves(W.zero_neurons(model, params, edits)),
                    jax.tree_util.tree_leaves(got)):
        np.testing.assert_array_equal(x, y)
    adapted = add_lora(sparams, scanned, rank=2)
    node = adapted["layers"]["mlp"]["down_proj"]
    assert node["lora_a"].shape == (L, model.config.intermediate_size, 2)
    node["lora_b"] = jnp.full(node["lora_b"].shape, 0.05)  # make the adapters matter
    ids, mask = _batch()
    a = scanned.jit_apply(adapted, ids, mask).logits
    b = model.jit_apply(layout.unrolled(model, adapted), ids, mask).logits
    np.testing.assert_allclose(a, b, atol=1e-5)
    merged = scanned.jit_apply(merge_lora(adapted), ids, mask).logits
    np.testing.assert_allclose(merged, a, atol=1e-4)
    assert np.abs(a - scanned.jit_apply(sparams, ids, mask).logits).max() > 1e-3
