"""PEFT LoRA adapters from a local directory: PEFT's layout and scale, shape checks, and
pickled adapters refused."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jaxreason.models.safetensors_io import write_file
from jaxreason.studies.kv_transplant import adapters
from jaxreason.train.lora import merge_lora

RANK, ALPHA = 2, 8.0


def peft_dir(tmp_path, model, rng, targets=("q_proj", "v_proj"), bad_shape=False):
    d = tmp_path / "adapter"
    d.mkdir()
    (d / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": RANK, "lora_alpha": ALPHA, "target_modules": list(targets)}))
    c = model.config
    tensors, want = {}, {}
    for layer in range(c.num_layers):
        for t in targets:
            out = (c.num_heads if t == "q_proj" else c.num_kv_heads) * c.head_dim
            a = rng.normal(size=(RANK, c.hidden_size)).astype(np.float32)
            b = rng.normal(size=(out + int(bad_shape), RANK)).astype(np.float32)
            stem = f"base_model.model.model.layers.{layer}.self_attn.{t}"
            tensors[f"{stem}.lora_A.weight"], tensors[f"{stem}.lora_B.weight"] = a, b
            want[(layer, t)] = (ALPHA / RANK) * (b @ a).T  # PEFT's delta, as an (in, out) kernel
    write_file(d / "adapter_model.safetensors", tensors)
    return d, want


def test_peft_adapter_matches_the_merged_kernels(tmp_path, tiny_llama):
    model, params = tiny_llama
    d, want = peft_dir(tmp_path, model, np.random.default_rng(0))
    loaded = adapters.load_peft_adapter(model, params, d)
    merged = merge_lora(loaded)  # kernel + scale * lora_a @ lora_b, as the forward pass adds it
    for (layer, t), delta in want.items():
        base = np.asarray(params[f"layers_{layer}"]["self_attn"][t]["kernel"])
        got = np.asarray(merged[f"layers_{layer}"]["self_attn"][t]["kernel"])
        np.testing.assert_allclose(got - base, delta, atol=1e-5 * float(np.abs(delta).max()))
    assert "lora_a" not in loaded["layers_0"]["self_attn"]["k_proj"]
    trainable, frozen = adapters.split_trainable(loaded)
    assert set(trainable["layers_0"]["self_attn"]) == {"q_proj", "v_proj"}
    assert adapters.merge(trainable, frozen).keys() == loaded.keys()


def test_bad_adapters_are_refused(tmp_path, tiny_llama):
    model, params = tiny_llama
    d, _ = peft_dir(tmp_path, model, np.random.default_rng(1), bad_shape=True)
    with pytest.raises(ValueError, match="has shape"):
        adapters.load_peft_adapter(model, params, d)
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "adapter_config.json").write_text(json.dumps({"r": 2}))
    (pickled / "adapter_model.bin").write_bytes(b"\x80\x04.")
    with pytest.raises(FileNotFoundError, match="pickled adapters are refused"):
        adapters.load_peft_adapter(model, params, pickled)
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        adapters.load_peft_adapter(model, params, tmp_path)
