"""HuggingFace checkpoint import and export, from and to local directories only.

Because jaxreason's parameter names mirror HF's, the mapping is one rule rather than a table:
``h_3/attn/c_attn/kernel`` <-> ``transformer.h.3.attn.c_attn.weight`` and
``layers_3/self_attn/q_proj/kernel`` <-> ``model.layers.3.self_attn.q_proj.weight``. Llama's
``nn.Linear`` weights are stored (out, in) and get transposed; GPT-2's ``Conv1D`` already is
(in, out). The per-family parts of the rule (prefixes, block names, transposition, buffers)
come from the family description, ``Family.hf_key``.

The loader asserts that every parameter is found with the right shape and that no checkpoint
tensor is left over (except known buffers), so a mismatched checkpoint is an error, never a
silently half-loaded model.

Tensors are read one at a time from memory-mapped safetensors, cast straight to the target
dtype and placed on the device (or sharding) they will live on.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np
from tqdm.auto import tqdm

from jaxreason.models.config import BaseConfig
from jaxreason.models.families import config_from_hf, family_of
from jaxreason.models.lm import CausalLM
from jaxreason.tree_utils import flatten, unflatten, unwrap_params
from jaxreason.models.safetensors_io import CheckpointTensors, shard_plan, write_file

def _local_dir(path: str | os.PathLike) -> Path:
    p = Path(path).expanduser()
    if not p.is_dir():
        raise FileNotFoundError(
            f"{str(path)!r} is not a local directory. jaxreason never downloads weights: pass "
            "the path of a directory holding config.json and model.safetensors (for a Hub "
            "model, download it once with `huggingface-cli download NAME --local-dir DIR`).")
    if not (p / "config.json").exists():
        raise FileNotFoundError(f"{p} has no config.json")
    return p


def read_hf_config(path: str | os.PathLike) -> dict:
    return json.loads((_local_dir(path) / "config.json").read_text())


def load_pretrained(path: str | os.PathLike, *, dtype: str | None = None,
                    param_dtype: str | None = None, strict: bool = True,
                    shardings: Any = None, progress: bool = False) -> tuple[CausalLM, dict]:
    """Load a local HF checkpoint directory into a jaxreason model.

    Args:
      path: directory with ``config.json`` and ``model.safetensors`` (or sharded safetensors
        with ``model.safetensors.index.json``).
      dtype: compute dtype (``"float32"``, ``"bfloat16"``); default float32.
      param_dtype: storage dtype of the parameters; default float32.
      strict: refuse config fields and checkpoint tensors jaxreason does not understand.
      shardings: optional tree like the params (or a function path -> sharding) giving where
        each tensor goes; by default the first device.
      progress: show a progress bar over tensors.
    Returns:
      ``(model, params)``.
    """
    d = _local_dir(path)
    overrides = {k: v for k, v in (("dtype", dtype), ("param_dtype", param_dtype)) if v}
    config = config_from_hf(read_hf_config(d), strict=strict, **overrides)
    model = CausalLM(config)
    params = load_params(d, model, shardings=shardings, strict=strict, progress=progress)
    return model, params


def load_params(directory: str | os.PathLike, model: CausalLM, *, shardings: Any = None,
                strict: bool = True, progress: bool = False) -> dict:
    """Read the parameters of ``model`` from a checkpoint directory, tensor by tensor."""
    ckpt = CheckpointTensors(directory)
    cfg = model.config
    family = family_of(model)
    target_dtype = np.dtype(jax.numpy.dtype(cfg.param_dtype))
    wanted = flatten(model.param_shapes())
    place = _placement(shardings)
    loaded, used = {}, set()
    for path, spec in tqdm(wanted.items(), desc="loading tensors", disable=not progress):
        key, transposed = family.hf_key(path)
        bare = key[len(family.hf_prefix):]
        if (key not in ckpt and family.hf_prefix_optional and key.startswith(family.hf_prefix)
                and bare in ckpt):
            key = bare
        if key not in ckpt:
            raise KeyError(f"checkpoint {directory} lacks tensor {key!r} (for parameter "
                           f"{'/'.join(path)} of shape {spec.shape})")
        arr = ckpt.get(key)
        if transposed:
            arr = arr.T
        if tuple(arr.shape) != tuple(spec.shape):
            raise ValueError(f"checkpoint tensor {key!r} has shape {tuple(arr.shape)}"
                             f"{' (transposed)' if transposed else ''}; the config expects "
                             f"{tuple(spec.shape)}")
        loaded[path] = place(path, np.asarray(arr, dtype=target_dtype))
        used.add(key)
    leftover = [k for k in ckpt.keys() if k not in used and not family.is_hf_buffer(k)]
    if cfg.tie_word_embeddings:
        leftover = [k for k in leftover if k != family.hf_tied_head]
    if leftover and strict:
        raise ValueError(f"checkpoint {directory} has tensors this {cfg.family} config does not "
                         f"use: {leftover[:8]}{' ...' if len(leftover) > 8 else ''}")
    return unflatten(loaded)


def _placement(shardings) -> Callable[[tuple, np.ndarray], jax.Array]:
    if shardings is None:
        return lambda path, arr: jax.device_put(arr)
    if callable(shardings):
        return lambda path, arr: jax.device_put(arr, shardings(path))
    flat = flatten(shardings)
    return lambda path, arr: jax.device_put(arr, flat[path])


def load_tokenizer(path: str | os.PathLike):
    """The tokenizer stored in a local checkpoint directory (no network, no remote code)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(_local_dir(path)), local_files_only=True)


def to_hf_state_dict(model: CausalLM, params: dict, dtype: str | None = None) -> dict[str, np.ndarray]:
    """HF-named numpy tensors (transposed back) for the given parameters."""
    np_dtype = np.dtype(jax.numpy.dtype(dtype or model.config.param_dtype))
    flat = flatten(unwrap_params(params))
    lora = sorted("/".join(p) for p in flat if p[-1].startswith("lora_"))
    if lora:
        raise ValueError(f"params hold LoRA adapters ({lora[0]}, ...); merge them into the base "
                         "weights first with jaxreason.train.lora.merge_lora")
    out = {}
    family = family_of(model)
    for path, value in flat.items():
        key, transposed = family.hf_key(path)
        arr = np.asarray(jax.device_get(value)).astype(np_dtype)
        out[key] = np.ascontiguousarray(arr.T if transposed else arr)
    return out


def save_pretrained(model: CausalLM, params: dict, path: str | os.PathLike, *,
                    dtype: str | None = None, tokenizer: Any = None,
                    max_shard_bytes: int = 4 * 1024**3) -> Path:
    """Export to a directory that ``transformers`` loads with the same logits.

    The directory is written under a temporary name and renamed into place, so an existing
    export is replaced only by a complete one.
    """
    target = Path(path).expanduser()
    target.parent.mkdir(parents=True, exist_ok=True)
    cfg: BaseConfig = model.config
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        tensors = to_hf_state_dict(model, params, dtype)
        hf_config = cfg.to_hf()
        hf_config["torch_dtype"] = dtype or cfg.param_dtype
        (tmp / "config.json").write_text(json.dumps(hf_config, indent=2))
        shards = shard_plan({k: v.nbytes for k, v in tensors.items()}, max_shard_bytes)
        meta = {"format": "pt"}
        if len(shards) == 1:
            write_file(tmp / "model.safetensors", tensors, meta)
        else:
            weight_map = {}
            for n, names in enumerate(shards, 1):
                fname = f"model-{n:05d}-of-{len(shards):05d}.safetensors"
                write_file(tmp / fname, {k: tensors[k] for k in names}, meta)
                weight_map.update({k: fname for k in names})
            total = sum(v.nbytes for v in tensors.values())
            (tmp / "model.safetensors.index.json").write_text(json.dumps(
                {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        _swap_into_place(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _swap_into_place(tmp: Path, target: Path) -> None:
    """Rename ``tmp`` to ``target``; an old ``target`` is removed only after the rename."""
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)
