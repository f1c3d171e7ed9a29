"""Read the weights that interpretability methods look at, and edit them functionally.

Following Geva et al. (2022, "Transformer Feed-Forward Layers Build Predictions by Promoting
Concepts in the Vocabulary Space"), an MLP's output is a sum of sub-updates ``a_i * v_i``: the
activation ``a_i`` of neuron i (``mlp.hook_post``, the input of the down projection) times
its *value vector* ``v_i`` (row i of the (F, D) down-projection kernel, HF's
``W_down[:, i]``). A value vector can be read in vocabulary space through the unembedding
(the "logit lens"), and a neuron can be ablated or corrupted by editing its value vector.

Every path comes from the model's family description (``jaxreason.models.family``), so these
functions work for every family without naming one:

* :func:`unembedding` (D, V), :func:`final_norm`, :func:`logit_lens`, :func:`top_tokens`;
* :func:`value_vectors` (F, D) per layer, :func:`value_norms` (L, F);
* :func:`edit_value_vectors`, :func:`zero_neurons`, :func:`add_to_value_vectors`.

Edits are functional: they return a NEW parameter tree that shares every untouched leaf with
the input, and the input tree is never modified, so a caller restores the model by keeping
the old tree. They accept the bare tree or ``{"params": tree}`` and return the same form.

LoRA: a down projection carrying adapters (``lora_a`` (F, r), ``lora_b`` (r, D),
``lora_scale``; see ``jaxreason.train.lora``) computes with the effective kernel
``kernel + lora_scale * lora_a @ lora_b``. :func:`value_vectors` returns the rows of that
effective kernel. Setting rows (:func:`edit_value_vectors`, :func:`zero_neurons`) writes them
into ``kernel`` and zeroes the same rows of ``lora_a``, so the effective rows are exactly the
new ones; a function edit rewrites the whole layer that way (its adapter path then adds
nothing). :func:`add_to_value_vectors` adds to ``kernel`` and leaves the adapters alone.

Both block layouts work: with stacked blocks (``config.scanned``) a layer's node is its slice
of the stacked leaves, and edits write their rows back into them.

Sharding: outside ``jit`` an edited leaf is put back on the sharding of the leaf it replaces,
so an edited tree keeps the input's layout. Under ``jit`` (traced params) the compiler decides;
pin it with ``out_shardings`` if it matters. Reads work on sharded params as they are.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxreason.models.config import dtype_of
from jaxreason.models.families import family_of
from jaxreason.models.layers import matmul
from jaxreason.runtime_checks import is_concrete
from jaxreason.tree_utils import copy_tree, get_path, unwrap_params

# Neurons to act on: {layer: indices} or an iterable of (layer, neuron) pairs.
Neurons = Mapping[int, Any] | Iterable[tuple[int, int]]


# ----------------------------------------------------------------------------- reading

def unembedding(model, params) -> jax.Array:
    """The (D, V) unembedding: the tied token embedding transposed, else the LM head kernel."""
    family, tree = family_of(model), unwrap_params(params)
    head = family.head_path(model.config)
    if head is None:
        return get_path(tree, family.embedding).T
    return get_path(tree, head)


def final_norm(model, params, x) -> jax.Array:
    """Apply the model's own final norm (GPT-2's ``ln_f``, Llama's ``norm``) to (..., D)."""
    family = family_of(model)
    norm = family.make_final_norm(model.config)
    return norm.apply({"params": get_path(unwrap_params(params), family.final_norm)}, x)


def logit_lens(model, params, vectors, use_final_norm: bool = False) -> jax.Array:
    """Read (..., D) vectors in vocabulary space: (..., V) float32 logits.

    With ``use_final_norm`` the vectors first go through the final norm, so the lens of the
    last residual stream equals the model's logits; without it this is the raw projection
    ``vectors @ W_U`` that the neuron studies apply to value vectors.
    """
    x = jnp.asarray(vectors)
    if x.shape[-1:] != (model.config.hidden_size,):
        raise ValueError(f"vectors of shape {x.shape} do not end in the model width "
                         f"D={model.config.hidden_size}")
    x = x.astype(dtype_of(model.config.dtype))
    if use_final_norm:
        x = final_norm(model, params, x)
    w_u = unembedding(model, params)
    return matmul(x, w_u.astype(x.dtype)).astype(jnp.float32)


class TopTokens(NamedTuple):
    """The k most likely tokens per row: ids (..., k) and their softmax probabilities."""

    ids: jax.Array
    probs: jax.Array


def top_tokens(logits, k: int) -> TopTokens:
    """The ``k`` highest-probability tokens of (..., V) logits, best first, with their
    probabilities under the softmax over the whole vocabulary."""
    logits = jnp.asarray(logits, jnp.float32)
    if not isinstance(k, (int, np.integer)) or not 0 < k <= logits.shape[-1]:
        raise ValueError(f"k={k!r} must be an int in 1..{logits.shape[-1]} (the vocabulary)")
    probs, ids = jax.lax.top_k(jax.nn.softmax(logits, axis=-1), int(k))
    return TopTokens(ids, probs)


def _stacked_down_proj(model, tree) -> dict:
    """The stacked (L, ...) down-projection node of a model whose blocks run under scan."""
    family = family_of(model)
    return get_path(tree, (family.stacked_block, *family.down_proj))


def _down_proj(model, tree, layer: int) -> dict:
    """The param node of one layer's down projection (``kernel``, maybe ``bias``, LoRA);
    for stacked blocks, that layer's slice of each leaf."""
    if not isinstance(layer, (int, np.integer)) or not 0 <= layer < model.config.num_layers:
        raise ValueError(f"layer {layer!r} is outside 0..{model.config.num_layers - 1}")
    if model.config.scanned:
        return {k: v[int(layer)] for k, v in _stacked_down_proj(model, tree).items()}
    return get_path(tree, family_of(model).down_proj_kernel(int(layer))[:-1])


def value_vectors(model, params, layer: int) -> jax.Array:
    """(F, D): row i is what neuron i of ``layer`` writes into the residual stream per unit
    of its activation (``mlp.hook_post``). Includes a LoRA adapter's contribution."""
    node = _down_proj(model, unwrap_params(params), layer)
    kernel = node["kernel"]
    if "lora_a" in node:  # the adapter leaves jaxreason's Dense layer reads
        delta = jnp.dot(node["lora_a"].astype(jnp.float32), node["lora_b"].astype(jnp.float32),
                        precision=jax.lax.Precision.HIGHEST)
        kernel = (kernel.astype(jnp.float32)
                  + jnp.asarray(node["lora_scale"], jnp.float32) * delta).astype(kernel.dtype)
    return kernel if family_of(model).down_proj_neuron_axis == 0 else kernel.T


def value_norms(model, params) -> jax.Array:
    """(L, F) float32: the L2 norm of every neuron's value vector (``||W_down[:, i]||``)."""
    return jnp.stack([jnp.linalg.norm(value_vectors(model, params, i).astype(jnp.float32),
                                      axis=-1)
                      for i in range(model.config.num_layers)])


# ----------------------------------------------------------------------------- editing

def _group(model, neurons: Neurons) -> dict[int, np.ndarray | jax.Array]:
    """{layer: (N,) indices} from a mapping or (layer, neuron) pairs; checks concrete ones."""
    if isinstance(neurons, Mapping):
        grouped = dict(neurons)
    else:
        grouped = {}
        for pair in neurons:
            layer, index = pair
            grouped.setdefault(int(layer), []).append(int(index))
    width = model.config.intermediate_size
    out = {}
    for layer, idx in grouped.items():
        if is_concrete(idx):
            idx = np.atleast_1d(np.asarray(idx))
            if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
                raise ValueError(f"layer {layer}: neuron indices must be a 1-D int array, got "
                                 f"{idx.dtype} of shape {idx.shape}")
            bad = idx[(idx < 0) | (idx >= width)]
            if bad.size:
                raise ValueError(f"layer {layer}: neuron {int(bad[0])} is outside 0..{width - 1}")
        out[layer] = idx
    return out


def _place_like(new, old):
    """Put ``new`` on ``old``'s sharding when both are concrete and the placements differ."""
    sharding = getattr(old, "sharding", None)
    if sharding is None or not is_concrete(new) or not is_concrete(old):
        return new
    return new if new.sharding == sharding else jax.device_put(new, sharding)


def _rewrite(model, params, layers: Iterable[int], edit: Callable[[int, dict], dict]):
    """A new tree in which each layer's down-projection node is replaced by ``edit``."""
    wrapped = isinstance(params, dict) and set(params) == {"params"}
    out = copy_tree(unwrap_params(params))
    rows: dict[str, list] = {}
    for layer in layers:
        node = _down_proj(model, out, layer)
        changed = edit(int(layer), node)
        for key, value in changed.items():
            if model.config.scanned:  # written into the stacked leaves below, all at once
                rows.setdefault(key, []).append((int(layer), value))
            else:
                node[key] = _place_like(value, node[key])
    if rows:
        node = _stacked_down_proj(model, out)
        for key, edits in rows.items():
            at = jnp.asarray([layer for layer, _ in edits])
            new = node[key].at[at].set(jnp.stack([v for _, v in edits]).astype(node[key].dtype))
            node[key] = _place_like(new, node[key])
    return {"params": out} if wrapped else out


def _set_rows(node: dict, axis: int, idx, rows) -> dict:
    """Leaves of a down-projection node whose effective neuron rows ``idx`` become ``rows``."""
    kernel = node["kernel"]
    rows = jnp.asarray(rows).astype(kernel.dtype)
    new = {"kernel": kernel.at[idx].set(rows) if axis == 0 else kernel.at[:, idx].set(rows.T)}
    if "lora_a" in node:  # the neuron side of the adapter: rows of lora_a, columns of lora_b
        if axis == 0:
            new["lora_a"] = node["lora_a"].at[idx].set(0)
        else:
            new["lora_b"] = node["lora_b"].at[:, idx].set(0)
    return new


def edit_value_vectors(model, params, edits) -> dict:
    """A new parameter tree with edited value vectors; ``params`` is left unchanged.

    Args:
      model: the ``CausalLM`` the params belong to.
      params: its parameters (bare or ``{"params": tree}``; LoRA adapters allowed).
      edits: either ``{layer: (indices (N,), new_rows (N, D))}``, setting those neurons' value
        vectors, or a function ``fn(layer, vectors (F, D)) -> (F, D)`` applied to every layer
        (return the input for layers to keep).
    """
    F, D = model.config.intermediate_size, model.config.hidden_size
    axis = family_of(model).down_proj_neuron_axis
    if callable(edits):
        def edit(layer, node):
            old = value_vectors(model, params, layer)
            new = jnp.asarray(edits(layer, old))
            if new.shape != (F, D):
                raise ValueError(f"the edit function returned shape {new.shape} for layer "
                                 f"{layer}; expected (F, D) = {(F, D)}")
            return _set_rows(node, axis, jnp.arange(F), new)

        return _rewrite(model, params, range(model.config.num_layers), edit)
    if not isinstance(edits, Mapping):
        raise TypeError(f"edits must be a dict layer -> (indices, rows) or a function, got "
                        f"{type(edits).__name__}")
    pairs = {}
    for layer, spec in edits.items():
        if not isinstance(spec, (tuple, list)) or len(spec) != 2:
            raise ValueError(f"edits[{layer!r}] must be a pair (indices, new_rows), got "
                             f"{type(spec).__name__}")
        pairs[layer] = spec
    grouped = _group(model, {layer: spec[0] for layer, spec in pairs.items()})
    for layer, idx in grouped.items():
        rows = pairs[layer][1]
        want = (np.shape(idx)[0], D)
        if tuple(np.shape(rows)) != want:
            raise ValueError(f"layer {layer}: new rows of shape {tuple(np.shape(rows))} do not "
                             f"fit {want[0]} neurons of width D={D}; expected {want}")
        if is_concrete(idx) and len(set(np.asarray(idx).tolist())) != len(idx):
            raise ValueError(f"layer {layer}: neuron indices {np.asarray(idx).tolist()} repeat a "
                             "neuron, so its new value vector is ambiguous")

    def edit(layer, node):
        return _set_rows(node, axis, grouped[layer], pairs[layer][1])

    return _rewrite(model, params, grouped, edit)


def zero_neurons(model, params, neurons: Neurons) -> dict:
    """A new tree in which the given neurons write nothing (their value vectors are zero).

    Equivalent to ``NeuronScale(indices, 0.0)`` at ``blocks.{layer}.mlp.hook_post`` at every
    position, but baked into the weights. ``neurons``: ``{layer: indices}`` or pairs.
    """
    grouped = _group(model, neurons)
    D = model.config.hidden_size
    return edit_value_vectors(model, params, {
        layer: (idx, jnp.zeros((np.shape(idx)[0], D))) for layer, idx in grouped.items()})


def add_to_value_vectors(model, params, neurons: Neurons, noise) -> dict:
    """A new tree with ``noise`` added to the given neurons' value vectors.

    ``noise`` broadcasts to (N, D) per layer: one (D,) vector for every neuron (as in the
    value-vector corruption of Rai & Yao, 2024), (N, D) per neuron, or a dict layer -> either.
    A neuron listed twice gets the noise twice. The sum runs in float32 and is cast back to
    the kernel's dtype. Repeated calls accumulate, which reproduces an in-place drift.
    """
    grouped = _group(model, neurons)
    D = model.config.hidden_size
    axis = family_of(model).down_proj_neuron_axis

    def edit(layer, node):
        idx = grouped[layer]
        amount = noise[layer] if isinstance(noise, Mapping) else noise
        amount = jnp.asarray(amount, jnp.float32)
        try:
            amount = jnp.broadcast_to(amount, (np.shape(idx)[0], D))
        except ValueError:
            raise ValueError(f"layer {layer}: noise of shape {amount.shape} does not broadcast to "
                             f"{(np.shape(idx)[0], D)} (neurons, D)") from None
        kernel = node["kernel"]
        if axis == 0:
            new = kernel.astype(jnp.float32).at[idx].add(amount)
        else:
            new = kernel.astype(jnp.float32).at[:, idx].add(amount.T)
        return {"kernel": new.astype(kernel.dtype)}

    return _rewrite(model, params, grouped, edit)
