"""Capture and intervention semantics of the hook points, for both model families.

Every check compares against an independent computation (a weight edit, a second run, a
manual attention, finite differences), never against the machinery it tests.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from jaxreason.hooks import Add, Apply, HeadMask, NeuronScale, Replace, Scale, Zero, make_plan
from jaxreason.models import GPT2Config, LlamaConfig, from_config
from jaxreason.models.generate import generate
from jaxreason.models.layers import build_context

B, T = 2, 6
CONFIGS = {"gpt2": GPT2Config.tiny, "llama": LlamaConfig.tiny}
# parameter paths of the attention output and MLP down projections, kernels (in, out)
ATTN_OUT = {"gpt2": ("h_{i}", "attn", "c_proj", "kernel"),
            "llama": ("layers_{i}", "self_attn", "o_proj", "kernel")}
MLP_DOWN = {"gpt2": ("h_{i}", "mlp", "c_proj", "kernel"),
            "llama": ("layers_{i}", "mlp", "down_proj", "kernel")}


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def lm(request):
    model, params = from_config(CONFIGS[request.param](), seed=0)
    ids = jnp.asarray(np.random.RandomState(0).randint(0, 128, (B, T)), jnp.int32)
    clean = model.apply(params, ids, capture=set(model.hook_names))
    return model, params, ids, clean


def close(a, b, atol=1e-5):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=atol, rtol=1e-5)


def differs(a, b, by=1e-3):
    assert float(np.abs(np.asarray(a) - np.asarray(b)).max()) > by


def edit_param(params, template, layer, fn):
    flat = traverse_util.flatten_dict(params)
    path = tuple(p.format(i=layer) for p in template)
    flat[path] = fn(flat[path])
    return traverse_util.unflatten_dict(flat)


def pos_first(name, x):  # full hook value -> position-first layout
    return jnp.moveaxis(x, 2, 1) if name.endswith(("hook_pattern", "hook_attn_scores")) else x


# ----------------------------------------------------------------------------- capture

def expected_shape(name, c):
    h, k, e = c.num_heads, c.num_kv_heads, c.head_dim
    leaf = name.split(".")[-1]
    return {"hook_q": (B, T, h, e), "hook_rot_q": (B, T, h, e), "hook_k": (B, T, k, e),
            "hook_rot_k": (B, T, k, e), "hook_v": (B, T, k, e), "hook_z": (B, T, h, e),
            "hook_attn_scores": (B, h, T, T), "hook_pattern": (B, h, T, T),
            "hook_pre": (B, T, c.intermediate_size), "hook_pre_linear": (B, T, c.intermediate_size),
            "hook_post": (B, T, c.intermediate_size)}.get(leaf, (B, T, c.hidden_size))


def test_every_hook_captured_with_documented_shape(lm):
    model, _, _, clean = lm
    c = model.config
    per_block = 13 if model.family == "gpt2" else 16
    front = 2 if model.family == "gpt2" else 1
    assert len(model.hook_names) == front + per_block * c.num_layers + 1
    assert set(clean.captured) == set(model.hook_names)
    assert ("blocks.0.attn.hook_rot_q" in model.hook_names) == (model.family == "llama")
    assert ("hook_pos_embed" in model.hook_names) == (model.family == "gpt2")
    assert model.family == "gpt2" or c.num_kv_heads < c.num_heads  # tiny Llama has GQA
    for name in model.hook_names:
        assert clean.captured[name].shape == expected_shape(name, c), name
    pattern = np.asarray(clean.captured["blocks.1.attn.hook_pattern"])
    assert pattern.dtype == np.float32 and np.all(np.triu(pattern, 1) == 0)  # causal
    close(pattern.sum(-1), np.ones((B, c.num_heads, T)))


def test_capture_patterns_and_positions(lm):
    model, params, ids, clean = lm
    full = clean.captured
    out = model.apply(params, ids, capture={"blocks.*.hook_resid_post"})
    assert set(out.captured) == {f"blocks.{i}.hook_resid_post" for i in range(2)}
    for k, v in out.captured.items():
        np.testing.assert_array_equal(v, full[k])

    name = "blocks.1.hook_resid_post"
    got = model.apply(params, ids, capture={name: jnp.array([0, 3])}).captured[name]
    assert got.shape == (B, 2, model.config.hidden_size)
    np.testing.assert_array_equal(got, full[name][:, [0, 3]])

    per_ex = np.array([[0, 3], [5, 1]])
    got = model.jit_apply(params, ids, capture={name: per_ex}).captured[name]
    close(got, np.take_along_axis(np.asarray(full[name]), per_ex[:, :, None], axis=1))

    pat = "blocks.0.attn.hook_pattern"
    got = model.apply(params, ids, capture={pat: jnp.array([4, 1])}).captured[pat]
    assert got.shape == (B, 2, model.config.num_heads, T)  # (B, P, H, S)
    np.testing.assert_array_equal(got, np.moveaxis(np.asarray(full[pat])[:, :, [4, 1]], 2, 1))


def test_capturing_nothing_is_a_plain_forward(lm):
    model, params, ids, clean = lm

    def lowered(**kw):
        def f(p, x):  # same function name in every lowering, so the module names agree
            return model.apply(p, x, **kw)
        return jax.jit(f).lower(params, ids)

    def bare(p, x):  # the module alone, behind a context whose hook plan is empty
        ctx, *_ = build_context(make_plan(None, None, ()), x, None, None, None, None)
        return model.module.apply({"params": p}, ctx, x)

    plain = lowered()
    assert len(jax.tree_util.tree_leaves(plain.out_info)) == 1  # logits only
    text = plain.as_text().replace('"result.logits"', '"result"').replace("@jit_f", "@jit_bare")
    assert jax.jit(bare).lower(params, ids).as_text() == text
    for kw in (dict(capture=set()), dict(capture={}), dict(interventions={})):
        assert lowered(**kw).as_text() == plain.as_text()
    one = lowered(capture={"blocks.0.hook_resid_post": [1]})
    assert sorted(o.shape for o in jax.tree_util.tree_leaves(one.out_info)) == [
        (B, 1, model.config.hidden_size), (B, T, model.config.vocab_size)]
    # captures never change the logits, eager or jitted
    np.testing.assert_array_equal(model.apply(params, ids).logits, clean.logits)
    jitted = model.jit_apply(params, ids, capture=set(model.hook_names)).logits
    np.testing.assert_array_equal(model.jit_apply(params, ids).logits, jitted)


# ----------------------------------------------------------------------------- patching

def test_patching_own_values_changes_nothing(lm):
    model, params, ids, clean = lm
    full = {n: Replace(v) for n, v in clean.captured.items()}
    close(model.apply(params, ids, interventions=full).logits, clean.logits, atol=1e-6)
    at_all = {n: Replace(pos_first(n, v), positions=jnp.arange(T))
              for n, v in clean.captured.items()}
    close(model.apply(params, ids, interventions=at_all).logits, clean.logits, atol=1e-6)


def test_activation_patching_respects_causality(lm):
    model, params, ids_a, run_a = lm
    p = 3  # A and B share the prefix and differ only at token p
    ids_b = ids_a.at[:, p].set((ids_a[:, p] + 7) % 128)
    run_b = model.apply(params, ids_b, capture=set(model.hook_names))
    la, lb = run_a.logits, run_b.logits
    differs(la[:, p + 1:], lb[:, p + 1:])

    # the residual entering block 0 is the only place the token enters: patching it at p
    # turns run A into run B at every position
    name = "blocks.0.hook_resid_pre"
    out = model.apply(params, ids_a, interventions={
        name: Replace(run_b.captured[name][:, p:p + 1], positions=[p])})
    close(out.logits, lb)

    last = model.config.num_layers - 1
    for layer in range(last + 1):
        name = f"blocks.{layer}.hook_resid_post"
        out = model.apply(params, ids_a, capture={"blocks.*.hook_resid_post"}, interventions={
            name: Replace(run_b.captured[name][:, p:p + 1], positions=[p])})
        close(out.logits[:, :p + 1], lb[:, :p + 1])  # earlier positions and p itself: B
        for later in range(layer, last + 1):
            key = f"blocks.{later}.hook_resid_post"
            close(out.captured[key][:, p], run_b.captured[key][:, p])
        # later positions attended to A's token at p in blocks <= layer: not B
        differs(out.logits[:, p + 1:], lb[:, p + 1:])
        if layer == last:  # nothing reads the last residual across positions
            close(out.logits[:, p + 1:], la[:, p + 1:])
        else:
            differs(out.logits[:, p + 1:], la[:, p + 1:])


def test_neuron_ablation_matches_weight_edit(lm):
    model, params, ids, clean = lm
    fam, n1, n2, name = model.family, 5, 17, "blocks.0.mlp.hook_post"

    def scaled_rows(rows, factors):
        return edit_param(params, MLP_DOWN[fam], 0, lambda k: k.at[jnp.asarray(rows)].multiply(
            jnp.asarray(factors)[:, None]))

    out = model.apply(params, ids, capture={name},
                      interventions={name: NeuronScale(neurons=[n1], factor=0.0)})
    differs(out.logits, clean.logits, by=1e-5)
    close(out.logits, model.apply(scaled_rows([n1], [0.0]), ids).logits)
    post = np.asarray(out.captured[name])
    assert np.all(post[..., n1] == 0)
    np.testing.assert_array_equal(np.delete(post, n1, -1),
                                  np.delete(np.asarray(clean.captured[name]), n1, -1))

    out = model.apply(params, ids, interventions={
        name: NeuronScale(neurons=[n1, n2], factor=jnp.array([0.5, 2.0]))})
    close(out.logits, model.apply(scaled_rows([n1, n2], [0.5, 2.0]), ids).logits)

    per_ex = model.apply(params, ids, interventions={
        name: NeuronScale(neurons=jnp.array([[n1], [n2]]), factor=0.0)}).logits
    for r, n in enumerate((n1, n2)):
        close(per_ex[r], model.apply(scaled_rows([n], [0.0]), ids).logits[r])


@pytest.mark.parametrize("hook", ["hook_pattern", "hook_z"])
def test_head_mask_matches_output_projection_edit(lm, hook):
    model, params, ids, clean = lm
    fam, e, layer = model.family, model.config.head_dim, 1
    name = f"blocks.{layer}.attn.{hook}"

    def masked_weights(mask):
        scale = jnp.repeat(jnp.asarray(mask, jnp.float32), e)[:, None]  # rows h*E:(h+1)*E
        return edit_param(params, ATTN_OUT[fam], layer, lambda k: k * scale)

    mask = [1.0, 0.0, 1.0, 0.5]
    out = model.apply(params, ids, interventions={name: HeadMask(mask)})
    differs(out.logits, clean.logits, by=1e-5)
    close(out.logits, model.apply(masked_weights(mask), ids).logits)

    masks = jnp.array([[0.0, 1.0, 1.0, 1.0], [1.0, 1.0, 0.0, 1.0]])  # (B, H)
    out = model.apply(params, ids, interventions={name: HeadMask(masks)})
    for r in range(B):
        close(out.logits[r], model.apply(masked_weights(masks[r]), ids).logits[r])


def test_gradients_through_replace(lm):
    model, params, ids, clean = lm
    name, pos = "blocks.0.hook_resid_post", [2]
    w = jax.random.normal(jax.random.PRNGKey(1), (B, model.config.vocab_size))

    def loss(values):
        out = model.apply(params, ids, interventions={name: Replace(values, positions=pos)})
        return jnp.sum(out.logits[:, -1] * w)

    # one jit(vmap(value_and_grad)) program: it gives the gradient at two replacement values
    # and the losses at their +-eps bumps, for central differences on the largest coordinates
    step = jax.jit(jax.vmap(jax.value_and_grad(loss)))
    v0 = clean.captured[name][:, 2:3]
    base = jnp.stack([v0, v0 + 0.5 * jax.random.normal(jax.random.PRNGKey(2), v0.shape)])
    vals, grads = step(base)
    # replacing with the run's own value: the clean loss. The loss is a near-cancelling sum
    # of B*V terms, so the bound follows the size of those terms, not of the total.
    terms = np.asarray(clean.logits[:, -1] * w)
    np.testing.assert_allclose(vals[0], terms.sum(), rtol=0, atol=1e-5 * np.abs(terms).sum())
    grads = np.asarray(grads)
    assert np.abs(grads).max() > 1e-2
    eps, top = 1e-3, np.argsort(-np.abs(grads).reshape(2, -1), axis=1)[:, :3]
    idxs = [(k,) + np.unravel_index(f, v0.shape) for k in range(2) for f in top[k]]
    bumps = jnp.stack([base[i[0]].at[i[1:]].add(s * eps) for i in idxs for s in (1, -1)])
    bumped = np.asarray(step(bumps)[0], np.float64)
    fd = (bumped[0::2] - bumped[1::2]) / (2 * eps)
    np.testing.assert_allclose(fd, [grads[i] for i in idxs], rtol=1e-2, atol=1e-3)


# ----------------------------------------------------------------------------- K/V transplant

def test_kv_transplant(lm):
    model, params, ids_a, run_a = lm
    c = model.config
    ka, va = (run_a.captured[f"blocks.0.attn.hook_{x}"] for x in "kv")
    same = model.apply(params, ids_a, interventions={  # own keys and values: no change
        "blocks.0.attn.hook_k": Replace(ka), "blocks.0.attn.hook_v": Replace(va)})
    np.testing.assert_array_equal(same.logits, run_a.logits)

    ids_b = jnp.asarray(np.random.RandomState(1).randint(0, 128, (B, T)), jnp.int32)
    clean_b = model.apply(params, ids_b).logits
    q = 3
    out = model.apply(params, ids_b, interventions={
        "blocks.0.attn.hook_k": Replace(ka[:, q:], positions=jnp.arange(q, T)),
        "blocks.0.attn.hook_v": Replace(va[:, q:], positions=jnp.arange(q, T))}).logits
    np.testing.assert_array_equal(out[:, :q], clean_b[:, :q])
    differs(out[:, q:], clean_b[:, q:])

    # layer 1 with all of A's keys and values: z is B's queries attending over A's keys/values
    k1, v1 = (run_a.captured[f"blocks.1.attn.hook_{x}"] for x in "kv")
    rot = "rot_" if model.family == "llama" else ""
    out = model.apply(params, ids_b, capture={f"blocks.1.attn.hook_{rot}q", "blocks.1.attn.hook_z"},
                      interventions={"blocks.1.attn.hook_k": Replace(k1),
                                     "blocks.1.attn.hook_v": Replace(v1)})
    qb = np.asarray(out.captured[f"blocks.1.attn.hook_{rot}q"])
    kr = np.asarray(run_a.captured[f"blocks.1.attn.hook_{rot}k"])  # same positions as B's
    heads = np.arange(c.num_heads) // c.num_kv_groups
    scores = np.einsum("bthe,bshe->bhts", qb, kr[:, :, heads]) / np.sqrt(c.head_dim)
    scores = np.where(np.tril(np.ones((T, T), bool)), scores, -np.inf)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    z = np.einsum("bhts,bshe->bthe", probs, np.asarray(v1)[:, :, heads])
    close(out.captured["blocks.1.attn.hook_z"], z)


# ----------------------------------------------------------------------------- edit kinds

def test_add_scale_zero_apply_at_positions(lm):
    model, params, ids, clean = lm
    name = "blocks.0.hook_resid_mid"
    x = np.asarray(clean.captured[name])
    v = np.asarray(jax.random.normal(jax.random.PRNGKey(3), (B, 2, x.shape[-1])))

    def edited(spec):  # captures come after the edit at the same site
        return np.asarray(model.apply(params, ids, capture={name},
                                      interventions={name: spec}).captured[name])

    def expect(index, fn):
        want = x.copy()
        want[index] = fn(want[index])
        return want

    every = slice(None)
    close(edited(Add(v, positions=[1, 4])), expect((every, [1, 4]), lambda w: w + v))
    pos = np.array([[0, 2], [5, 1]])  # per example
    close(edited(Add(v, positions=pos)), expect((np.arange(B)[:, None], pos), lambda w: w + v))
    close(edited(Scale(3.0, positions=[2])), expect((every, 2), lambda w: 3 * w))
    close(edited(Scale(0.5)), 0.5 * x)
    np.testing.assert_array_equal(edited(Zero(positions=[[1], [3]])),
                                  expect(([0, 1], [1, 3]), lambda w: 0 * w))
    # values (1, P, D) broadcast over the batch
    close(edited(Replace(v[:1, :1], positions=[4])), expect((every, 4), lambda w: v[0, 0]))

    doubled = model.apply(params, ids, interventions={name: Apply(lambda y, s: 2 * y)}).logits
    close(doubled, model.apply(params, ids, interventions={name: Scale(2.0)}).logits)
    differs(doubled, clean.logits, by=1e-5)
    by_slot = Apply(lambda y, s, a: jnp.where((s == 2)[None, :, None], y * a, y), args=0.0)
    close(edited(by_slot), edited(Zero(positions=[2])))


def test_interventions_under_left_padding(lm):
    model, params, ids, clean = lm
    pad = 2  # row 0: its first T - pad tokens, left-padded; causality makes the clean run of
    # the full row the reference for those tokens (and keeps every array (B, T): no recompiles)
    padded = ids.at[0].set(jnp.concatenate([jnp.zeros(pad, jnp.int32), ids[0, : T - pad]]))
    mask = jnp.ones((B, T), jnp.int32).at[0, :pad].set(0)
    close(model.apply(params, padded, mask).logits[0, pad:], clean.logits[0, : T - pad])

    name, col = "blocks.0.hook_resid_post", 3  # column 3 of row 0 holds its token 1
    v = jax.random.normal(jax.random.PRNGKey(4), (B, 1, model.config.hidden_size))
    out = model.apply(params, padded, mask, interventions={name: Add(v, positions=[col])}).logits
    ref = model.apply(params, ids, interventions={
        name: Add(v, positions=jnp.array([[col - pad], [col]]))}).logits
    close(out[0, pad:], ref[0, : T - pad])
    close(out[1], ref[1])
    differs(ref[0, col - pad:], clean.logits[0, col - pad:], by=1e-5)
    close(ref[0, : col - pad], clean.logits[0, : col - pad])


# ----------------------------------------------------------------------------- generation

def test_generation_intervene_on_prefill_vs_all(lm):
    model, params, ids, _ = lm
    tp, n_new, name = 2, T - 2, "blocks.0.hook_resid_post"  # prompt + generated = T tokens
    vec = 2.0 * jax.random.normal(jax.random.PRNGKey(5), (model.config.hidden_size,))
    iv = {name: Add(vec)}
    gen = {on: generate(model, params, ids[:, :tp], max_new_tokens=n_new, interventions=iv,
                        intervene_on=on, capture=["blocks.1.hook_resid_post"])
           for on in ("prefill", "all")}
    # prefill-only == a full forward that adds vec at the prompt's slots only (then clean)
    prompt_only = {name: Add(jnp.broadcast_to(vec, (1, tp, vec.shape[0])),
                             positions=jnp.arange(tp))}
    for on, spec in (("prefill", prompt_only), ("all", iv)):
        logits = model.apply(params, gen[on].tokens, interventions=spec).logits  # (B, T, V)
        np.testing.assert_array_equal(gen[on].generated, jnp.argmax(logits[:, tp - 1:-1], -1))
    a, b = (np.asarray(gen[on].captured["blocks.1.hook_resid_post"]) for on in ("prefill", "all"))
    assert a.shape == b.shape == (B, T, model.config.hidden_size)  # prompt then generated
    close(a[:, :tp], b[:, :tp])  # identical prefill
    differs(a[:, tp:], b[:, tp:])  # the generated slots saw vec only with "all"
