"""LoRA adapters of the study: a fresh one, or a PEFT adapter from a local directory, and the
split of a parameter tree into its trainable adapter leaves and the frozen rest.

The original starts from the published Alpaca LoRA adapter (r=16, alpha=16 on q, k, v and o).
A PEFT adapter directory holds ``adapter_config.json`` and ``adapter_model.safetensors`` with
keys ``base_model.model.<HF module>.lora_A.weight`` (r, in) and ``...lora_B.weight`` (out, r);
PEFT computes ``x @ A.T @ B.T * lora_alpha / r``. Pickled adapters (``adapter_model.bin``) are
refused: loading them can run arbitrary code.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp

from jaxreason.models.families import family_of
from jaxreason.models.safetensors_io import SafetensorsFile
from jaxreason.train.lora import LORA_TRAINABLE, add_lora, lora_paths
from jaxreason.tree_utils import flatten, get_path, unflatten

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


def fresh_adapter(model, params, rank: int, alpha: float, seed: int) -> dict:
    """Params with a new adapter on q, k, v, o (B = 0: step 0 is the base model)."""
    return add_lora(params, model.family, TARGETS, rank=rank, alpha=alpha,
                    rng=jax.random.PRNGKey(seed))


def load_peft_adapter(model, params, directory) -> dict:
    """Params with the adapter of a local PEFT directory on the modules it targets."""
    d = Path(directory).expanduser()
    cfg_file, weights = d / "adapter_config.json", d / "adapter_model.safetensors"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"adapter_path = {str(directory)!r} has no adapter_config.json")
    if not weights.is_file():
        pickles = sorted(p.name for p in d.glob("*") if p.suffix in (".bin", ".pt", ".pth"))
        extra = (f"; it holds {pickles}, and pickled adapters are refused because loading them "
                 "can run arbitrary code (convert them to safetensors first)") if pickles else ""
        raise FileNotFoundError(f"adapter_path = {str(directory)!r} has no "
                                f"adapter_model.safetensors{extra}")
    cfg = json.loads(cfg_file.read_text())
    rank, alpha = int(cfg["r"]), float(cfg.get("lora_alpha", cfg["r"]))
    targets = cfg.get("target_modules") or list(TARGETS)
    if isinstance(targets, str):
        targets = [targets]
    out = add_lora(params, model.family, tuple(targets), rank=rank, alpha=alpha)
    tensors = SafetensorsFile(weights)
    family = family_of(model)
    for path in lora_paths(out):
        key, _ = family.hf_key(path + ("kernel",))
        stem = "base_model.model." + key[:-len(".weight")]
        node = get_path(out, path)
        for ours, theirs in (("lora_a", "lora_A"), ("lora_b", "lora_B")):
            name = f"{stem}.{theirs}.weight"
            if name not in tensors.header:
                raise ValueError(f"{weights} lacks tensor {name!r} (adapter_config.json targets "
                                 f"{targets})")
            value = jnp.asarray(tensors.get(name).astype("float32").T)
            if value.shape != node[ours].shape:
                raise ValueError(f"{weights}: {name} has shape {tuple(value.shape[::-1])}, "
                                 f"expected {tuple(node[ours].shape[::-1])} for this model")
            node[ours] = value
    return out


def split_trainable(params) -> tuple[dict, dict]:
    """(adapter matrices, everything else) of a tree with adapters."""
    flat = flatten(params)
    lora = {k: v for k, v in flat.items() if k[-1] in LORA_TRAINABLE}
    if not lora:
        raise ValueError("params hold no LoRA adapter matrices")
    return unflatten(lora), unflatten({k: v for k, v in flat.items() if k not in lora})


def merge(trainable: dict, frozen: dict) -> dict:
    return unflatten({**flatten(frozen), **flatten(trainable)})
