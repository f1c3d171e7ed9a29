"""What a planning-token run saves: per-epoch safetensors, and an export ``peft`` loads.

Per epoch (``epochs/epoch_<k>/``), written atomically:

* ``adapter.safetensors``: the LoRA A/B leaves by parameter path (``layers_0/mlp/gate_proj/
  lora_a``, (in, r));
* ``input_embeddings.safetensors`` (``weight`` [n_new, D]) and ``output_embeddings.safetensors``
  (``weight`` [n_new, D], ``bias`` [n_new]): the new rows, as the original's separate tables;
* for full fine-tuning (nothing frozen) the whole model as a HuggingFace directory ``model/``.

The token strings (``prompt_text.json``, key -> ``" <key_0> <key_1> ..."``) and the extended
tokenizer are written at the first save, so an interrupted run can already be evaluated (the
original writes them only after the last epoch). Nothing is pickled.

The PEFT export (:func:`export_peft`) is ``adapter_config.json`` + ``adapter_model.safetensors``
(LoRA under PEFT's names, plus the whole ``embed_tokens`` and ``lm_head`` as
``modules_to_save``) and the tokenizer with the added tokens. Load it with::

    base = AutoModelForCausalLM.from_pretrained(base_dir)
    base.resize_token_embeddings(len(tokenizer))      # rows + fillers + planning tokens
    model = PeftModel.from_pretrained(base, export_dir)

The frozen output bias has no place in a HuggingFace head without bias: it is saved beside as
``new_token_bias.safetensors`` (zeros in fixed mode, so the PEFT model is exact there).
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np

from jaxreason import atomic
from jaxreason.models import save_pretrained
from jaxreason.models.families import family_of
from jaxreason.models.safetensors_io import SafetensorsFile, write_file
from jaxreason.train.lora import LORA_TRAINABLE, lora_paths
from jaxreason.tree_utils import copy_tree, flatten, get_path

PROMPT_TEXT = "prompt_text.json"


def _host(x) -> np.ndarray:
    return np.asarray(jax.device_get(x), np.float32)


def new_rows(model, params, first_id: int) -> dict[str, np.ndarray]:
    """The planning rows: ``input`` [n, D] of the embedding, ``output`` [n, D] of the head."""
    family = family_of(model)
    module, leaf = family.embedding
    out = {"input": _host(params[module][leaf])[first_id:]}
    head = family.head_path(model.config)
    if head is not None:
        out["output"] = _host(params[head[0]][head[1]]).T[first_id:]
    return out


def lora_tensors(params) -> dict[str, np.ndarray]:
    return {"/".join(p): _host(v) for p, v in flatten(params).items() if p[-1] in LORA_TRAINABLE}


def save_epoch(directory: Path, model, params, *, first_id: int | None, bias, full: bool) -> Path:
    """One epoch's trained state (see the module docstring)."""
    directory = Path(directory)
    with atomic.building_dir(directory) as tmp:
        lora = lora_tensors(params)
        if lora:
            write_file(tmp / "adapter.safetensors", lora)
        if first_id is not None:
            rows = new_rows(model, params, first_id)
            write_file(tmp / "input_embeddings.safetensors", {"weight": rows["input"]})
            if "output" in rows:
                write_file(tmp / "output_embeddings.safetensors",
                           {"weight": rows["output"], "bias": np.asarray(bias, np.float32)})
        if full:
            save_pretrained(model, jax.device_get(params), tmp / "model")
    return directory


def write_token_strings(directory: Path, groups, tokenizer) -> None:
    """``prompt_text.json`` and the extended tokenizer, once (at the first save)."""
    directory = Path(directory)
    if not (directory / PROMPT_TEXT).exists():
        atomic.write_json(directory / PROMPT_TEXT, groups.prompt_text())
    if not (directory / "tokenizer").exists():
        with atomic.building_dir(directory / "tokenizer") as tmp:
            tokenizer.save_pretrained(str(tmp))


def _read(path: Path) -> dict[str, np.ndarray]:
    f = SafetensorsFile(path)
    return {k: np.array(f.get(k)) for k in f.keys()}


def load_epoch(directory: Path, model, params, *, first_id: int | None):
    """``params`` (the base with its new rows appended, and LoRA leaves where the run had them)
    with an epoch's saved new rows and adapters put in."""
    directory = Path(directory)
    out = copy_tree(params)
    if first_id is not None:
        family = family_of(model)
        module, leaf = family.embedding
        table = np.array(_host(out[module][leaf]))
        table[first_id:] = _read(directory / "input_embeddings.safetensors")["weight"]
        out[module][leaf] = table
        head = family.head_path(model.config)
        if head is not None:
            kernel = np.array(_host(out[head[0]][head[1]]))
            kernel[:, first_id:] = _read(directory / "output_embeddings.safetensors")["weight"].T
            out[head[0]][head[1]] = kernel
    adapter = directory / "adapter.safetensors"
    if adapter.exists():
        for key, value in _read(adapter).items():
            *path, name = key.split("/")
            node = get_path(out, tuple(path))
            if name not in node or node[name].shape != value.shape:
                raise ValueError(f"{directory}: adapter {key} of shape {value.shape} does not "
                                 f"fit the model's LoRA leaves")
            node[name] = value
    return out


def export_peft(directory: Path, model, params, tokenizer, *, rank: int, alpha: float,
                dropout: float, targets, bias, base_model: str, planning: bool) -> Path:
    """A PEFT LoRA directory for ``params`` (LoRA leaves unmerged; see the module docstring)."""
    family = family_of(model)
    tensors = {}
    for path in lora_paths(params):
        key, _ = family.hf_key(path + ("kernel",))
        name = "base_model.model." + key.removesuffix(".weight")
        node = get_path(params, path)
        tensors[name + ".lora_A.weight"] = _host(node["lora_a"]).T.copy()
        tensors[name + ".lora_B.weight"] = _host(node["lora_b"]).T.copy()
    saved = []
    if planning:
        module, leaf = family.embedding
        head = family.head_path(model.config)
        for path, transposed in (((module, leaf), False), (head, True)):
            if path is None:
                continue
            key, _ = family.hf_key(path)
            value = _host(params[path[0]][path[1]])
            tensors["base_model.model." + key] = (value.T if transposed else value).copy()
            saved.append(key.split(".")[-2])
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": alpha,
              "lora_dropout": dropout, "target_modules": sorted(targets), "bias": "none",
              "fan_in_fan_out": False, "inference_mode": True, "modules_to_save": saved or None,
              "base_model_name_or_path": base_model}
    directory = Path(directory)
    with atomic.building_dir(directory) as tmp:
        write_file(tmp / "adapter_model.safetensors", tensors, metadata={"format": "pt"})
        (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2))
        if planning:
            write_file(tmp / "new_token_bias.safetensors",
                       {"bias": np.asarray(bias, np.float32)})
        tokenizer.save_pretrained(str(tmp))
    return directory
