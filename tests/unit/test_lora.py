"""LoRA adapters (jaxreason.train.lora) and the LoRA training mask (jaxreason.train.masks)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from jaxreason.models import GPT2Config, LlamaConfig, from_config, save_pretrained
from jaxreason.train.lora import add_lora, lora_logical_axes, lora_paths, merge_lora
from jaxreason.train.masks import partitioned_optimizer, trainable_mask, trainable_optimizer

CONFIGS = {"gpt2": GPT2Config.tiny(), "llama": LlamaConfig.tiny()}
IDS = jnp.asarray(np.random.default_rng(0).integers(0, 128, (2, 7)), jnp.int32)


def _flat(tree):
    return {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _randomise_b(params, seed=1):
    """Nonzero lora_b so the adapters change the output."""
    def f(path, x):
        if jax.tree_util.keystr(path).endswith("['lora_b']"):
            key = jax.random.fold_in(jax.random.PRNGKey(seed), hash(jax.tree_util.keystr(path)) % 2**31)
            return 0.1 * jax.random.normal(key, x.shape)
        return x
    return jax.tree_util.tree_map_with_path(f, params)


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def base(request):
    model, params = from_config(CONFIGS[request.param], seed=0)
    return model, params, model.apply(params, IDS).logits


def test_step_zero_is_base_and_merge_matches(base):
    model, params, ref = base
    lora = add_lora(params, model.family, rank=4, alpha=8.0, rng=jax.random.PRNGKey(3))
    np.testing.assert_array_equal(model.apply(lora, IDS).logits, ref)
    assert "lora_a" not in params[next(iter(params))]  # the input tree is untouched
    tuned = _randomise_b(lora)
    out = model.apply(tuned, IDS).logits
    assert float(jnp.abs(out - ref).max()) > 1e-3
    merged = merge_lora(tuned)
    assert jax.tree_util.tree_structure(merged) == jax.tree_util.tree_structure(params)
    np.testing.assert_allclose(model.apply(merged, IDS).logits, out, atol=1e-5)


def test_targets_and_scale():
    model, params = from_config(GPT2Config.tiny())
    every = lora_paths(add_lora(params, "gpt2", rank=2))
    assert len(every) == 4 * 2  # c_attn, attn.c_proj, c_fc, mlp.c_proj per layer
    attn = lora_paths(add_lora(params, "gpt2", ["attn.c_proj"], rank=2))
    assert attn == [("h_0", "attn", "c_proj"), ("h_1", "attn", "c_proj")]
    assert len(lora_paths(add_lora(params, "gpt2", "c_proj", rank=2))) == 4
    assert lora_paths(add_lora(params, model, ["h_1/mlp/*"], rank=2)) == [
        ("h_1", "mlp", "c_fc"), ("h_1", "mlp", "c_proj")]
    node = add_lora(params, "gpt2", ["c_fc"], rank=4, alpha=12.0, dropout=0.1)["h_0"]["mlp"]["c_fc"]
    assert node["lora_a"].shape == (64, 4) and node["lora_b"].shape == (4, 256)
    assert node["lora_scale"].dtype == jnp.float32 and float(node["lora_scale"]) == 3.0
    assert np.isclose(float(node["lora_dropout"]), 0.1) and not np.any(node["lora_b"])


@pytest.mark.parametrize("family,target,hint", [
    ("gpt2", "q_proj", "allowed"), ("gpt2", "c_atn", "did you mean 'c_attn'"),
    ("llama", "lm_head", "allowed"), ("llama", "embed_tokens", "allowed"),
    ("gpt2", "mlp.c_attn", "allowed")])
def test_unknown_targets(family, target, hint):
    _, params = from_config(CONFIGS[family])
    with pytest.raises(ValueError, match=hint) as err:
        add_lora(params, family, [target])
    assert repr(target) in str(err.value)


def test_bad_arguments():
    _, params = from_config(GPT2Config.tiny())
    for kwargs, msg in [(dict(rank=0), "rank"), (dict(dropout=1.0), "dropout"),
                        (dict(family="bert"), "family")]:
        with pytest.raises(ValueError, match=msg):
            add_lora(params, **{"family": "gpt2", **kwargs})
    with pytest.raises(ValueError, match="already"):
        add_lora(add_lora(params, "gpt2"), "gpt2")


def test_dropout_only_with_rng():
    model, params = from_config(LlamaConfig.tiny())
    plain = _randomise_b(add_lora(params, "llama", rank=4, dropout=0.0))
    noisy = _randomise_b(add_lora(params, "llama", rank=4, dropout=0.5))
    ref = model.apply(plain, IDS).logits
    np.testing.assert_array_equal(model.apply(noisy, IDS).logits, ref)  # no rng: no dropout
    key = jax.random.PRNGKey(7)
    np.testing.assert_array_equal(model.apply(plain, IDS, dropout_rng=key).logits, ref)
    dropped = model.apply(noisy, IDS, dropout_rng=key).logits
    assert float(jnp.abs(dropped - ref).max()) > 1e-4


def test_lora_logical_axes():
    model, params = from_config(LlamaConfig.tiny())
    lora = add_lora(params, "llama", ["q_proj", "down_proj"], rank=4)
    axes = lora_logical_axes(model.logical_axes(), lora)
    assert jax.tree_util.tree_structure(axes, is_leaf=lambda x: isinstance(x, P)) == \
        jax.tree_util.tree_structure(lora)
    q = axes["layers_0"]["self_attn"]["q_proj"]
    assert q["lora_a"] == P("embed", None) and q["lora_b"] == P(None, "heads")
    assert q["lora_scale"] == P() and q["lora_dropout"] == P()
    assert axes["layers_1"]["mlp"]["down_proj"]["lora_b"] == P(None, "embed")
    assert axes["lm_head"]["kernel"] == P("embed", "vocab")


def _loss(model, params, ids):
    logits = model.apply(params, ids[:, :-1]).logits
    return optax.softmax_cross_entropy_with_integer_labels(logits, ids[:, 1:]).mean()


def _train(model, params, tx, steps=3):
    state = tx.init(params)

    @jax.jit
    def step(params, state):
        grads = jax.grad(lambda p: _loss(model, p, IDS))(params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    for _ in range(steps):
        params, state = step(params, state)
    return params, state


def _state_size(state):
    return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(state)
               if hasattr(x, "shape"))


def test_lora_training_moves_only_adapters(base):
    model, params, _ = base
    lora = add_lora(params, model.family, rank=4, dropout=0.1)
    mask = trainable_mask(lora, "lora")
    tx = partitioned_optimizer(optax.adamw(1e-2, weight_decay=0.1), mask)
    trained, state = _train(model, lora, tx)
    before, after, flags = _flat(lora), _flat(trained), _flat(mask)
    for name, value in before.items():
        changed = not np.array_equal(value, after[name])
        assert changed == flags[name], name  # trainable leaves move, all others bit-identical
        assert flags[name] == name.endswith(("['lora_a']", "['lora_b']"))
    n_train = sum(int(np.prod(v.shape)) for k, v in before.items() if flags[k])
    # Adam moments (mu, nu) for trainable leaves only, plus a few scalar counters.
    assert 2 * n_train <= _state_size(state) <= 2 * n_train + 8


def test_mask_modes_and_errors():
    model, params = from_config(GPT2Config.tiny())
    lora = add_lora(params, "gpt2", ["c_fc"], rank=2)
    everything = _flat(trainable_mask(lora, "all"))
    assert not any(v for k, v in everything.items() if "lora_scale" in k or "lora_dropout" in k)
    assert everything["['h_0']['attn']['c_attn']['kernel']"]
    norms = _flat(trainable_mask(params, "patterns", ["*/ln_*/*", "ln_f.weight"]))
    assert {k for k, v in norms.items() if v} == {
        f"['h_{i}']['ln_{j}']['{w}']" for i in (0, 1) for j in (1, 2) for w in ("bias", "weight")
    } | {"['ln_f']['weight']"}
    with pytest.raises(ValueError, match="allowed: .*'lora\\+new-embeddings'"):
        trainable_mask(params, "loar")
    with pytest.raises(ValueError, match="add_lora"):
        trainable_mask(params, "lora")
    with pytest.raises(ValueError, match="match no"):
        trainable_mask(params, "patterns", ["*/nothing/*"])
    with pytest.raises(ValueError, match="patterns"):
        trainable_mask(params, "all", ["*"])
    full = trainable_optimizer(optax.adam(1e-3), params, "all")
    assert _state_size(full.init(params)) >= 2 * sum(x.size for x in jax.tree_util.tree_leaves(params))


def test_merged_export_matches_transformers(base, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model, params, _ = base
    tuned = _randomise_b(add_lora(params, model.family, rank=4))
    out = model.apply(tuned, IDS).logits
    with pytest.raises(ValueError, match="merge"):
        save_pretrained(model, tuned, tmp_path / "unmerged")
    path = save_pretrained(model, merge_lora(tuned), tmp_path / "merged")
    hf = transformers.AutoModelForCausalLM.from_pretrained(path).eval()
    with torch.no_grad():
        ref = hf(torch.as_tensor(np.asarray(IDS), dtype=torch.long)).logits.numpy()
    np.testing.assert_allclose(ref, np.asarray(out), atol=1e-4)
