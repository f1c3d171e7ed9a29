"""Saved planning-token state: per-epoch safetensors round trip, and the PEFT export loaded
by ``peft`` onto the transformers base model with the same logits."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from jaxreason.models import load_pretrained, load_tokenizer
from jaxreason.studies.planning_tokens import export
from jaxreason.studies.planning_tokens.vocab import extend_tokenizer, init_sources
from jaxreason.tasks.planning import TokenGroups
from jaxreason.train.config import PeftSection
from jaxreason.train.build import apply_peft
from jaxreason.tree_utils import flatten, get_path

GROUPS = TokenGroups(n_prefix=2, n_special=2)
TARGETS = ("gate_proj", "up_proj", "down_proj")


@pytest.fixture(scope="module")
def trained(tiny_world_model):
    """The base with planning rows and LoRA, every new weight set to random values (as if
    trained), so the export has something to carry."""
    model, params = load_pretrained(tiny_world_model)
    tok = load_tokenizer(tiny_world_model)
    rows = model.config.vocab_size
    vocab = extend_tokenizer(tok, GROUPS, rows, "llama")
    peft = PeftSection(mode="lora+new-embeddings", lora_rank=4, lora_alpha=8.0,
                       lora_targets=TARGETS, new_tokens=GROUPS.count,
                       new_token_init=init_sources(tok, GROUPS, rows))
    model, params, _ = apply_peft(model, params, peft, 0)
    rng = np.random.default_rng(0)
    for path, value in flatten(params).items():
        if path[-1] == "lora_b":
            b = rng.normal(0, 0.05, value.shape).astype(np.float32)
            get_path(params, path[:-1])["lora_b"] = b
    emb = np.array(params["embed_tokens"]["embedding"])
    emb[rows:] += rng.normal(0, 0.1, emb[rows:].shape)
    params["embed_tokens"]["embedding"] = emb
    head = np.array(params["lm_head"]["kernel"])
    head[:, rows:] += rng.normal(0, 0.1, head[:, rows:].shape)
    params["lm_head"]["kernel"] = head
    return {"dir": tiny_world_model, "model": model, "params": params, "tok": tok,
            "vocab": vocab, "peft": peft}


def test_epoch_files_round_trip(trained, tmp_path):
    model, params, rows = trained["model"], trained["params"], trained["vocab"].rows
    bias = tuple(float(b) for b in np.linspace(-0.1, 0.1, GROUPS.count))
    d = export.save_epoch(tmp_path / "epoch_1", model, params, first_id=rows, bias=bias, full=False)
    assert sorted(p.name for p in d.iterdir()) == ["adapter.safetensors",
                                                  "input_embeddings.safetensors",
                                                  "output_embeddings.safetensors"]
    fresh, fresh_params = load_pretrained(trained["dir"])
    fresh, fresh_params, _ = apply_peft(fresh, fresh_params, trained["peft"], 1)
    loaded = export.load_epoch(d, fresh, fresh_params, first_id=rows)
    want, got = flatten(params), flatten(loaded)
    assert set(want) == set(got)
    for p in want:
        np.testing.assert_array_equal(np.asarray(got[p]), np.asarray(want[p]), err_msg=str(p))
    export.write_token_strings(tmp_path, GROUPS, trained["tok"])
    prompt_text = json.loads((tmp_path / "prompt_text.json").read_text())
    assert prompt_text["prefix"] == " <prefix_0> <prefix_1>"


def test_peft_export_loads_with_the_same_logits(trained, tmp_path):
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    model, params, tok = trained["model"], trained["params"], trained["tok"]
    out = export.export_peft(tmp_path / "peft", model, params, tok, rank=4, alpha=8.0,
                             dropout=0.05, targets=TARGETS, bias=(0.0,) * GROUPS.count,
                             base_model=str(trained["dir"]), planning=True)
    base = AutoModelForCausalLM.from_pretrained(str(trained["dir"]), torch_dtype=torch.float32)
    base.resize_token_embeddings(len(tok))
    hf = peft.PeftModel.from_pretrained(base, str(out)).eval()
    text = ("Question: Tom has 4 eggs.\n <prefix_0> <prefix_1> <reason_0> <reason_1> So Tom "
            "has 4 eggs.")
    ids = np.asarray([tok.encode(text)], np.int64)
    assert (ids >= trained["vocab"].rows).sum() == 4  # planning tokens are in the input
    with torch.no_grad():
        want = hf(torch.from_numpy(ids)).logits.numpy()
    got = np.asarray(jax.device_get(model.apply(params, ids.astype(np.int32)).logits))
    assert got.shape == want.shape == (1, ids.shape[1], trained["vocab"].rows + GROUPS.count)
    np.testing.assert_allclose(got, want, atol=1e-4 * np.abs(want).max())
