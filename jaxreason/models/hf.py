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
dtype and placed on the device (or sharding) they will live on. A model whose blocks run
under scan (stacked parameters, ``config.scanned``) reads each stacked leaf as its L
per-layer tensors stacked on the host, and exports by slicing it back.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np
from tqdm.auto import tqdm

from jaxreason.atomic import write_json
from jaxreason.models.config import DTYPES, EXECUTION_OPTIONS, BaseConfig
from jaxreason.models import layout
from jaxreason.models.export_dir import export_into
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
    """The ``config.json`` of a checkpoint directory as a dict; a clear error when it is not
    a JSON object."""
    file = _local_dir(path) / "config.json"
    try:
        hf = json.loads(file.read_text())
    except UnicodeDecodeError as e:
        raise ValueError(f"{file} is not a text file ({e}); expected the HF config as JSON") \
            from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{file} is not valid JSON: {e.msg} at line {e.lineno} column "
                         f"{e.colno}") from None
    if not isinstance(hf, dict):
        raise ValueError(f"{file} holds a JSON {type(hf).__name__}; expected an object "
                         f"{{\"model_type\": ..., ...}}")
    return hf


def load_pretrained(path: str | os.PathLike, *, dtype: str | None = None,
                    param_dtype: str | None = None, strict: bool = True,
                    shardings: Any = None, progress: bool = False,
                    **options) -> tuple[CausalLM, dict]:
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
      options: execution options of the config (``scan_layers``, ``remat``,
        ``attention_impl``; see ``BaseConfig``), e.g. ``scan_layers=False`` to keep a deep
        model's blocks unrolled.
    Returns:
      ``(model, params)``.
    """
    d = _local_dir(path)
    bad = sorted(set(options) - set(EXECUTION_OPTIONS))
    if bad:
        raise TypeError(f"load_pretrained got unknown options {bad}; allowed: "
                        f"{list(EXECUTION_OPTIONS)}")
    overrides = {k: v for k, v in (("dtype", dtype), ("param_dtype", param_dtype)) if v}
    overrides.update({k: v for k, v in options.items() if v is not None})
    try:
        config = config_from_hf(read_hf_config(d), strict=strict, **overrides)
    except (ValueError, TypeError) as e:
        if str(d) in str(e):
            raise
        raise type(e)(f"{d / 'config.json'}: {e}") from None
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
    def read(path, shape):
        key, transposed = family.hf_key(path)
        bare = key[len(family.hf_prefix):]
        if (key not in ckpt and family.hf_prefix_optional and key.startswith(family.hf_prefix)
                and bare in ckpt):
            key = bare
        if key not in ckpt:
            raise KeyError(f"checkpoint {directory} lacks tensor {key!r} (for parameter "
                           f"{'/'.join(path)} of shape {shape}): {ckpt.source.name} does "
                           f"not list it")
        want = tuple(reversed(shape)) if transposed else tuple(shape)
        if ckpt.shape(key) != want:
            raise ValueError(f"{ckpt.file_of(key)}: checkpoint tensor {key!r} has shape "
                             f"{ckpt.shape(key)}; config.json implies {want}"
                             f"{' (stored transposed, (out, in))' if transposed else ''} "
                             f"for parameter {'/'.join(path)}")
        arr = ckpt.get(key)
        used.add(key)
        return np.asarray(arr.T if transposed else arr, dtype=target_dtype)

    for path, spec in tqdm(wanted.items(), desc="loading tensors", disable=not progress):
        if cfg.scanned and path[0] == family.stacked_block:
            # blocks under scan: layer i's tensor is row i of the stacked leaf
            arr = np.stack([read(family.layer_path(path, i), spec.shape[1:])
                            for i in range(cfg.num_layers)])
        else:
            arr = read(path, spec.shape)
        loaded[path] = place(path, arr)
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
    from transformers import AutoTokenizer  # seconds to import: only when a tokenizer loads

    return AutoTokenizer.from_pretrained(str(_local_dir(path)), local_files_only=True)


def to_hf_state_dict(model: CausalLM, params: dict, dtype: str | None = None) -> dict[str, np.ndarray]:
    """HF-named numpy tensors (transposed back) for the given parameters."""
    np_dtype = np.dtype(jax.numpy.dtype(dtype or model.config.param_dtype))
    tree = unwrap_params(params)
    if not isinstance(tree, dict):
        raise TypeError(f"params must be the model's parameter tree (a dict), got "
                        f"{type(tree).__name__}")
    flat = flatten(tree)
    lora = sorted("/".join(p) for p in flat if p[-1].startswith("lora_"))
    if lora:
        raise ValueError(f"params hold LoRA adapters ({lora[0]}, ...); merge them into the base "
                         "weights first with jaxreason.train.lora.merge_lora")
    model.check_params(tree)
    if model.config.scanned:  # HF names one tensor per layer: slice the stacked leaves
        flat = flatten(layout.unrolled(model, jax.device_get(tree)))
    out = {}
    family = family_of(model)
    for path, value in flat.items():
        key, transposed = family.hf_key(path)
        arr = np.asarray(jax.device_get(value)).astype(np_dtype)
        out[key] = np.ascontiguousarray(arr.T if transposed else arr)
    return out


def save_pretrained(model: CausalLM, params: dict, path: str | os.PathLike, *,
                    dtype: str | None = None, tokenizer: Any = None,
                    max_shard_bytes: int = 4 * 1024**3, overwrite: bool = False) -> Path:
    """Export to a directory that ``transformers`` loads with the same logits.

    The export is built complete under a temporary name first, so a killed export never
    leaves half a checkpoint. It writes a marker, ``jaxreason_export.json``, listing the files
    it wrote (tokenizer files included), and it never deletes a file it did not write:

    * a missing or empty ``path``, or an earlier export there: written; the earlier export's
      files are replaced (other files a user put beside them are kept);
    * a non-empty directory that is not an earlier export: refused, unless
      ``overwrite=True``, which replaces only the files this export writes and keeps the rest.

    Args:
      dtype: storage dtype of the tensors (``float32``, ``bfloat16``, ``float16``); default
        the config's ``param_dtype``.
      tokenizer: an HF tokenizer saved beside the weights.
      max_shard_bytes: shard the weights into files of at most this size.
      overwrite: allow a non-empty directory that holds no earlier export (see above).
    """
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"save_pretrained dtype={dtype!r} is not supported; allowed: "
                         f"{sorted(DTYPES)}")
    cfg: BaseConfig = model.config
    with export_into(path, overwrite=overwrite) as tmp:  # refuses a bad target first
        tensors = to_hf_state_dict(model, params, dtype)
        hf_config = cfg.to_hf()
        hf_config["torch_dtype"] = dtype or cfg.param_dtype
        write_json(tmp / "config.json", hf_config)
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
            write_json(tmp / "model.safetensors.index.json",
                       {"metadata": {"total_size": total}, "weight_map": weight_map})
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
    return Path(path).expanduser()
