"""Configs check themselves, round-trip through HF config dicts, and the checkpoint loader
refuses what it cannot load faithfully."""

import json

import jax
import numpy as np
import pytest

from jaxreason.models import CausalLM, GPT2Config, LlamaConfig, config_from_hf, load_pretrained
from jaxreason.models.config import config_from_dict
from jaxreason.models.hf import load_params, save_pretrained, to_hf_state_dict
from jaxreason.models.safetensors_io import CheckpointTensors, write_file

VARIANTS = {
    "gpt2": GPT2Config.tiny(),
    "gpt2-relu": GPT2Config.tiny(activation="relu", layer_norm_epsilon=1e-6),
    "llama": LlamaConfig.tiny(),
    "llama-mha-tied": LlamaConfig.tiny(kv_heads=4, tie_word_embeddings=True),
    "llama3-rope": LlamaConfig.tiny(rope_type="llama3", rope_theta=500000.0, rope_factor=8.0,
                                    rope_low_freq_factor=1.0, rope_high_freq_factor=4.0,
                                    rope_original_max_position_embeddings=64),
    "linear-rope": LlamaConfig.tiny(rope_type="linear", rope_factor=2.0),
    "qwen2-bias": LlamaConfig.tiny(qkv_bias=True, rms_norm_eps=1e-5),
    "mistral-window": LlamaConfig.tiny(sliding_window=16),
    "head-dim-override": LlamaConfig.tiny(head_dim_override=32),
    "llama-all-bias": LlamaConfig.tiny(qkv_bias=True, o_bias=True, mlp_bias=True),
}
MODEL_TYPE = {"qwen2-bias": "qwen2", "mistral-window": "mistral"}


# ----------------------------------------------------------------------------- round trips

@pytest.mark.parametrize("variant", VARIANTS)
def test_hf_round_trip(variant):
    cfg = VARIANTS[variant]
    hf = cfg.to_hf()
    assert hf["model_type"] == MODEL_TYPE.get(variant, cfg.family)
    json.dumps(hf)  # it is written as config.json
    assert config_from_hf(hf) == cfg
    assert type(cfg).from_hf(hf) == cfg
    assert config_from_dict(cfg.to_dict()) == cfg


def test_kv_heads_none_round_trips_to_the_same_model():
    cfg = LlamaConfig.tiny(kv_heads=None)
    back = config_from_hf(cfg.to_hf())
    assert back.num_kv_heads == cfg.num_kv_heads == cfg.num_heads
    assert back == cfg.replace(kv_heads=cfg.num_heads)


def test_hf_round_trip_through_transformers_configs():
    """The dict transformers itself writes (with every default it adds) loads back."""
    transformers = pytest.importorskip("transformers")
    for name, cfg in VARIANTS.items():
        hf = cfg.to_hf()
        cls = transformers.AutoConfig.for_model(hf["model_type"]).__class__
        written = cls(**{k: v for k, v in hf.items() if k != "model_type"}).to_dict()
        assert config_from_hf(written) == cfg, name


def test_variant_fields_reach_hf():
    hf = VARIANTS["llama3-rope"].to_hf()
    assert hf["rope_parameters"] == {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                     "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                     "original_max_position_embeddings": 64}
    assert VARIANTS["mistral-window"].to_hf()["sliding_window"] == 16
    assert VARIANTS["head-dim-override"].to_hf()["head_dim"] == 32
    # transformers<5 spelling: rope_theta + rope_scaling with the legacy "type" key
    old = {**LlamaConfig.tiny().to_hf(), "rope_scaling": {"type": "linear", "factor": 2.0}}
    del old["rope_parameters"]
    assert config_from_hf(old) == VARIANTS["linear-rope"]


# ----------------------------------------------------------------------------- config errors

def test_config_self_checks():
    with pytest.raises(ValueError, match="kv_heads=3 must be positive and divide num_heads=4"):
        LlamaConfig.tiny(kv_heads=3)
    with pytest.raises(ValueError, match="kv_heads=0 must be positive"):
        LlamaConfig.tiny(kv_heads=0)
    with pytest.raises(ValueError, match="hidden_size=66 is not divisible by num_heads=4"):
        GPT2Config.tiny(hidden_size=66)
    with pytest.raises(ValueError, match="head_dim=5 must be even for RoPE"):
        LlamaConfig.tiny(hidden_size=20, num_heads=4, kv_heads=None)
    with pytest.raises(ValueError, match="rope_type='yarn' is not supported"):
        LlamaConfig.tiny(rope_type="yarn")
    with pytest.raises(ValueError, match="num_layers must be a positive int, got 0"):
        GPT2Config.tiny(num_layers=0)
    with pytest.raises(ValueError, match="dtype='float8' is not supported"):
        LlamaConfig.tiny(dtype="float8")


def _llama_hf(**changes):
    hf = {**LlamaConfig.tiny().to_hf(), **changes}
    return {k: v for k, v in hf.items() if v is not ...}


def test_unknown_hf_field_is_named_with_a_suggestion():
    hf = _llama_hf(hiden_act="silu")
    with pytest.raises(ValueError, match=r"llama config\.json has fields jaxreason does not "
                                         r"implement: 'hiden_act' \(did you mean 'hidden_act'\?\)"):
        config_from_hf(hf)
    assert config_from_hf(hf, strict=False) == LlamaConfig.tiny()
    with pytest.raises(ValueError, match=r"'qk_layernorm'"):
        config_from_hf(_llama_hf(qk_layernorm=True))
    gpt2 = {**GPT2Config.tiny().to_hf(), "n_embed": 64}
    with pytest.raises(ValueError, match=r"'n_embed' \(did you mean 'n_embd'\?\)"):
        config_from_hf(gpt2)


@pytest.mark.parametrize("hf, message", [
    (_llama_hf(rope_scaling=..., rope_parameters={"rope_type": "yarn", "factor": 4.0,
                                                  "rope_theta": 1e4}),
     "rope scaling type 'yarn' is not implemented"),
    (_llama_hf(rope_parameters=..., rope_scaling={"type": "yarn", "factor": 4.0}),
     "rope scaling type 'yarn' is not implemented"),
    (_llama_hf(rope_parameters={"rope_type": "default", "rope_theta": 1e4,
                                "partial_rotary_factor": 0.5}),
     "partial_rotary_factor"),
    (_llama_hf(hidden_act="gelu"), "hidden_act='gelu' is not implemented"),
    (_llama_hf(sliding_window=16), "llama config field sliding_window is not implemented"),
    ({**LlamaConfig.tiny(qkv_bias=True).to_hf(), "use_sliding_window": True, "sliding_window": 8},
     "qwen2 config field use_sliding_window=True is not implemented"),
    ({**LlamaConfig.tiny(sliding_window=8).to_hf(),
      "layer_types": ["sliding_attention", "full_attention"]}, "mixed per-layer attention"),
    ({**GPT2Config.tiny().to_hf(), "scale_attn_by_inverse_layer_idx": True},
     "scale_attn_by_inverse_layer_idx=True is not implemented"),
    ({**GPT2Config.tiny().to_hf(), "reorder_and_upcast_attn": True},
     "reorder_and_upcast_attn=True is not implemented"),
    ({**GPT2Config.tiny().to_hf(), "tie_word_embeddings": False},
     "tie_word_embeddings=False is not implemented"),
    ({"model_type": "bert"}, "model_type='bert' is not supported"),
], ids=["yarn", "yarn-legacy", "partial-rotary", "gelu", "llama-window", "qwen2-window",
        "mixed-layers", "gpt2-inverse-layer-idx", "gpt2-reorder", "gpt2-untied", "bert"])
def test_unsupported_hf_features_are_refused(hf, message):
    with pytest.raises(ValueError, match=message):
        config_from_hf(hf)


def test_export_without_hf_model_type_is_refused():
    with pytest.raises(ValueError, match="sliding window together with attention/MLP biases"):
        LlamaConfig.tiny(sliding_window=8, qkv_bias=True, o_bias=True).to_hf()


# ----------------------------------------------------------------------------- checkpoints

def test_load_pretrained_never_downloads(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # so "gpt2" is not a directory here
    with pytest.raises(FileNotFoundError, match="'gpt2' is not a local directory. "
                                                "jaxreason never downloads weights"):
        load_pretrained("gpt2")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        load_pretrained("empty")


def test_pickled_checkpoint_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(GPT2Config.tiny().to_hf()))
    (tmp_path / "pytorch_model.bin").write_bytes(b"not really a pickle")
    with pytest.raises(FileNotFoundError, match=r"pytorch_model\.bin.*pickled checkpoints are "
                                                r"refused because loading them can run arbitrary"):
        load_pretrained(tmp_path)


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def checkpoint(request, tmp_path_factory):
    """A saved tiny checkpoint (random params), its model and its tensors."""
    cfg = GPT2Config.tiny() if request.param == "gpt2" else LlamaConfig.tiny()
    model = CausalLM(cfg)
    rng = np.random.RandomState(0)
    params = jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(np.float32),
                          model.param_shapes())
    path = save_pretrained(model, params, tmp_path_factory.mktemp(request.param) / "ckpt")
    return model, params, path


def _rewrite(path, tensors):
    write_file(path / "model.safetensors", tensors, {"format": "pt"})


def test_saved_checkpoint_loads_back_exactly(checkpoint):
    model, params, path = checkpoint
    loaded_model, loaded = load_pretrained(path)
    assert loaded_model.config == model.config
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(params)):
        np.testing.assert_array_equal(a, b)
    assert jax.tree.structure(loaded) == jax.tree.structure(params)


def test_broken_checkpoints_are_refused_naming_the_tensor(checkpoint, tmp_path):
    model, params, path = checkpoint
    tensors = to_hf_state_dict(model, params)
    key = ("transformer.h.1.mlp.c_proj.weight" if model.family == "gpt2"
           else "model.layers.1.mlp.down_proj.weight")
    (tmp_path / "config.json").write_text((path / "config.json").read_text())

    _rewrite(tmp_path, {k: v for k, v in tensors.items() if k != key})
    with pytest.raises(KeyError, match=rf"lacks tensor '{key}'"):
        load_pretrained(tmp_path)

    _rewrite(tmp_path, {**tensors, key: tensors[key][:-1]})
    with pytest.raises(ValueError, match=rf"checkpoint tensor '{key}' has shape"):
        load_pretrained(tmp_path)

    extra = {**tensors, "model.layers.0.self_attn.q_norm.weight": np.ones(4, np.float32)}
    _rewrite(tmp_path, extra)
    with pytest.raises(ValueError, match=r"tensors this \w+ config does not use: "
                                         r"\['model\.layers\.0\.self_attn\.q_norm\.weight'\]"):
        load_pretrained(tmp_path)
    loaded = load_params(tmp_path, model, strict=False)  # non-strict: ignored
    assert set(CheckpointTensors(tmp_path).keys()) == set(extra)
    np.testing.assert_array_equal(jax.tree.leaves(loaded)[0], jax.tree.leaves(params)[0])
