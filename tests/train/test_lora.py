"""LoRA adapters (jaxreason.train.lora) and the LoRA training mask (jaxreason.train.masks).

Compilation dominates on a small CPU, so models and adapted trees are built once per module,
params are drawn with numpy (no Flax init to compile) and every forward pass is jitted.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from jaxreason.models import CausalLM, GPT2Config, LlamaConfig, save_pretrained
from jaxreason.train.lora import add_lora, lora_logical_axes, lora_paths, merge_lora
from jaxreason.train.masks import partitioned_optimizer, trainable_mask, trainable_optimizer
from train_utils import train_steps

CONFIGS = {"gpt2": GPT2Config.tiny(), "llama": LlamaConfig.tiny()}
IDS = jnp.asarray(np.random.default_rng(0).integers(0, 128, (2, 7)), jnp.int32)
RANK = 4  # one rank everywhere, so the adapter init compiles once per shape


def random_params(model, seed=0):
    """Spread-out weights, norm scales near 1 and nonzero biases, so every parameter matters."""
    rng = np.random.default_rng(seed)

    def draw(path, spec):
        if len(spec.shape) == 1:
            one = jax.tree_util.keystr(path).endswith("['weight']")
            return jnp.asarray(one + 0.2 * rng.standard_normal(spec.shape), spec.dtype)
        return jnp.asarray(0.1 * rng.standard_normal(spec.shape), spec.dtype)

    return jax.tree_util.tree_map_with_path(draw, model.param_shapes())


@functools.lru_cache(maxsize=None)
def tiny(family):
    model = CausalLM(CONFIGS[family])
    return model, random_params(model)


@functools.lru_cache(maxsize=None)
def adapted(family):
    """(fresh adapters, adapters with random lora_b) on every LoRA-able module."""
    model, params = tiny(family)
    lora = add_lora(params, family, rank=RANK, alpha=8.0, dropout=0.1, rng=jax.random.PRNGKey(3))
    rng = np.random.default_rng(1)
    tuned = jax.tree_util.tree_map_with_path(
        lambda p, x: jnp.asarray(0.1 * rng.standard_normal(x.shape), x.dtype)
        if jax.tree_util.keystr(p).endswith("['lora_b']") else x, lora)
    return lora, tuned


@functools.lru_cache(maxsize=None)
def _dropout_forward(model):
    return jax.jit(lambda p, k: model.apply(p, IDS, dropout_rng=k).logits)


def logits(model, params, dropout_rng=None):
    if dropout_rng is None:
        return model.jit_apply(params, IDS).logits
    return _dropout_forward(model)(params, dropout_rng)


def flat(tree):
    return {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def family(request):
    return request.param


def test_step_zero_is_base_and_merge_matches(family):
    model, params = tiny(family)
    lora, tuned = adapted(family)
    ref = logits(model, params)
    np.testing.assert_array_equal(logits(model, lora), ref)  # lora_b = 0: exactly the base
    assert all("lora_a" not in k for k in flat(params))  # the input tree is untouched
    out = logits(model, tuned)
    assert float(jnp.abs(out - ref).max()) > 1e-3
    merged = merge_lora(tuned)
    assert jax.tree_util.tree_structure(merged) == jax.tree_util.tree_structure(params)
    np.testing.assert_allclose(logits(model, merged), out, atol=1e-5)
    assert "lm_head" not in {p[0] for p in lora_paths(lora)}


def test_targets_and_scale():
    model, params = tiny("gpt2")
    assert len(lora_paths(adapted("gpt2")[0])) == 4 * 2  # c_attn, attn.c_proj, c_fc, mlp.c_proj
    attn = lora_paths(add_lora(params, "gpt2", ["attn.c_proj"], rank=RANK))
    assert attn == [("h_0", "attn", "c_proj"), ("h_1", "attn", "c_proj")]
    assert len(lora_paths(add_lora(params, "gpt2", "c_proj", rank=RANK))) == 4
    assert lora_paths(add_lora(params, model, ["h_1/mlp/*"], rank=RANK)) == [
        ("h_1", "mlp", "c_fc"), ("h_1", "mlp", "c_proj")]
    one = add_lora(params, "gpt2", ["c_fc"], rank=RANK, alpha=12.0, dropout=0.1)
    node = one["h_0"]["mlp"]["c_fc"]
    assert node["lora_a"].shape == (64, RANK) and node["lora_b"].shape == (RANK, 256)
    assert node["lora_scale"].dtype == jnp.float32 and float(node["lora_scale"]) == 3.0
    assert np.isclose(float(node["lora_dropout"]), 0.1) and not np.any(node["lora_b"])
    assert 0 < float(jnp.abs(node["lora_a"]).max()) <= 1 / 8  # U(-1/sqrt(in), 1/sqrt(in))


@pytest.mark.parametrize("family_,target,hint", [
    ("gpt2", "q_proj", "allowed"), ("gpt2", "c_atn", "did you mean 'c_attn'"),
    ("llama", "lm_head", "allowed"), ("llama", "embed_tokens", "allowed"),
    ("gpt2", "mlp.c_attn", "allowed")])
def test_unknown_targets(family_, target, hint):
    with pytest.raises(ValueError, match=hint) as err:
        add_lora(tiny(family_)[1], family_, [target])
    assert repr(target) in str(err.value)


def test_bad_arguments():
    _, params = tiny("gpt2")
    for kwargs, msg in [(dict(rank=0), "rank"), (dict(dropout=1.0), "dropout"),
                        (dict(family="bert"), "family"), (dict(targets=[]), "empty")]:
        with pytest.raises(ValueError, match=msg):
            add_lora(params, **{"family": "gpt2", **kwargs})
    with pytest.raises(ValueError, match="already"):
        add_lora(adapted("gpt2")[0], "gpt2")
    merged = merge_lora(adapted("gpt2")[1])  # a tree without adapters merges to itself
    assert jax.tree_util.tree_structure(merge_lora(merged)) == jax.tree_util.tree_structure(params)


def test_dropout_only_with_rng():
    model, _ = tiny("llama")
    tuned = adapted("llama")[1]
    rate = lambda r: jax.tree_util.tree_map_with_path(  # noqa: E731
        lambda p, x: jnp.asarray(r, jnp.float32)
        if jax.tree_util.keystr(p).endswith("['lora_dropout']") else x, tuned)
    plain, noisy = rate(0.0), rate(0.5)
    ref = logits(model, plain)
    np.testing.assert_array_equal(logits(model, noisy), ref)  # no rng: no dropout
    key = jax.random.PRNGKey(7)
    np.testing.assert_array_equal(logits(model, plain, key), ref)  # rate 0: the identity
    dropped = logits(model, noisy, key)
    assert float(jnp.abs(dropped - ref).max()) > 1e-4
    assert not np.array_equal(logits(model, noisy, jax.random.PRNGKey(8)), dropped)


def test_lora_logical_axes():
    model, _ = tiny("llama")
    lora = adapted("llama")[0]
    axes = lora_logical_axes(model.logical_axes(), lora)
    assert jax.tree_util.tree_structure(axes, is_leaf=lambda x: isinstance(x, P)) == \
        jax.tree_util.tree_structure(lora)
    q = axes["layers_0"]["self_attn"]["q_proj"]
    assert q["lora_a"] == P("embed", None) and q["lora_b"] == P(None, "heads")
    assert q["lora_scale"] == P() and q["lora_dropout"] == P()
    assert axes["layers_1"]["mlp"]["down_proj"]["lora_b"] == P(None, "embed")
    assert axes["lm_head"]["kernel"] == P("embed", "vocab")


def train(model, params, tx, steps=3):
    """A few jitted AdamW steps of next-token cross-entropy on IDS."""
    return train_steps(model, params, tx, IDS, steps)


def state_size(state):
    return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(state)
               if hasattr(x, "shape"))


def test_lora_training_moves_only_adapters():
    model, _ = tiny("llama")  # the mask logic is family-independent; one compile is enough
    lora = adapted("llama")[0]
    mask = trainable_mask(lora, "lora")
    tx = partitioned_optimizer(optax.adamw(1e-2, weight_decay=0.1), mask)
    trained, state = train(model, lora, tx)
    before, after, flags = flat(lora), flat(trained), flat(mask)
    for name, value in before.items():
        assert flags[name] == name.endswith(("['lora_a']", "['lora_b']")), name
        # trainable leaves move; every other leaf (base kernels, scalars) is bit-identical
        assert (not np.array_equal(value, after[name])) == flags[name], name
    n_train = sum(int(np.prod(v.shape)) for k, v in before.items() if flags[k])
    # Adam moments (mu, nu) for trainable leaves only, plus a few scalar counters.
    assert 2 * n_train <= state_size(state) <= 2 * n_train + 8


def test_mask_modes_and_errors():
    _, params = tiny("gpt2")
    everything = flat(trainable_mask(adapted("gpt2")[0], "all"))
    assert not any(v for k, v in everything.items() if "lora_scale" in k or "lora_dropout" in k)
    assert everything["['h_0']['attn']['c_attn']['kernel']"]
    norms = flat(trainable_mask(params, "patterns", ["*/ln_*/*", "ln_f.weight"]))
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
    n_all = sum(x.size for x in jax.tree_util.tree_leaves(params))
    assert state_size(full.init(params)) >= 2 * n_all


def test_merged_export_matches_transformers(family, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model, _ = tiny(family)
    tuned = adapted(family)[1]
    with pytest.raises(ValueError, match="merge"):
        save_pretrained(model, tuned, tmp_path / "unmerged")
    path = save_pretrained(model, merge_lora(tuned), tmp_path / "merged")
    hf = transformers.AutoModelForCausalLM.from_pretrained(path).eval()
    with torch.no_grad():
        ref = hf(torch.tensor(np.asarray(IDS), dtype=torch.long)).logits.numpy()
    np.testing.assert_allclose(ref, np.asarray(logits(model, tuned)), atol=1e-4)
