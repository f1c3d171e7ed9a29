"""The transplant on a random two-layer Llama (GQA) under left padding: the chooser's keys and
values in each window equal the arguer's, rotated at the chooser's positions, in every layer;
nothing else changes; gradients through the transplant match finite differences."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxreason.models.layers import apply_rope, rope_inv_freq
from jaxreason.studies.kv_transplant import adapters, batching, prompts, transplant as T
from jaxreason.tasks import cot_choice as cc


@pytest.fixture(scope="module")
def batch_and_items(world_tokenizer, world_items):
    items = [prompts.encode_item(world_tokenizer, it, "faithful", "world")
             for it in world_items[:3]]
    lengths = batching.shapes(items, 8)
    return batching.make_batch(items, [0, 1, 2], lengths, world_tokenizer.pad_token_id), items


def test_chooser_kv_in_the_window_are_the_arguers(tiny_llama, batch_and_items):
    model, params = tiny_llama
    batch, items = batch_and_items
    L = model.config.num_layers
    src = model.jit_apply(params, batch["arg_ids"], batch["arg_mask"],
                          capture={n: None for n in T.kv_hook_names(L)})
    rows = np.arange(len(batch["arg_ids"]))[:, None]
    captured = {n: np.asarray(src.captured[n])[rows, batch["arg_pos"]] for n in T.kv_hook_names(L)}
    edits = T.transplant_edits(captured, batch["ch_pos"])
    names = [f"blocks.{l}.attn.hook_{h}" for l in range(L) for h in ("k", "v", "rot_k")]
    got = model.jit_apply(params, batch["ch_ids"], batch["ch_mask"], interventions=edits,
                          capture=names).captured
    plain = model.jit_apply(params, batch["ch_ids"], batch["ch_mask"], capture=names).captured
    positions = np.maximum(np.cumsum(batch["ch_mask"], 1) - 1, 0)  # the chooser's position ids
    inv = rope_inv_freq(model.config)
    for b, item in enumerate(items):
        pad_c = batch["ch_ids"].shape[1] - len(item.chooser.ids)
        pad_a = batch["arg_ids"].shape[1] - len(item.arguers[0].ids)
        first = pad_c + item.chooser.windows[0][0]
        window = np.zeros(batch["ch_ids"].shape[1], bool)
        for j in range(2):
            (a0, n), = item.arguers[j].windows
            c0 = pad_c + item.chooser.windows[j][0]
            window[c0:c0 + n] = True
            for l in range(L):
                k_arg = np.asarray(src.captured[f"blocks.{l}.attn.hook_k"][2 * b + j])
                v_arg = np.asarray(src.captured[f"blocks.{l}.attn.hook_v"][2 * b + j])
                a = slice(pad_a + a0, pad_a + a0 + n) if j == 0 else slice(
                    batch["arg_ids"].shape[1] - len(item.arguers[1].ids) + a0,
                    batch["arg_ids"].shape[1] - len(item.arguers[1].ids) + a0 + n)
                c = slice(c0, c0 + n)
                np.testing.assert_array_equal(got[f"blocks.{l}.attn.hook_v"][b, c], v_arg[a])
                np.testing.assert_array_equal(got[f"blocks.{l}.attn.hook_k"][b, c], k_arg[a])
                rotated = apply_rope(jnp.asarray(k_arg[a])[None], jnp.asarray(
                    positions[b, c])[None], inv)[0]
                np.testing.assert_allclose(got[f"blocks.{l}.attn.hook_rot_k"][b, c], rotated,
                                           atol=1e-6 * float(np.abs(rotated).max()))
        for l in range(L):
            for h in ("k", "v"):
                name = f"blocks.{l}.attn.hook_{h}"
                # before the first window nothing can differ, in any layer
                np.testing.assert_array_equal(got[name][b, :first], plain[name][b, :first])
                if l == 0:  # layer 0's projections see only embeddings: only the window moves
                    np.testing.assert_array_equal(got[name][b, ~window], plain[name][b, ~window])
                else:  # deeper, the arguer's keys and values carry its own context
                    assert not np.allclose(got[name][b, window], plain[name][b, window])


def _random_adapters(model, params, seed):
    p = adapters.fresh_adapter(model, params, 4, 8.0, seed)
    trainable, frozen = adapters.split_trainable(p)
    leaves, tree = jax.tree_util.tree_flatten(trainable)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    leaves = [0.3 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)]
    return jax.tree_util.tree_unflatten(tree, leaves), frozen


def test_gradients_through_the_transplant_match_finite_differences(tiny_llama, batch_and_items):
    model, params = tiny_llama
    batch, _ = batch_and_items
    answer = (8, 9)
    arguer, frozen = _random_adapters(model, params, 1)
    chooser, _ = _random_adapters(model, params, 2)

    def loss(arg_lora, ch_lora, transplant=True):
        pair = (adapters.merge(arg_lora, frozen), adapters.merge(ch_lora, frozen))
        return T.transplant_loss(model, pair, batch, answer_ids=answer, transplant=transplant)[0]

    # two adapters, so each role's gradient is seen alone (the shared adapter's is their sum)
    value_and_grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))  # one compiled program
    _, (g_arg, g_ch) = value_and_grad(arguer, chooser)
    # the arguer's adapter reaches the loss only through the transplanted keys and values
    assert float(optax_norm(g_arg)) > 0
    f = lambda a, c: value_and_grad(a, c)[0]  # noqa: E731
    for grad, which in ((g_arg, 0), (g_ch, 1)):
        norm = float(optax_norm(grad))
        direction = jax.tree_util.tree_map(lambda g: g / norm, grad)  # unit length
        eps = 1e-2

        def at(t):
            moved = jax.tree_util.tree_map(lambda x, d: x + t * d, (arguer, chooser)[which],
                                           direction)
            return float(f(moved, chooser) if which == 0 else f(arguer, moved))

        numeric = (at(eps) - at(-eps)) / (2 * eps)
        analytic = sum(float(jnp.vdot(g, d)) for g, d in zip(
            jax.tree_util.tree_leaves(grad), jax.tree_util.tree_leaves(direction)))
        assert numeric == pytest.approx(analytic, rel=2e-2), (which, numeric, analytic)


def optax_norm(tree):
    return jnp.sqrt(sum(jnp.sum(x * x) for x in jax.tree_util.tree_leaves(tree)))


def test_shuffled_index_map_cycles_through_the_donor_window(batch_and_items):
    _, items = batch_and_items
    lengths = batching.shapes(items, 8)
    b = batching.make_batch(items, [0], lengths, 0, donors=[1])
    (a0, an), = items[1].arguers[0].windows
    pad_a = lengths[0] - len(items[1].arguers[0].ids)
    cn = items[0].chooser.windows[0][1]
    want = pad_a + a0 + np.minimum(np.arange(lengths[2]), cn - 1) % an
    np.testing.assert_array_equal(b["arg_pos"][0], want)
    assert set(batching.derangement(7, 0)) == set(range(7))
    assert all(batching.derangement(7, s)[i] != i for s in range(5) for i in range(7))
    assert cc.ChoiceItem  # the items come from the task module
