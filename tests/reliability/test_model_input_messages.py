"""Bad arguments to ``apply`` and ``generate`` are refused naming the hook or argument, the
expected shape or range and what was given, instead of a raw broadcast or Flax error."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxreason.hooks import HeadMask, NeuronScale, Scale, Zero
from jaxreason.models import GPT2Config, LlamaConfig, from_config
from jaxreason.models.generate import generate

B, T = 2, 6
SMALL = dict(vocab_size=64, hidden_size=32, num_layers=1, num_heads=4, intermediate_size=64)


@pytest.fixture(scope="module")
def llama():
    model, params = from_config(LlamaConfig.tiny(**SMALL), seed=0)
    return model, params, jnp.asarray(np.random.RandomState(0).randint(0, 64, (B, T)), jnp.int32)


@pytest.fixture(scope="module")
def gpt2():
    model, params = from_config(GPT2Config.tiny(**SMALL), seed=0)
    return model, params


def _edit(llama, name, spec):
    model, params, ids = llama
    return model.apply(params, ids, interventions={name: spec})


@pytest.mark.parametrize("mask, shape", [((3, 4), r"\(3, 4\)"), ((2, 1, 4), r"\(2, 1, 4\)"),
                                         ((5,), r"\(5,\)")])
def test_head_mask_shapes(llama, mask, shape):
    with pytest.raises(ValueError, match=rf"intervention at 'blocks\.0\.attn\.hook_z': head mask "
                                         rf"of shape {shape} does not match 4 heads; expected "
                                         rf"\(4,\) or \(2, 4\) for a batch of 2"):
        _edit(llama, "blocks.0.attn.hook_z", HeadMask(jnp.ones(mask)))


def test_scale_factor_shapes(llama):
    with pytest.raises(ValueError, match=r"Scale factor of shape \(5,\) does not broadcast to the "
                                         r"hook value of shape \(2, 6, 32\)"):
        _edit(llama, "blocks.0.hook_resid_post", Scale(jnp.ones(5)))
    with pytest.raises(ValueError, match=r"Scale factor of shape \(2, 3, 32\) does not broadcast "
                                         r"to the position-first value of shape \(2, 6, 32\)"):
        _edit(llama, "blocks.0.hook_resid_post", Scale(jnp.ones((2, 3, 32)), positions=[0, 1]))


def test_positions_shapes_and_dtype(llama):
    model, params, ids = llama
    with pytest.raises(ValueError, match=r"intervention at 'blocks\.0\.hook_resid_post': "
                                         r"positions of shape \(3, 1\) have 3 rows but the batch "
                                         r"has 2; give \(P,\) for every row or \(2, P\)"):
        _edit(llama, "blocks.0.hook_resid_post", Zero(positions=jnp.zeros((3, 1), jnp.int32)))
    with pytest.raises(ValueError, match=r"capture of 'blocks\.0\.hook_resid_post': positions of "
                                         r"shape \(3, 1\) have 3 rows"):
        model.apply(params, ids, capture={"blocks.0.hook_resid_post": np.zeros((3, 1), int)})
    with pytest.raises(ValueError, match=r"positions must be integer slots, got dtype float32"):
        model.apply(params, ids, capture={"blocks.0.hook_resid_post": jnp.array([0.5])})


def test_neuron_scale_shapes(llama):
    with pytest.raises(ValueError, match=r"NeuronScale factor of shape \(3,\) does not broadcast "
                                         r"to the neurons' shape \(2,\)"):
        _edit(llama, "blocks.0.mlp.hook_post", NeuronScale(jnp.array([1, 2]), factor=jnp.ones(3)))
    with pytest.raises(ValueError, match=r"NeuronScale neurons of shape \(3, 1\) do not fit; "
                                         r"expected \(N,\) or \(2, N\)"):
        _edit(llama, "blocks.0.mlp.hook_post", NeuronScale(jnp.zeros((3, 1), jnp.int32)))


def test_rotary_hook_on_gpt2_says_which_families_have_it(gpt2, llama):
    model, params = gpt2
    ids = llama[2]
    with pytest.raises(ValueError, match=r"unknown hook name 'blocks\.0\.attn\.hook_rot_q': it "
                                         r"exists on Llama models only, and this model is GPT-2"):
        model.apply(params, ids, capture={"blocks.0.attn.hook_rot_q"})
    lm, lp, _ = llama
    with pytest.raises(ValueError, match=r"'hook_pos_embed': it exists on GPT-2 models only"):
        lm.apply(lp, ids, interventions={"hook_pos_embed": Zero()})


def test_params_of_another_model_name_the_leaf(gpt2, llama):
    model, _ = gpt2
    _, lp, ids = llama
    with pytest.raises(ValueError, match=r"params do not fit this GPT-2 config: leaf \S+ of "
                                         r"shape \([\d, ]+\) is missing"):
        model.apply(lp, ids)


def test_input_ids_that_are_not_an_array(llama):
    model, params, _ = llama
    with pytest.raises(TypeError, match=r"input_ids must be a \(batch, seq\) integer array "
                                        r"\(numpy or jax\), got list"):
        model.apply(params, [[1, 2, 3]])


def test_generate_arguments(llama):
    model, params, ids = llama
    with pytest.raises(ValueError, match=r"max_new_tokens must be an int >= 1, got 2\.5"):
        generate(model, params, ids, max_new_tokens=2.5)
    with pytest.raises(ValueError, match=r"input_ids must be a \(batch, seq\) array, got shape "
                                         r"\(6,\)"):
        generate(model, params, ids[0], max_new_tokens=2)
    with pytest.raises(ValueError, match=r"attention_mask has shape \(2, 5\) but input_ids has "
                                         r"shape \(2, 6\)"):
        generate(model, params, ids, np.ones((2, 5), int), max_new_tokens=2)
