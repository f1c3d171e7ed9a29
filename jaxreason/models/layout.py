"""Convert parameter trees (and anything shaped like them) between the two block layouts.

An unrolled model keeps block i under its own module name (``h_3/mlp/c_fc/kernel`` (D, F));
a model whose blocks run under scan (``config.scanned``) keeps them stacked under one name
(``h/mlp/c_fc/kernel`` (L, D, F)). Both layouts compute the same function, so a tree moves
between them by stacking or slicing, nothing else.

The conversion walks any pytree and rewrites every dict that holds the blocks: a parameter
tree, the optimizer's moment trees inside an Optax state, a whole training state, LoRA
adapters (their leaves stack like any other). That is what lets a checkpoint written in one
layout restore into a run of the other (``jaxreason.train.checkpoint``).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxreason.models.families import family_of
from jaxreason.tree_utils import unwrap_params


def _stack(*leaves):
    if all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves):
        return jax.ShapeDtypeStruct((len(leaves), *leaves[0].shape), leaves[0].dtype)
    if all(isinstance(x, np.ndarray) for x in leaves):
        return np.stack(leaves)
    return jnp.stack(leaves)


def _slice(leaf, i: int):
    if isinstance(leaf, jax.ShapeDtypeStruct):
        return jax.ShapeDtypeStruct(leaf.shape[1:], leaf.dtype)
    return leaf[i]


def _convert_dict(node: dict, family, num_layers: int, scanned: bool) -> dict:
    names = [family.block_name(i) for i in range(num_layers)]
    stacked = family.stacked_block
    out = {}
    if scanned and all(n in node for n in names):
        blocks = [node[n] for n in names]
        out[stacked] = jax.tree_util.tree_map(_stack, *blocks)
        rest = {k: v for k, v in node.items() if k not in names}
    elif not scanned and stacked in node and names[0] not in node:
        for i, n in enumerate(names):
            out[n] = jax.tree_util.tree_map(lambda a, i=i: _slice(a, i), node[stacked])
        rest = {k: v for k, v in node.items() if k != stacked}
    else:
        rest = node
    for key, value in rest.items():
        out[key] = convert(value, family, num_layers, scanned)
    return out


def convert(tree: Any, family, num_layers: int, scanned: bool) -> Any:
    """``tree`` with every block dict in the stacked (``scanned=True``) or the unrolled
    layout. Dicts already in that layout, and leaves, are returned as they are."""
    family = family_of(family)
    if isinstance(tree, dict):
        return _convert_dict(tree, family, num_layers, scanned)
    return jax.tree_util.tree_map(
        lambda node: _convert_dict(node, family, num_layers, scanned)
        if isinstance(node, dict) else node,
        tree, is_leaf=lambda x: isinstance(x, dict))


def is_stacked(model, params) -> bool:
    """Whether a parameter tree of ``model``'s family holds its blocks stacked."""
    tree = unwrap_params(params)
    return isinstance(tree, dict) and family_of(model).stacked_block in tree


def to_layout(model, params):
    """``params`` (either layout, bare or ``{"params": tree}``) in ``model``'s layout."""
    wrapped = isinstance(params, dict) and set(params) == {"params"}
    tree = convert(unwrap_params(params), model, model.config.num_layers,
                   model.config.scanned)
    return {"params": tree} if wrapped else tree


def stacked(model, params):
    """``params`` in the stacked layout (for a model with ``scan_layers=True``)."""
    return convert(params, model, model.config.num_layers, True)


def unrolled(model, params):
    """``params`` in the unrolled layout (one module per block)."""
    return convert(params, model, model.config.num_layers, False)


def checkpoint_conversion(model):
    """``(to_saved, to_target)`` for ``jaxreason.train.checkpoint.Checkpointer(convert=...)``:
    a training state of ``model``'s layout as an abstract target of the other layout (on the
    default device), and a restored state of the other layout back into ``model``'s."""
    L, scanned = model.config.num_layers, model.config.scanned

    def abstract(x):
        if isinstance(x, (jax.Array, np.ndarray, jax.ShapeDtypeStruct)):
            return jax.ShapeDtypeStruct(x.shape, x.dtype)
        return x

    def to_saved(target):
        return convert(jax.tree_util.tree_map(abstract, target), model, L, not scanned)

    def to_target(state):
        return convert(state, model, L, scanned)
    return to_saved, to_target
