"""LoRA as a parameter-tree transform: add adapters, merge them back, shard them.

jaxreason's ``Dense`` layer (``models/layers.py``) grows a low-rank path whenever its param
dict holds ``lora_a`` (in, r), ``lora_b`` (r, out), ``lora_scale`` and ``lora_dropout``::

    y = x @ kernel (+ bias) + lora_scale * dropout(x) @ lora_a @ lora_b

so LoRA needs no separate model class: :func:`add_lora` returns a new param tree with those
leaves next to the targeted kernels, the same ``CausalLM`` runs it, and :func:`merge_lora`
folds the adapters into the kernels so the result is a plain checkpoint again (ready for
``jaxreason.models.save_pretrained``, which refuses unmerged adapters).

Which leaves train is decided by ``jaxreason.train.masks`` (mode ``"lora"``); the two scalars
live in the param tree only so that the forward pass can read them, and are never trained.

Design choices:

* ``lora_b`` starts at zero, so right after :func:`add_lora` the model computes exactly what
  the base model computes (bit for bit), and training starts from the pretrained function.
* ``lora_a`` uses PEFT's default, ``kaiming_uniform(a=sqrt(5))`` on an (r, in) matrix, i.e.
  U(-1/sqrt(in), 1/sqrt(in)), so runs are comparable with HF PEFT recipes.
* Adapters are stored in float32 whatever the kernel dtype: they are tiny, and bfloat16
  adapters lose most of a small learning-rate update. ``Dense`` casts them to the compute
  dtype; :func:`merge_lora` adds in float32 and casts back to the kernel's dtype.
"""

from __future__ import annotations

import difflib
import fnmatch
from typing import Any, Iterable

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from jaxreason.models.families import family_of
from jaxreason.tree_utils import copy_tree, get_path

LORA_LEAVES = ("lora_a", "lora_b", "lora_scale", "lora_dropout")
# The LoRA leaves an optimizer updates; the scalars are configuration, not weights.
LORA_TRAINABLE = ("lora_a", "lora_b")


def _dense_modules(tree: dict, prefix: tuple = ()) -> Iterable[tuple[tuple[str, ...], dict]]:
    """(path, node) of every dict that directly holds a ``kernel`` leaf, in sorted order."""
    for key in sorted(tree):
        value = tree[key]
        if isinstance(value, dict):
            if "kernel" in value and not isinstance(value["kernel"], dict):
                yield prefix + (key,), value
            yield from _dense_modules(value, prefix + (key,))


def _matches(target: str, dotted: str) -> bool:
    if "." not in target and not any(c in target for c in "*?["):
        return dotted.rsplit(".", 1)[-1] == target  # a bare module name
    return fnmatch.fnmatchcase(dotted, target) or fnmatch.fnmatchcase(dotted, "*." + target)


def select_targets(params: dict, family: Any, targets: Iterable[str] | str | None = None
                   ) -> list[tuple[str, ...]]:
    """Paths of the dense modules that ``targets`` pick (default: every LoRA-able module).

    A target is a module name from the family's ``lora_targets`` (``"c_proj"``: every such
    module; GPT-2's is both ``attn.c_proj`` and ``mlp.c_proj``) or a pattern on the ``.``- or
    ``/``-joined module path (``"attn.c_proj"``, ``"h_0.mlp.*"``). Only modules named in
    ``lora_targets`` are candidates, so the LM head and embeddings can never be picked. A
    target matching nothing is a ValueError.
    """
    spec = family_of(family)
    family, names = spec.name, spec.lora_targets
    candidates = [p for p, _ in _dense_modules(params) if p[-1] in names]
    if targets is None:
        targets = names
    elif isinstance(targets, str):
        targets = (targets,)
    targets = tuple(targets)
    if not targets:
        raise ValueError(f"targets is empty; pass None for every {family} module {list(names)}")
    allowed = list(names) + sorted({".".join(p[-2:]) for p in candidates})
    chosen: set[tuple[str, ...]] = set()
    for target in targets:
        pattern = str(target).replace("/", ".")
        hits = [p for p in candidates if _matches(pattern, ".".join(p))]
        if not hits:
            close = difflib.get_close_matches(pattern, allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"LoRA target {target!r} matches no {family} module{hint}; allowed: "
                             f"{allowed} or patterns over paths like "
                             f"{'.'.join(candidates[0]) if candidates else '...'!r}")
        chosen.update(hits)
    return sorted(chosen)


def add_lora(params: dict, family: Any, targets: Iterable[str] | str | None = None,
             rank: int = 8, alpha: float = 16.0, dropout: float = 0.0, rng=None) -> dict:
    """A new param tree with LoRA adapters next to each targeted kernel.

    Args:
      params: the base parameter tree (not modified).
      family: a family name (``"gpt2"``, ``"llama"``), a ``CausalLM`` or its config.
      targets: module names / path patterns (see :func:`select_targets`); None = all.
      rank: adapter rank r.
      alpha: LoRA alpha; the adapter output is scaled by ``alpha / rank``.
      dropout: dropout rate on the adapter input, active only with ``dropout_rng``.
      rng: PRNG key for ``lora_a`` (default ``PRNGKey(0)``).
    """
    if not isinstance(rank, int) or rank <= 0:
        raise ValueError(f"rank must be a positive int, got {rank!r}")
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    if any(k in node for _, node in _dense_modules(params) for k in LORA_LEAVES):
        raise ValueError("params already hold LoRA adapters; merge_lora them first")
    paths = select_targets(params, family, targets)
    rng = jax.random.PRNGKey(0) if rng is None else rng
    out = copy_tree(params)
    for i, path in enumerate(paths):
        node = get_path(out, path)
        # blocks stacked for scan carry a leading layer axis: one adapter per layer
        *lead, d_in, d_out = node["kernel"].shape
        bound = 1.0 / d_in ** 0.5
        node["lora_a"] = jax.random.uniform(jax.random.fold_in(rng, i), (*lead, d_in, rank),
                                            jnp.float32, -bound, bound)
        node["lora_b"] = jnp.zeros((*lead, rank, d_out), jnp.float32)
        node["lora_scale"] = jnp.full(lead, alpha / rank, jnp.float32)
        node["lora_dropout"] = jnp.full(lead, dropout, jnp.float32)
    return out


def lora_paths(params: dict) -> list[tuple[str, ...]]:
    """Paths of the modules that carry adapters."""
    return [p for p, node in _dense_modules(params) if "lora_a" in node]


def merge_lora(params: dict) -> dict:
    """Fold adapters into their kernels: ``kernel += scale * a @ b``; drop the LoRA leaves.

    The product and sum run in float32 at full matmul precision and are cast back to the
    kernel's dtype, so the merged model matches the adapted one up to that cast. A tree
    without adapters comes back unchanged (as a copy).
    """
    out = copy_tree(params)
    for path, node in list(_dense_modules(out)):
        present = [k for k in LORA_LEAVES if k in node]
        if not present:
            continue
        if len(present) != len(LORA_LEAVES):
            missing = sorted(set(LORA_LEAVES) - set(present))
            raise ValueError(f"module {'/'.join(path)} has incomplete LoRA leaves; "
                             f"missing {missing}")
        kernel = node["kernel"]
        delta = jnp.matmul(node["lora_a"].astype(jnp.float32),
                           node["lora_b"].astype(jnp.float32),
                           precision=jax.lax.Precision.HIGHEST)
        scale = jnp.asarray(node["lora_scale"], jnp.float32)[..., None, None]
        node["kernel"] = (kernel.astype(jnp.float32) + scale * delta).astype(kernel.dtype)
        for k in LORA_LEAVES:
            del node[k]
    return out


def lora_logical_axes(logical_axes_tree: dict, lora_params: dict) -> dict:
    """Logical-axis specs for a LoRA param tree, from the base model's ``logical_axes()``.

    ``lora_a`` (in, r) shards its input axis like the kernel's first axis, ``lora_b`` (r, out)
    its output axis like the kernel's second; the rank axis and the scalars are replicated.
    """
    out = {}
    for key, value in lora_params.items():
        if isinstance(value, dict):
            if key not in logical_axes_tree:
                raise KeyError(f"logical axes lack module {key!r}; were they built for "
                               "another model?")
            out[key] = lora_logical_axes(logical_axes_tree[key], value)
        elif key in logical_axes_tree:
            out[key] = logical_axes_tree[key]
        elif key in LORA_LEAVES:
            kernel = tuple(logical_axes_tree.get("kernel", PartitionSpec()))
            kernel = (None,) * (2 - len(kernel)) + kernel
            lead = kernel[:-2]  # the layer axis of blocks stacked for scan
            out[key] = {"lora_a": PartitionSpec(*lead, kernel[-2], None),
                        "lora_b": PartitionSpec(*lead, None, kernel[-1])}.get(
                            key, PartitionSpec(*lead))
        else:
            raise KeyError(f"logical axes lack leaf {key!r}")
    return out
