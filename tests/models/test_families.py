"""The family descriptions agree with the modules they describe, and lookups fail clearly."""

import jax
import pytest

from jaxreason.models import FAMILIES, CausalLM, GPT2Config, LlamaConfig, family_of
from jaxreason.models.config import config_from_dict
from jaxreason.models.families import family_for_hf, presets
from jaxreason.tree_utils import flatten

CONFIGS = {"gpt2": GPT2Config.tiny(), "llama": LlamaConfig.tiny()}


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def described(request):
    model = CausalLM(CONFIGS[request.param])
    return family_of(model), model, flatten(model.param_shapes())


def test_described_paths_exist_with_their_shapes(described):
    family, model, shapes = described
    c = model.config
    assert shapes[family.embedding].shape == (c.vocab_size, c.hidden_size)
    head = family.head_path(c)
    if head is not None:
        assert shapes[head].shape == (c.hidden_size, c.vocab_size)
    for i in range(c.num_layers):
        kernel = shapes[family.down_proj_kernel(i)].shape
        assert kernel[family.down_proj_neuron_axis] == c.intermediate_size
    assert (*family.final_norm, "weight") in shapes
    modules = {p[-2] for p in shapes if p[-1] == "kernel"}
    assert set(family.lora_targets) <= modules
    assert family.module_class is type(model.module)


def test_hf_names_are_a_bijection(described):
    family, _, shapes = described
    forward = family.hf_key_map(shapes)
    assert len(forward) == len(shapes)
    for key, (path, transposed) in forward.items():
        assert family.hf_key(path) == (key, transposed)


def test_lookups():
    gpt2, llama = FAMILIES["gpt2"], FAMILIES["llama"]
    assert family_of("gpt2") is gpt2 and family_of(LlamaConfig.tiny()) is llama
    assert family_of(CausalLM(GPT2Config.tiny())) is gpt2 and family_of(llama) is llama
    assert family_for_hf("qwen2") is llama
    assert gpt2.position_limit(GPT2Config.tiny()) == 128
    assert llama.position_limit(LlamaConfig.tiny()) is None
    assert {"gpt2-tiny", "gpt2-small", "llama-tiny", "gpt2", "llama"} <= set(presets())
    with pytest.raises(ValueError, match=r"unknown model family 'bert'; known families: "
                                         r"\['gpt2', 'llama'\]"):
        family_of("bert")
    with pytest.raises(ValueError, match="model_type='bert' is not supported"):
        family_for_hf("bert")
    with pytest.raises(ValueError, match=r"family='bert' is not one of \['gpt2', 'llama'\]"):
        config_from_dict({"family": "bert"})


def test_a_tied_llama_has_no_head_path():
    family = FAMILIES["llama"]
    tied = LlamaConfig.tiny(tie_word_embeddings=True)
    assert family.head_path(tied) is None
    assert ("lm_head", "kernel") not in flatten(jax.eval_shape(
        CausalLM(tied).init, jax.random.PRNGKey(0)))
