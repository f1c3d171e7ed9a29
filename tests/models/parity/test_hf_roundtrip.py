"""Checkpoint import/export round trips against ``transformers``.

Export: a HF model loaded into jaxreason and written back with ``save_pretrained`` must load in
``AutoModelForCausalLM`` with the original logits; a fresh jaxreason model must export to HF with
its own logits. Import: sharded HF checkpoints load, and bf16 parameter storage works. Export is
atomic: it replaces an existing directory wholesale and leaves no temporary directories.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from hf_parity_utils import CASES, SEQ, assert_close, hf_forward, jax_forward, random_ids
from jaxreason.models import GPT2Config, LlamaConfig, from_config, load_pretrained, save_pretrained
from jaxreason.models.safetensors_io import SafetensorsFile

ATOL = 1e-5


def hf_load(d, **kw):
    return transformers.AutoModelForCausalLM.from_pretrained(
        d, attn_implementation="eager", **kw).eval()


def leftovers(parent, name):
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}."))


@pytest.mark.parametrize("case", list(CASES))
def test_export_loads_in_hf_with_same_logits(make_pair, tmp_path, case):
    """HF -> jaxreason -> save_pretrained -> HF gives the original logits, the same model type,
    and jaxreason reloads the export bit for bit."""
    hf, model, params, _ = make_pair(case)
    out = save_pretrained(model, params, tmp_path / "export")
    hf2 = hf_load(out)
    assert hf2.config.model_type == hf.config.model_type
    assert hf2.dtype == torch.float32
    ids = random_ids(2, SEQ)
    assert_close(hf_forward(hf2, ids)["logits"], hf_forward(hf, ids)["logits"], ATOL, "logits")
    model2, params2 = load_pretrained(out)
    assert model2.config == model.config
    jax.tree_util.tree_map(np.testing.assert_array_equal, params2, params)


def test_bf16_export_loads_in_hf_as_bf16(make_pair, tmp_path):
    """``save_pretrained(dtype="bfloat16")`` writes BF16 tensors that HF loads as a bf16 model
    whose logits stay close to the float32 original."""
    hf, model, params, _ = make_pair("llama_gqa")
    out = save_pretrained(model, params, tmp_path / "bf16", dtype="bfloat16")
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    header = SafetensorsFile(out / "model.safetensors").header
    assert {v["dtype"] for v in header.values()} == {"BF16"}
    hf2 = hf_load(out)
    assert hf2.dtype == torch.bfloat16
    ids = random_ids(2, SEQ)
    ref = hf_forward(hf, ids)["logits"]
    assert_close(hf_forward(hf2, ids)["logits"], ref, 0.1 * np.abs(ref).max(), "bf16 logits")


def _perturbed(params, seed=0):
    """jaxreason's init is as tiny as HF's; spread it out so the comparison is meaningful."""
    rng = np.random.default_rng(seed)

    def f(x):
        noise = rng.standard_normal(x.shape).astype(np.float32)
        return jnp.asarray(0.12 * noise if x.ndim >= 2 else np.asarray(x) + 0.2 * noise)
    return jax.tree_util.tree_map(f, params)


# Every HF variant's config export is already covered by the HF -> jaxreason -> HF test above;
# these check jaxreason-born configs and parameters (one config packs the Llama extras).
FRESH = {
    "gpt2": GPT2Config.tiny(vocab_size=100, max_position_embeddings=64),
    "llama_gqa": LlamaConfig.tiny(vocab_size=100),
    "llama_everything": LlamaConfig.tiny(
        vocab_size=100, kv_heads=1, head_dim_override=32, qkv_bias=True, o_bias=True,
        mlp_bias=True, rope_theta=500000.0, rope_type="llama3", rope_factor=8.0,
        rope_original_max_position_embeddings=16),
}


@pytest.mark.parametrize("name", list(FRESH))
def test_fresh_model_exports_to_hf(tmp_path, name):
    """from_config -> save_pretrained -> HF from_pretrained reproduces jaxreason's logits."""
    model, params = from_config(FRESH[name], seed=0)
    params = _perturbed(params)
    out = save_pretrained(model, params, tmp_path / name)
    ids = random_ids(2, SEQ)
    logits, _ = jax_forward(model, params, ids)
    assert np.std(logits) > 0.1
    assert_close(hf_forward(hf_load(out), ids)["logits"], logits, ATOL, "logits")


def test_sharded_checkpoints(make_pair, tmp_path):
    """A HF checkpoint sharded at 50KB (with an index) loads with the same logits, and
    jaxreason's own sharded export loads back in HF."""
    hf, _, _, _ = make_pair("llama_gqa")
    d = tmp_path / "sharded"
    hf.save_pretrained(d, max_shard_size="50KB")
    assert (d / "model.safetensors.index.json").exists()
    assert len(list(d.glob("model-*.safetensors"))) > 1
    model, params = load_pretrained(d)
    ids = random_ids(2, SEQ)
    ref = hf_forward(hf, ids)["logits"]
    logits, _ = jax_forward(model, params, ids)
    assert_close(logits, ref, ATOL, "logits from sharded HF checkpoint")
    out = save_pretrained(model, params, tmp_path / "resharded", max_shard_bytes=50_000)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert_close(hf_forward(hf_load(out), ids)["logits"], ref, ATOL, "logits after re-export")


def test_load_with_bf16_params(make_pair):
    """``param_dtype="bfloat16"`` stores every parameter in bf16; logits stay close to HF's."""
    hf, _, _, d = make_pair("llama_gqa")
    model, params = load_pretrained(d, param_dtype="bfloat16")
    assert {x.dtype for x in jax.tree_util.tree_leaves(params)} == {jnp.dtype(jnp.bfloat16)}
    ids = random_ids(2, SEQ)
    logits, _ = jax_forward(model, params, ids)
    assert logits.dtype == np.float32
    assert_close(logits, hf_forward(hf, ids)["logits"], 5e-2, "bf16-param logits")


class _FailingTokenizer:
    def save_pretrained(self, path):
        raise RuntimeError("disk full")


def test_save_pretrained_replaces_atomically(make_pair, tmp_path):
    """Exporting into an existing directory that is not an earlier export is refused (a file
    there is never deleted, not even with overwrite=True), and a failed export leaves the
    previous export untouched; no temporary directories remain."""
    _, model, params, _ = make_pair("gpt2")
    target = tmp_path / "out"
    target.mkdir()
    (target / "stale.txt").write_text("old")
    with pytest.raises(FileExistsError, match="not empty"):
        save_pretrained(model, params, target)
    save_pretrained(model, params, target, overwrite=True)
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "jaxreason_export.json",
                                                        "model.safetensors", "stale.txt"]
    assert leftovers(tmp_path, "out") == []
    before = (target / "model.safetensors").read_bytes()
    with pytest.raises(RuntimeError, match="disk full"):
        save_pretrained(model, params, target, tokenizer=_FailingTokenizer())
    assert (target / "model.safetensors").read_bytes() == before
    assert leftovers(tmp_path, "out") == []
