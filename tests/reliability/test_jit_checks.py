"""Index checks hold when the arrays are traced.

``jit_apply`` and ``generate`` stage them into the compiled program (checkify) and raise a
``ValueError`` naming the bad value and the allowed range; ``checked_apply`` returns the error
for a caller's own ``jax.jit``. The values of the checked program equal ``apply``'s.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxreason.hooks import NeuronScale, TopK, Zero
from jaxreason.models import GPT2Config, LlamaConfig, from_config
from jaxreason.models.generate import generate
from jaxreason.runtime_checks import raise_if_failed

B, T = 2, 6


@pytest.fixture(scope="module")
def llama():
    model, params = from_config(LlamaConfig.tiny(), seed=0)
    ids = jnp.asarray(np.random.RandomState(0).randint(0, 128, (B, T)), jnp.int32)
    return model, params, ids


@pytest.fixture(scope="module")
def user_jit(llama):
    """A caller's own jit of ``checked_apply`` (capture static), raising afterwards."""
    model, _, _ = llama
    fn = jax.jit(lambda p, i, iv, cap: model.checked_apply(p, i, interventions=iv, capture=cap))

    def call(params, ids, interventions=None, capture=None):
        err, out = fn(params, ids, interventions, capture)
        raise_if_failed(err)
        return out
    return call


def test_token_id_past_the_vocabulary_raises_under_jit_apply(llama):
    model, params, ids = llama
    with pytest.raises(ValueError, match=r"^token id 128 is outside the vocabulary 0\.\.127$"):
        model.jit_apply(params, ids.at[1, 3].set(128))
    with pytest.raises(ValueError, match=r"token id -1 is outside the vocabulary"):
        model.jit_apply(params, ids.at[0, 0].set(-1))


def test_neuron_past_the_mlp_width_raises_under_jit_apply(llama):
    model, params, ids = llama
    f = model.config.intermediate_size
    with pytest.raises(ValueError, match=rf"intervention at 'blocks\.0\.mlp\.hook_post': neuron "
                                         rf"{f} is outside 0\.\.{f - 1}"):
        model.jit_apply(params, ids, interventions={
            "blocks.0.mlp.hook_post": NeuronScale(jnp.array([0, f]))})


def test_positions_past_the_sequence_raise_in_a_users_jit(llama, user_jit):
    _, params, ids = llama
    with pytest.raises(ValueError, match=rf"intervention at 'blocks\.1\.hook_resid_post': "
                                         rf"position {T} is outside the sequence; valid "
                                         rf"positions are 0\.\.{T - 1}"):
        user_jit(params, ids, {"blocks.1.hook_resid_post": Zero(positions=jnp.array([T]))})
    with pytest.raises(ValueError, match=rf"capture of 'blocks\.0\.mlp\.hook_post': position 9 "
                                         rf"is outside the sequence"):
        user_jit(params, ids, None, {"blocks.0.mlp.hook_post": TopK(2, positions=jnp.array([9]))})
    with pytest.raises(ValueError, match="neuron 500 is outside"):
        user_jit(params, ids, {"blocks.1.mlp.hook_post": NeuronScale(jnp.array([500]))})


def test_gpt2_position_ids_past_the_table_raise_under_jit_apply():
    model, params = from_config(GPT2Config.tiny(max_position_embeddings=8), seed=0)
    ids = jnp.zeros((1, 4), jnp.int32)
    with pytest.raises(ValueError, match=r"position 8 exceeds GPT-2's learned positions 0\.\.7"):
        model.jit_apply(params, ids, position_ids=jnp.array([[0, 1, 2, 8]]))


def test_a_full_cache_raises_in_a_users_jit(llama):
    model, params, ids = llama
    cache = model.init_cache(B, T + 1)
    step = jax.jit(lambda c, i: model.checked_apply(params, i, cache=c))
    err, out = step(cache, ids)  # T of T + 1 slots filled
    raise_if_failed(err)
    with pytest.raises(ValueError, match=rf"the cache has {T} of its {T + 1} slots filled, "
                                         rf"leaving fewer free slots than the {T} tokens given"):
        raise_if_failed(step(out.cache, ids)[0])


def test_generate_refuses_bad_ids_and_traced_neurons(llama):
    model, params, ids = llama
    with pytest.raises(ValueError, match="token id 200 is outside the vocabulary"):
        generate(model, params, np.asarray(ids.at[0, 0].set(200)), max_new_tokens=2)
    with pytest.raises(ValueError, match="neuron 999 is outside"):
        generate(model, params, ids, max_new_tokens=2, intervene_on="all", interventions={
            "blocks.0.mlp.hook_post": NeuronScale(jnp.array([999]))})


def test_checked_program_computes_what_apply_computes(llama, user_jit):
    model, params, ids = llama
    edits = {"blocks.0.mlp.hook_post": NeuronScale(jnp.array([1, 5]), factor=0.0),
             "blocks.1.hook_resid_post": Zero(positions=jnp.array([2]))}
    want = model.apply(params, ids, interventions=edits).logits
    scale = float(jnp.max(jnp.abs(want)))
    np.testing.assert_allclose(user_jit(params, ids, edits).logits, want, rtol=0,
                               atol=1e-5 * scale)
    np.testing.assert_allclose(model.jit_apply(params, ids, interventions=edits).logits, want,
                               rtol=0, atol=1e-5 * scale)


def test_unchecked_user_jit_of_apply_is_documented_not_refused(llama):
    """Under a caller's plain ``jax.jit(model.apply)`` contents cannot be checked (documented
    in ``apply``): an out-of-vocabulary id shows as NaN logits, never as plausible ones."""
    model, params, ids = llama
    logits = jax.jit(model.apply)(params, ids.at[0, 2].set(128)).logits
    assert np.isnan(np.asarray(logits[0, 2:])).all()
    assert np.isfinite(np.asarray(logits[1])).all()
    assert "checked_apply" in model.apply.__doc__ and "concrete" in model.apply.__doc__
