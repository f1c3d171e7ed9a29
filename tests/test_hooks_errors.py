"""Misuse of the hook and forward API fails loudly, with a message that says what to fix."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxreason.hooks import Add, HeadMask, NeuronScale, Replace, Scale, Zero
from jaxreason.models import CausalLM, GPT2Config, LlamaConfig, from_config
from jaxreason.models.generate import generate

B, T = 2, 6
CONFIGS = {"gpt2": GPT2Config.tiny, "llama": LlamaConfig.tiny}


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def lm(request):
    model, params = from_config(CONFIGS[request.param](), seed=0)
    ids = jnp.asarray(np.random.RandomState(0).randint(0, 128, (B, T)), jnp.int32)
    return model, params, ids


# ----------------------------------------------------------------------------- names

@pytest.mark.parametrize("where", ["capture", "interventions"])
def test_unknown_hook_name_suggests_the_close_one(lm, where):
    model, params, ids = lm
    kw = ({"capture": {"blocks.0.hook_resid_pots"}} if where == "capture"
          else {"interventions": {"blocks.0.hook_resid_pots": Zero()}})
    with pytest.raises(ValueError, match=r"unknown hook name 'blocks\.0\.hook_resid_pots'\. "
                                         r"Did you mean 'blocks\.0\.hook_resid_post'"):
        model.apply(params, ids, **kw)


def test_patterns_and_names_that_match_nothing(lm):
    model, params, ids = lm
    with pytest.raises(ValueError, match=r"unknown hook name 'blocks\.\*\.hook_nothing'"):
        model.apply(params, ids, capture={"blocks.*.hook_nothing"})
    with pytest.raises(ValueError, match=r"unknown hook name 'blocks\.7\.hook_resid_post'"):
        model.apply(params, ids, interventions={"blocks.7.hook_resid_post": Zero()})
    other = "blocks.0.attn.hook_rot_q" if model.family == "gpt2" else "hook_pos_embed"
    with pytest.raises(ValueError, match=f"unknown hook name '{other}'"):
        model.apply(params, ids, capture={other})


# ----------------------------------------------------------------------------- positions

@pytest.mark.parametrize("bad", [T, -1])
def test_positions_outside_the_sequence(lm, bad):
    model, params, ids = lm
    msg = rf"position {bad} is outside the sequence; valid positions are 0\.\.{T - 1}"
    name = "hook_embed"
    with pytest.raises(ValueError, match=rf"capture of '{name}': {msg}"):
        model.apply(params, ids, capture={name: jnp.array([0, bad])})
    with pytest.raises(ValueError, match=rf"intervention at '{name}': {msg}"):
        model.apply(params, ids, interventions={name: Zero(positions=[[1], [bad]])})
    # jit would turn the positions into tracers: they are checked before tracing
    with pytest.raises(ValueError, match=msg):
        model.jit_apply(params, ids, capture={name: np.array([bad])})
    with pytest.raises(ValueError, match=msg):
        model.jit_apply(params, ids, interventions={name: Scale(2.0, positions=[bad])})


def test_positions_must_be_one_or_two_dimensional(lm):
    model, params, ids = lm
    with pytest.raises(ValueError,
                       match=r"positions must have shape \(P,\) or \(B, P\), got \(1, 1, 1\)"):
        model.apply(params, ids, capture={"hook_embed": np.zeros((1, 1, 1), int)})


def test_generate_checks_intervention_positions(lm):
    model, params, ids = lm
    total = T + 2  # prompt + max_new_tokens slots
    with pytest.raises(ValueError, match=rf"position {total} is outside the sequence; "
                                         rf"valid positions are 0\.\.{total - 1}"):
        generate(model, params, ids, max_new_tokens=2,
                 interventions={"hook_embed": Zero(positions=[total])})
    with pytest.raises(ValueError, match="intervene_on='sometimes'"):
        generate(model, params, ids, max_new_tokens=2, intervene_on="sometimes")
    with pytest.raises(ValueError, match="generate captures every slot"):
        generate(model, params, ids, max_new_tokens=2, capture={"hook_embed": [0]})


# ----------------------------------------------------------------------------- spec checks

def test_replace_and_add_values_of_the_wrong_shape(lm):
    model, params, ids = lm
    d, name = model.config.hidden_size, "hook_embed"
    with pytest.raises(ValueError, match=rf"values of shape \(2, 2, {d + 1}\) do not fit; "
                                         rf"expected \(2, 2, {d}\)"):
        model.apply(params, ids, interventions={
            name: Replace(jnp.zeros((B, 2, d + 1)), positions=[0, 1])})
    with pytest.raises(ValueError, match=rf"values of shape \(2, 3, {d}\) do not fit"):
        model.apply(params, ids, interventions={
            name: Add(jnp.zeros((B, 3, d)), positions=[0, 1])})
    with pytest.raises(ValueError, match=rf"do not fit the hook value of shape \(2, {T}, {d}\)"):
        model.apply(params, ids, interventions={name: Replace(jnp.zeros((B, T + 1, d)))})


def test_neuron_scale_checks(lm):
    model, params, ids = lm
    f = model.config.intermediate_size
    with pytest.raises(ValueError, match="NeuronScale applies to mlp.hook_post"):
        model.apply(params, ids, interventions={"hook_embed": NeuronScale(neurons=[0])})
    with pytest.raises(ValueError, match=rf"neuron {f} is outside 0\.\.{f - 1}"):
        model.apply(params, ids, interventions={
            "blocks.0.mlp.hook_post": NeuronScale(neurons=[3, f])})
    # a negative index is named itself, not the largest (valid) one
    with pytest.raises(ValueError, match=rf"neuron -1 is outside 0\.\.{f - 1}"):
        model.apply(params, ids, interventions={
            "blocks.0.mlp.hook_post": NeuronScale(neurons=[-1, 3])})


def test_head_mask_checks(lm):
    model, params, ids = lm
    h = model.config.num_heads
    with pytest.raises(ValueError,
                       match=rf"head mask of shape \({h - 1},\) does not match {h} heads"):
        model.apply(params, ids, interventions={
            "blocks.0.attn.hook_pattern": HeadMask(jnp.ones(h - 1))})
    with pytest.raises(ValueError, match=rf"head mask of shape \(2, {h + 1}\) does not match"):
        model.apply(params, ids,
                    interventions={"blocks.0.attn.hook_z": HeadMask(jnp.ones((B, h + 1)))})
    with pytest.raises(ValueError, match="HeadMask applies to attn.hook_pattern or attn.hook_z"):
        model.apply(params, ids, interventions={"hook_embed": HeadMask(jnp.ones(h))})


@pytest.mark.parametrize("spec", [jnp.zeros((B, T, 64)), {"values": 0.0}, lambda x: x],
                         ids=["array", "dict", "function"])
def test_intervention_that_is_not_a_spec(lm, spec):
    model, params, ids = lm
    with pytest.raises(TypeError,
                       match=r"intervention for 'hook_embed' must be a jaxreason\.hooks spec"):
        model.apply(params, ids, interventions={"hook_embed": spec})


# ----------------------------------------------------------------------------- inputs

def test_input_checks(lm):
    model, params, ids = lm
    v = model.config.vocab_size
    with pytest.raises(ValueError, match=rf"token id {v} is outside the vocabulary 0\.\.{v - 1}"):
        model.apply(params, ids.at[1, 2].set(v))
    with pytest.raises(ValueError, match=rf"token id -3 is outside the vocabulary 0\.\.{v - 1}"):
        model.apply(params, ids.at[0, 0].set(-3))
    with pytest.raises(ValueError, match=rf"attention_mask has shape \(2, {T - 1}\) but input_ids "
                                         rf"has shape \(2, {T}\)"):
        model.apply(params, ids, jnp.ones((B, T - 1), jnp.int32))
    with pytest.raises(ValueError, match=r"position_ids has shape \(1, 6\)"):
        model.apply(params, ids, position_ids=jnp.zeros((1, T), jnp.int32))
    with pytest.raises(ValueError,
                       match=r"input_ids must be a \(batch, seq\) array, got shape \(6,\)"):
        model.apply(params, ids[0])
    with pytest.raises(ValueError, match="input_ids must be integers, got dtype float32"):
        model.apply(params, ids.astype(jnp.float32))
    cache = model.init_cache(B, T - 1)
    with pytest.raises(ValueError, match=rf"the cache has {T - 1} free slots but {T} tokens"):
        model.apply(params, ids, cache=cache)


def test_gpt2_positions_beyond_learned_ones():
    model = CausalLM(GPT2Config.tiny(max_position_embeddings=8))
    params = jax.eval_shape(model.init, jax.random.PRNGKey(0))  # the check precedes any compute
    with pytest.raises(ValueError, match=r"position 8 exceeds GPT-2's learned positions 0\.\.7"):
        model.apply(params, jnp.zeros((1, 9), jnp.int32))
    with pytest.raises(ValueError, match=r"position 20 exceeds GPT-2's learned positions 0\.\.7"):
        model.apply(params, jnp.zeros((1, 3), jnp.int32),
                    position_ids=jnp.array([[0, 1, 20]], jnp.int32))
    with pytest.raises(ValueError, match="exceeds GPT-2's 8 positions"):
        generate(model, params, jnp.zeros((1, 5), jnp.int32), max_new_tokens=4)
