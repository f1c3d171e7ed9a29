"""New token embeddings (jaxreason.train.vocab) and training only their rows (masks)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxreason.models import CausalLM, GPT2Config, LlamaConfig
from jaxreason.train.lora import add_lora
from jaxreason.train.masks import freeze_old_rows, trainable_mask, trainable_optimizer
from jaxreason.train.vocab import add_tokens, resize_for_tokenizer
from train_utils import train_steps

CONFIGS = {"gpt2": GPT2Config.tiny(), "llama": LlamaConfig.tiny(),
           "llama_tied": LlamaConfig.tiny(tie_word_embeddings=True)}
V = 128
IDS = jnp.asarray(np.random.default_rng(0).integers(0, V, (2, 7)), jnp.int32)
EMBED = {"gpt2": "wte", "llama": "embed_tokens"}


@functools.lru_cache(maxsize=None)
def tiny(name):
    """A tiny model with numpy-drawn params (no Flax init to compile on a small CPU)."""
    model = CausalLM(CONFIGS[name])
    rng = np.random.default_rng(0)
    params = jax.tree_util.tree_map(
        lambda s: jnp.asarray((len(s.shape) == 1) + 0.1 * rng.standard_normal(s.shape), s.dtype),
        model.param_shapes())
    return model, params


def embed(model, params):
    return params[EMBED[model.family]]["embedding"]


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_old_logits_unchanged(name):
    model, params = tiny(name)
    new_model, new_params = add_tokens(model, params, 3)
    assert new_model.config.vocab_size == V + 3 and model.config.vocab_size == V
    assert embed(new_model, new_params).shape == (V + 3, 64)
    assert embed(model, params).shape == (V, 64)  # inputs untouched
    if "lm_head" in params:
        assert new_params["lm_head"]["kernel"].shape == (64, V + 3)
    else:
        assert "lm_head" not in new_params
    hook = "ln_final.hook_normalized"
    old = model.jit_apply(params, IDS, capture=[hook])
    new = new_model.jit_apply(new_params, IDS, capture=[hook])
    assert new.logits.shape == (2, 7, V + 3)
    # Everything up to the head is bit-identical; the head's matmul may tile a wider output
    # differently, which moves the last float bit of a few old logits.
    np.testing.assert_array_equal(new.captured[hook], old.captured[hook])
    np.testing.assert_allclose(new.logits[..., :V], old.logits, rtol=0, atol=1e-5)


def test_init_from_words_is_the_mean_row():
    model, params = tiny("llama")  # untied: head columns are initialised the same way
    table, head = embed(model, params), params["lm_head"]["kernel"]
    _, new = add_tokens(model, params, 3, init=[[1, 2, 3], [5], None])
    rows, cols = embed(model, new)[V:], new["lm_head"]["kernel"][:, V:]
    np.testing.assert_allclose(rows[0], table[jnp.array([1, 2, 3])].mean(0), atol=1e-6)
    np.testing.assert_array_equal(rows[1], table[5])
    np.testing.assert_allclose(rows[2], table.mean(0), atol=1e-6)
    np.testing.assert_allclose(cols[:, 0], head[:, jnp.array([1, 2, 3])].mean(1), atol=1e-6)
    np.testing.assert_array_equal(cols[:, 1], head[:, 5])
    _, mean = add_tokens(model, params, 2)
    np.testing.assert_allclose(embed(model, mean)[V:], np.tile(table.mean(0), (2, 1)), atol=1e-6)
    _, noisy = add_tokens(model, params, 2, rng=jax.random.PRNGKey(0))
    rows = embed(model, noisy)[V:]
    assert not np.array_equal(rows[0], rows[1])
    np.testing.assert_allclose(rows, np.tile(table.mean(0), (2, 1)), atol=0.01)


@pytest.mark.parametrize("kwargs,msg", [
    (dict(num_new=0), "positive"), (dict(num_new=True), "positive"),
    (dict(num_new=2, init=[[1]]), "one list"), (dict(num_new=1, init=[[]]), "empty"),
    (dict(num_new=1, init=[[V]]), "outside"), (dict(num_new=1, init="zeros"), "allowed"),
])
def test_add_tokens_errors(kwargs, msg):
    model, params = tiny("gpt2")
    with pytest.raises(ValueError, match=msg):
        add_tokens(model, params, **kwargs)


def test_add_tokens_refuses_params_of_another_size():
    model, params = tiny("gpt2")
    _, grown = add_tokens(model, params, 1)
    with pytest.raises(ValueError, match="rows"):
        add_tokens(model, grown, 1)


@pytest.fixture(scope="module")
def tokenizer():
    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    words = ["[UNK]", "think", "answer", "about", "it"] + [f"w{i}" for i in range(V - 5)]
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(
        {w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")
    assert len(tok) == V
    tok.add_tokens(["<think>", "</think>", "<answer>"])
    return tok


def test_resize_for_tokenizer(tokenizer):
    model, params = tiny("gpt2")
    new_model, new = resize_for_tokenizer(model, params, tokenizer,
                                          {"<think>": "think about", "<answer>": "answer"})
    assert new_model.config.vocab_size == len(tokenizer) == V + 3
    rows, table = embed(new_model, new), embed(model, params)
    np.testing.assert_allclose(rows[tokenizer.convert_tokens_to_ids("<think>")],
                               table[jnp.array([1, 3])].mean(0), atol=1e-6)
    np.testing.assert_array_equal(rows[V + 2], table[2])
    np.testing.assert_allclose(rows[V + 1], table.mean(0), atol=1e-6)  # no word: mean row
    same_model, same = resize_for_tokenizer(new_model, new, tokenizer)  # nothing left to grow
    assert same_model is new_model and same is new
    for words, msg in [({"<nope>": "think"}, "not in the tokenizer"),
                       ({"think": "answer"}, "already has a row"),
                       ({"<think>": "<answer>"}, "uses new tokens")]:
        with pytest.raises(ValueError, match=msg):
            resize_for_tokenizer(model, params, tokenizer, words)


train = train_steps


@pytest.mark.parametrize("name", ["gpt2", "llama"])  # tied head / untied head
def test_training_moves_only_new_rows(name):
    model, params = tiny(name)
    new_model, grown = add_tokens(model, params, 2)
    ids = IDS.at[:, 2].set(V).at[0, 4].set(V + 1)  # the new tokens appear in the input
    tx = trainable_optimizer(optax.adamw(1e-2, weight_decay=0.1), grown, "new-embeddings",
                             new_token_rows=V)
    trained, state = train(new_model, grown, tx, ids)
    vocab_leaves = {(EMBED[model.family], "embedding"): 0, ("lm_head", "kernel"): 1}
    for path, before in jax.tree_util.tree_flatten_with_path(grown)[0]:
        key = tuple(k.key for k in path)
        after = trained
        for k in key:
            after = after[k]
        if key not in vocab_leaves:
            np.testing.assert_array_equal(after, before, err_msg=str(key))
            continue
        axis, before, after = vocab_leaves[key], np.asarray(before), np.asarray(after)
        old, new = (np.take(a, np.arange(V), axis) for a in (before, after))
        np.testing.assert_array_equal(new, old, err_msg=str(key))  # old rows bit-identical
        moved = np.take(after, [V, V + 1], axis) != np.take(before, [V, V + 1], axis)
        assert moved.any(axis=1 - axis).all(), key  # every new row / column moved
    n_vocab = sum(grown[m][k].size
                  for m, k in vocab_leaves if m in grown)
    size = sum(x.size for x in jax.tree_util.tree_leaves(state) if hasattr(x, "size"))
    assert 2 * n_vocab <= size <= 2 * n_vocab + 8  # moments only for the vocabulary leaves


def test_new_embedding_masks_and_errors():
    model, params = tiny("llama")
    _, grown = add_tokens(model, params, 2)
    both = trainable_mask(add_lora(grown, "llama", ["q_proj"], rank=2),
                          "lora+new-embeddings", new_token_rows=V)
    on = {jax.tree_util.keystr(p) for p, v in jax.tree_util.tree_flatten_with_path(both)[0] if v}
    assert on == {"['embed_tokens']['embedding']", "['lm_head']['kernel']"} | {
        f"['layers_{i}']['self_attn']['q_proj']['lora_{x}']" for i in (0, 1) for x in "ab"}
    with pytest.raises(ValueError, match="add_tokens"):
        trainable_mask(params, "new-embeddings", new_token_rows=V)
    with pytest.raises(ValueError, match="new_token_rows"):
        trainable_optimizer(optax.sgd(0.1), grown, "new-embeddings")
    with pytest.raises(ValueError, match="none beyond"):
        freeze_old_rows(V).update(params, optax.EmptyState())
    with pytest.raises(ValueError, match="family"):
        freeze_old_rows(V, family="bert")
    # A family restricts which leaves count as vocabulary leaves.
    grads = jax.tree_util.tree_map(jnp.ones_like, grown)
    zeroed, _ = freeze_old_rows(V, "llama").update(grads, optax.EmptyState())
    assert not zeroed["embed_tokens"]["embedding"][:V].any()
    assert zeroed["embed_tokens"]["embedding"][V:].all()
    assert not zeroed["lm_head"]["kernel"][:, :V].any() and zeroed["norm"]["weight"].all()
