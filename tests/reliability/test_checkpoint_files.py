"""Damaged checkpoint directories are refused with a message naming the file and the fault,
and RoPE settings are read from ``config.json`` the way ``transformers`` reads them."""

import json
import shutil
import warnings

import numpy as np
import pytest

from jaxreason.models import LlamaConfig, config_from_hf, from_config, load_pretrained, \
    save_pretrained
from jaxreason.models.safetensors_io import CheckpointTensors, write_file


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    model, params = from_config(LlamaConfig.tiny(vocab_size=64, hidden_size=32, num_layers=1,
                                                 intermediate_size=64), seed=0)
    return save_pretrained(model, params, tmp_path_factory.mktemp("ckpt") / "good")


@pytest.fixture
def ckpt(saved, tmp_path):
    d = tmp_path / "c"
    shutil.copytree(saved, d)
    return d


def _edit_config(d, **changes):
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(changes)
    (d / "config.json").write_text(json.dumps(cfg))


def test_truncated_safetensors_names_the_tensor_and_sizes(ckpt):
    f = ckpt / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[:len(data) - 100])
    with pytest.raises(ValueError, match=rf"{f} is truncated: header says tensor '[\w.]+' ends "
                                         rf"at byte {len(data)}, file has {len(data) - 100} bytes"):
        load_pretrained(ckpt)
    f.write_bytes(data[:20])  # cut inside the header
    with pytest.raises(ValueError, match=r"is truncated: the header should take bytes 8\.\.\d+, "
                                         r"the file has 20 bytes"):
        load_pretrained(ckpt)
    f.write_bytes(data[:5])
    with pytest.raises(ValueError, match="it has 5 bytes, fewer than the 8-byte header length"):
        load_pretrained(ckpt)


def test_config_json_that_is_not_json_or_not_an_object(ckpt):
    (ckpt / "config.json").write_text("{\"model_type\": \"llama\",")
    with pytest.raises(ValueError, match=r"config\.json is not valid JSON: .* at line 1 column"):
        load_pretrained(ckpt)
    (ckpt / "config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"config\.json holds a JSON list; expected an object"):
        load_pretrained(ckpt)


def test_a_bad_config_value_names_the_file(ckpt):
    _edit_config(ckpt, hidden_act="gelu")
    with pytest.raises(ValueError, match=rf"{ckpt / 'config.json'}: .*hidden_act='gelu' is not "
                                         rf"implemented"):
        load_pretrained(ckpt)


def test_missing_tensor_and_wrong_shape_name_the_file(ckpt):
    tensors = {k: np.array(v) for k, v in
               ((k, CheckpointTensors(ckpt).get(k)) for k in CheckpointTensors(ckpt).keys())}
    key = "model.layers.0.mlp.up_proj.weight"
    write_file(ckpt / "model.safetensors", {k: v for k, v in tensors.items() if k != key})
    with pytest.raises(KeyError, match=rf"lacks tensor '{key}' .*model\.safetensors does not "
                                       rf"list it"):
        load_pretrained(ckpt)
    write_file(ckpt / "model.safetensors", tensors)
    _edit_config(ckpt, intermediate_size=48)
    with pytest.raises(ValueError, match=r"model\.safetensors: checkpoint tensor "
                                         r"'model\.layers\.0\.mlp\.\w+\.weight' has shape "
                                         r"\(\d+, \d+\); config\.json implies"):
        load_pretrained(ckpt)


def test_malformed_header_entries_and_index(ckpt):
    f = ckpt / "model.safetensors"
    header = json.dumps({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}).encode()
    f.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 8)
    with pytest.raises(ValueError, match=r"tensor 'a' spans bytes 0\.\.4 .* does not match its "
                                         r"shape \(2,\) and dtype F32"):
        load_pretrained(ckpt)
    (ckpt / "model.safetensors.index.json").write_text("{}")
    with pytest.raises(ValueError, match=r"model\.safetensors\.index\.json has no 'weight_map'"):
        load_pretrained(ckpt)
    (ckpt / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "../../etc/x.safetensors"}}))
    with pytest.raises(ValueError, match=r"weight_map\['a'\] = '\.\./\.\./etc/x\.safetensors' is "
                                         r"not the name of a \.safetensors file"):
        load_pretrained(ckpt)
    (ckpt / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "model-00002-of-00002.safetensors"}}))
    with pytest.raises(FileNotFoundError, match=r"names model-00002-of-00002\.safetensors, which "
                                                r"is not in"):
        load_pretrained(ckpt)


# ----------------------------------------------------------------------------- RoPE keys

def _hf(**rope):
    base = {k: v for k, v in LlamaConfig.tiny().to_hf().items()
            if k not in ("rope_scaling", "rope_parameters", "rope_theta")}
    return {**base, **rope}


def test_yarn_rope_scaling_beside_default_rope_parameters_is_refused():
    """transformers lets a non-empty rope_scaling replace rope_parameters: this file is YaRN."""
    hf = _hf(rope_scaling={"rope_type": "yarn", "factor": 4.0,
                           "original_max_position_embeddings": 64},
             rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match=r"rope_scaling: rope scaling type 'yarn' is not "
                                             r"implemented; allowed: \['default', 'linear', "
                                             r"'llama3'\]"):
            config_from_hf(hf)


@pytest.mark.parametrize("rope, want", [
    # rope_scaling wins whole; theta from the top level, else 10000 (not rope_parameters')
    ({"rope_scaling": {"type": "linear", "factor": 2.0}, "rope_theta": 1234.0},
     dict(rope_type="linear", rope_factor=2.0, rope_theta=1234.0)),
    ({"rope_scaling": {"rope_type": "linear", "factor": 2.0},
      "rope_parameters": {"rope_type": "default", "rope_theta": 99.0}},
     dict(rope_type="linear", rope_factor=2.0, rope_theta=10000.0)),
    ({"rope_scaling": None, "rope_parameters": {"rope_type": "linear", "factor": 3.0,
                                                "rope_theta": 99.0}},
     dict(rope_type="linear", rope_factor=3.0, rope_theta=99.0)),
    ({"rope_scaling": {}, "rope_parameters": {"rope_type": "default", "rope_theta": 99.0},
      "rope_theta": 7.0}, dict(rope_type="default", rope_theta=99.0)),
], ids=["legacy", "scaling-wins", "params-only", "empty-scaling"])
def test_rope_keys_are_read_as_transformers_reads_them(rope, want):
    transformers = pytest.importorskip("transformers")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = config_from_hf(_hf(**rope))
        theirs = transformers.LlamaConfig(**_hf(**rope)).rope_parameters
    assert {k: getattr(ours, k) for k in want} == want
    assert theirs["rope_type"] == ours.rope_type and theirs["rope_theta"] == ours.rope_theta
    assert theirs.get("factor", 1.0) == ours.rope_factor


def test_ignored_rope_parameters_are_warned_about():
    hf = _hf(rope_scaling={"rope_type": "linear", "factor": 2.0},
             rope_parameters={"rope_type": "default", "rope_theta": 99.0})
    with pytest.warns(UserWarning, match="uses rope_scaling and ignores rope_parameters"):
        config_from_hf(hf)


def test_incomplete_llama3_rope_names_the_missing_fields():
    hf = _hf(rope_parameters={"rope_type": "llama3", "factor": 8.0})
    with pytest.raises(ValueError, match=r"rope_parameters with rope_type='llama3' lacks "
                                         r"\['low_freq_factor', 'high_freq_factor'\]"):
        config_from_hf(hf)
    # transformers' default for the pretraining length: max_position_embeddings
    hf = _hf(rope_parameters={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                              "high_freq_factor": 4.0})
    assert config_from_hf(hf).rope_original_max_position_embeddings == hf[
        "max_position_embeddings"]
