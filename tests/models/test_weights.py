"""Weight access and functional value-vector edits, for both families.

Each read is checked against the raw parameter path spelled out here (not the family
description it is read through) and against the model's behaviour: a value vector is what
one unit of a neuron's activation adds to ``hook_mlp_out``, the logit lens of the last
residual with the final norm is the model's logits, and a zeroed value vector is a
``NeuronScale(.., 0.0)`` ablation.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxreason.hooks import NeuronScale, Replace
from jaxreason.models import GPT2Config, LlamaConfig, from_config
from jaxreason.models.weights import (add_to_value_vectors, edit_value_vectors, final_norm,
                                      logit_lens, top_tokens, unembedding, value_norms,
                                      value_vectors, zero_neurons)
from jaxreason.train.lora import add_lora, merge_lora
from jaxreason.tree_utils import flatten, get_path

B, T = 3, 5
CONFIGS = {"gpt2": GPT2Config.tiny, "llama": LlamaConfig.tiny}
# Raw paths, written out independently of the family descriptions.
DOWN = {"gpt2": lambda i: (f"h_{i}", "mlp", "c_proj", "kernel"),
        "llama": lambda i: (f"layers_{i}", "mlp", "down_proj", "kernel")}
HEAD = {"gpt2": lambda p: p["wte"]["embedding"].T, "llama": lambda p: p["lm_head"]["kernel"]}


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def lm(request):
    model, params = from_config(CONFIGS[request.param](), seed=1)
    ids = jnp.asarray(np.random.RandomState(0).randint(0, 128, (B, T)), jnp.int32)
    return request.param, model, params, ids


def leaf(params, path):
    for key in path:
        params = params[key]
    return np.asarray(params)


def snapshot(params):
    return {k: np.array(v) for k, v in flatten(params).items()}


def assert_same_tree(params, snap):
    flat = flatten(params)
    assert flat.keys() == snap.keys()
    for k, v in flat.items():
        np.testing.assert_array_equal(np.asarray(v), snap[k], err_msg="/".join(k))


def close(a, b, scale=1.0):
    """Equal up to float32 rounding of terms of size ``scale``."""
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5 * scale)


# ----------------------------------------------------------------------------- reading

def test_reads_match_the_raw_parameter_paths(lm):
    fam, model, params, _ = lm
    np.testing.assert_array_equal(np.asarray(unembedding(model, params)), HEAD[fam](params))
    norms = []
    for i in range(model.config.num_layers):
        raw = leaf(params, DOWN[fam](i))  # (F, D): kernels are (in, out)
        np.testing.assert_array_equal(np.asarray(value_vectors(model, params, i)), raw)
        norms.append(np.sqrt((raw.astype(np.float64) ** 2).sum(-1)))
    got = value_norms(model, params)
    assert got.shape == (model.config.num_layers, model.config.intermediate_size)
    close(got, np.stack(norms))


def test_tied_llama_unembeds_with_its_embedding():
    model, params = from_config(LlamaConfig.tiny(tie_word_embeddings=True), seed=2)
    assert "lm_head" not in params
    np.testing.assert_array_equal(np.asarray(unembedding(model, params)),
                                  np.asarray(params["embed_tokens"]["embedding"]).T)


def test_value_vector_is_what_a_unit_activation_writes(lm):
    """Replacing ``mlp.hook_post`` by a one-hot at neuron i moves ``hook_mlp_out`` by v_i."""
    _, model, params, ids = lm
    layer, neurons = 1, np.array([0, 7, 100])
    F = model.config.intermediate_size
    post, out = f"blocks.{layer}.mlp.hook_post", f"blocks.{layer}.hook_mlp_out"
    onehot = jnp.broadcast_to(jax.nn.one_hot(neurons, F)[:, None, :], (B, T, F))
    hit = model.jit_apply(params, ids, capture={out},
                          interventions={post: Replace(onehot)}).captured[out]
    base = model.jit_apply(params, ids, capture={out},
                           interventions={post: Replace(jnp.zeros((B, T, F)))}).captured[out]
    vv = np.asarray(value_vectors(model, params, layer))
    expected = np.broadcast_to(vv[neurons][:, None, :], hit.shape)
    close(np.asarray(hit) - np.asarray(base), expected, scale=np.abs(vv).max())


def test_logit_lens_of_last_residual_is_the_logits(lm):
    _, model, params, ids = lm
    last = f"blocks.{model.config.num_layers - 1}.hook_resid_post"
    run = model.jit_apply(params, ids, capture={last, "ln_final.hook_normalized"})
    resid = run.captured[last]
    close(final_norm(model, params, resid), run.captured["ln_final.hook_normalized"],
          scale=float(jnp.abs(run.captured["ln_final.hook_normalized"]).max()))
    lens = logit_lens(model, params, resid, use_final_norm=True)
    assert lens.shape == run.logits.shape and lens.dtype == jnp.float32
    close(lens, run.logits, scale=float(jnp.abs(run.logits).max()))
    # Without the norm it is the plain projection onto the unembedding, here in float64.
    raw = np.asarray(resid, np.float64) @ np.asarray(unembedding(model, params), np.float64)
    close(logit_lens(model, params, resid), raw, scale=np.abs(raw).max())
    with pytest.raises(ValueError, match="model width"):
        logit_lens(model, params, jnp.zeros((2, 3)))


def test_top_tokens_against_numpy():
    logits = np.random.RandomState(3).randn(2, 4, 50).astype(np.float32)
    ids, probs = top_tokens(logits, 5)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    want = np.argsort(-p, axis=-1)[..., :5]
    np.testing.assert_array_equal(np.asarray(ids), want)
    close(probs, np.take_along_axis(p, want, -1))
    with pytest.raises(ValueError, match="k=0"):
        top_tokens(logits, 0)


# ----------------------------------------------------------------------------- editing

def test_edits_are_functional_and_equal_direct_edits(lm):
    fam, model, params, _ = lm
    snap = snapshot(params)
    D = model.config.hidden_size
    rng = np.random.RandomState(4)
    rows, noise = rng.randn(2, D).astype(np.float32), rng.randn(D).astype(np.float32)

    def direct(edit):  # the same edit in place on a numpy copy
        flat = {k: v.copy() for k, v in snap.items()}
        edit(flat)
        return flat

    def check(new, expected):
        assert_same_tree(params, snap)  # the input tree is unchanged
        assert_same_tree(new, expected)
        untouched = ("h_0", "attn", "c_attn", "kernel") if fam == "gpt2" else \
            ("layers_0", "self_attn", "q_proj", "kernel")
        assert flatten(new)[untouched] is flatten(params)[untouched]  # shared, not copied

    def set_rows(flat):
        flat[DOWN[fam](1)][[3, 9]] = rows

    check(edit_value_vectors(model, params, {1: ([3, 9], rows)}), direct(set_rows))

    def zero(flat):
        flat[DOWN[fam](0)][[5]] = 0
        flat[DOWN[fam](1)][[2, 8]] = 0

    check(zero_neurons(model, params, [(0, 5), (1, 2), (1, 8)]), direct(zero))
    check(zero_neurons(model, params, {0: [5], 1: np.array([2, 8])}), direct(zero))

    def add(flat):
        flat[DOWN[fam](1)][[4, 6]] += noise

    check(add_to_value_vectors(model, params, {1: [4, 6]}, noise), direct(add))

    def double(flat):
        for i in range(model.config.num_layers):
            flat[DOWN[fam](i)] *= 2

    doubled = edit_value_vectors(model, params, lambda layer, v: 2 * v)
    assert_same_tree(params, snap)
    assert_same_tree(doubled, direct(double))
    wrapped = zero_neurons(model, {"params": params}, {0: [1]})
    assert set(wrapped) == {"params"} and not leaf(wrapped["params"], DOWN[fam](0))[1].any()


def test_zeroed_value_vectors_equal_neuron_ablation(lm):
    _, model, params, ids = lm
    neurons = {0: np.array([3, 30]), 1: np.array([11])}
    edited = model.jit_apply(zero_neurons(model, params, neurons), ids).logits
    ablated = model.jit_apply(params, ids, interventions={
        f"blocks.{layer}.mlp.hook_post": NeuronScale(idx, 0.0)
        for layer, idx in neurons.items()}).logits
    plain = model.jit_apply(params, ids).logits
    assert float(jnp.abs(edited - plain).max()) > 1e-4  # the edit does something
    close(edited, ablated, scale=float(jnp.abs(plain).max()))


def test_lora_params_read_and_edit_the_effective_kernel(lm):
    fam, model, params, ids = lm
    lora = add_lora(params, model, ["mlp.*"], rank=4, rng=jax.random.PRNGKey(5))
    for n, (path, value) in enumerate(flatten(lora).items()):  # nonzero adapters matter
        if path[-1] == "lora_b":
            get_path(lora, path[:-1])["lora_b"] = 0.05 * jax.random.normal(
                jax.random.PRNGKey(n), value.shape)
    merged = merge_lora(lora)
    for i in range(model.config.num_layers):
        got, want = value_vectors(model, lora, i), value_vectors(model, merged, i)
        close(got, want, scale=float(jnp.abs(want).max()))
        assert float(jnp.abs(got - leaf(lora, DOWN[fam](i))).max()) > 1e-4
    snap = snapshot(lora)
    zeroed = zero_neurons(model, lora, {1: [2, 40]})
    assert_same_tree(lora, snap)
    np.testing.assert_array_equal(np.asarray(value_vectors(model, zeroed, 1))[[2, 40]], 0.0)
    edited = model.jit_apply(zeroed, ids).logits
    ablated = model.jit_apply(lora, ids, interventions={
        "blocks.1.mlp.hook_post": NeuronScale(np.array([2, 40]), 0.0)}).logits
    close(edited, ablated, scale=float(jnp.abs(ablated).max()))
    noise = jnp.full((model.config.hidden_size,), -1.0)
    noisy = add_to_value_vectors(model, lora, {0: [7]}, noise)
    delta = value_vectors(model, noisy, 0) - value_vectors(model, lora, 0)
    close(delta[7], noise)
    assert not np.asarray(jnp.delete(delta, 7, axis=0)).any()


def test_bad_edits_are_named(lm):
    _, model, params, _ = lm
    D, F, L = model.config.hidden_size, model.config.intermediate_size, model.config.num_layers
    with pytest.raises(ValueError, match=f"layer {L} is outside 0..{L - 1}"):
        value_vectors(model, params, L)
    with pytest.raises(ValueError, match=f"neuron {F} is outside 0..{F - 1}"):
        zero_neurons(model, params, {0: [1, F]})
    with pytest.raises(ValueError, match=r"expected \(2, %d\)" % D):
        edit_value_vectors(model, params, {0: ([1, 2], np.zeros((2, D + 1)))})
    with pytest.raises(ValueError, match="repeat a neuron"):
        edit_value_vectors(model, params, {0: ([1, 1], np.zeros((2, D)))})
    with pytest.raises(ValueError, match="does not broadcast"):
        add_to_value_vectors(model, params, {0: [1, 2]}, np.zeros(D + 1))
    with pytest.raises(ValueError, match="expected"):
        edit_value_vectors(model, params, lambda layer, v: v[:, :2])
