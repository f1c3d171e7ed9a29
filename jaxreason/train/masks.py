"""Which parameters train: boolean masks over the param tree, and Optax wiring for them.

Parameter-efficient training is "the same loss, a different set of trainable leaves":

* ``"all"``: full fine-tuning;
* ``"lora"``: only ``lora_a``/``lora_b`` (after ``jaxreason.train.lora.add_lora``);
* ``"new-embeddings"``: only the rows of tokens added with ``jaxreason.train.vocab``;
* ``"lora+new-embeddings"``: both (teach new tokens and adapt the network);
* ``"patterns"``: leaves whose path matches one of ``patterns`` (``"*/ln_*/*"``,
  ``"h_1.*"``), e.g. to train only norms or the last block.

``lora_scale`` and ``lora_dropout`` are never trainable: they are hyperparameters stored in
the tree only so the forward pass can read them.

Frozen leaves must cost nothing in the optimizer, so :func:`partitioned_optimizer` uses
``optax.multi_transform`` with ``optax.set_to_zero`` (whose state is empty) for them: Adam
moments exist only for trainable leaves. Embedding rows are finer than leaves, so for
``new-embeddings`` the whole embedding leaf is trainable and :func:`freeze_old_rows` zeroes
the old rows both in the gradient (so clipping and moments never see them) and in the final
update (so AdamW's weight decay cannot move them either). The Adam moments of the embedding
are therefore full (V, D) arrays; only their old rows stay zero.
"""

from __future__ import annotations

import fnmatch
from typing import Any, Iterable

import jax
import jax.numpy as jnp
import optax

from jaxreason.models.families import FAMILIES, family_of
from jaxreason.train.lora import LORA_LEAVES, LORA_TRAINABLE
from jaxreason.tree_utils import path_names

MODES = ("all", "lora", "new-embeddings", "lora+new-embeddings", "patterns")
NEVER_TRAINABLE = tuple(k for k in LORA_LEAVES if k not in LORA_TRAINABLE)
# Last two path names of vocabulary-indexed leaves of any family, and their vocabulary axis.
VOCAB_AXES = {tail: axis for f in FAMILIES.values() for tail, axis in f.vocab_leaves().items()}


def vocab_axis(names: tuple[str, ...], family: str | None = None) -> int | None:
    """The vocabulary axis of a leaf (0 for embeddings, 1 for the (D, V) head), else None.

    With ``family``, only that family's vocabulary leaves count."""
    axes = VOCAB_AXES if family is None else family_of(family).vocab_leaves()
    return axes.get(tuple(names[-2:]))


def trainable_mask(params: dict, mode: str, patterns: Iterable[str] | str | None = None,
                   new_token_rows: int | None = None) -> dict:
    """A tree like ``params`` of Python bools: True where the leaf trains.

    Args:
      mode: one of :data:`MODES`.
      patterns: fnmatch patterns over the ``/``- or ``.``-joined leaf path; only (and
        required) for mode ``"patterns"``. Each must match some leaf.
      new_token_rows: for the new-embeddings modes, the old vocabulary size (first new row).
        Optional here, where it only checks that the embedding really has new rows; pass the
        same number to :func:`partitioned_optimizer`, which freezes the rows below it.
    """
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is not supported; allowed: {list(MODES)}")
    if (patterns is not None) != (mode == "patterns"):
        raise ValueError("patterns are required with mode='patterns' and only allowed with it")
    if isinstance(patterns, str):
        patterns = [patterns]
    patterns = list(patterns or [])
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    names = [path_names(p) for p, _ in leaves]
    used: set[str] = set()

    def pick(n: tuple[str, ...], leaf) -> bool:
        if n[-1] in NEVER_TRAINABLE:
            return False
        if mode == "all":
            return True
        if mode == "patterns":
            hit = [p for p in patterns
                   if fnmatch.fnmatchcase("/".join(n), p) or fnmatch.fnmatchcase(".".join(n), p)]
            used.update(hit)
            return bool(hit)
        want = (mode != "new-embeddings" and n[-1] in LORA_TRAINABLE) or (
            mode != "lora" and vocab_axis(n) is not None)
        if want and vocab_axis(n) is not None and new_token_rows is not None:
            size = leaf.shape[vocab_axis(n)]
            if size <= new_token_rows:
                raise ValueError(f"{'/'.join(n)} has {size} vocabulary entries, none beyond "
                                 f"new_token_rows={new_token_rows}; call add_tokens first")
        return want

    flags = [pick(n, leaf) for n, (_, leaf) in zip(names, leaves)]
    if mode == "patterns":
        unused = [p for p in patterns if p not in used]
        if unused:
            raise ValueError(f"patterns {unused} match no trainable leaf; leaves look like "
                             f"{['/'.join(n) for n in names[:4]]}")
    if "lora" in mode and not any(n[-1] in LORA_TRAINABLE for n in names):
        raise ValueError(f"mode={mode!r} but params hold no LoRA adapters; call add_lora first")
    if "new-embeddings" in mode and not any(vocab_axis(n) is not None for n in names):
        raise ValueError(f"mode={mode!r} but params hold no token embedding")
    treedef = jax.tree_util.tree_structure(params)
    return jax.tree_util.tree_unflatten(treedef, flags)


def freeze_old_rows(old_vocab: int, family: str | None = None) -> optax.GradientTransformation:
    """Zero the vocabulary entries ``< old_vocab`` of embedding rows / ``lm_head`` columns.

    Stateless; other leaves pass through. Put it before the optimizer (gradients) and after it
    (updates): :func:`partitioned_optimizer` does both when given ``new_token_rows``.
    """
    if not isinstance(old_vocab, int) or old_vocab <= 0:
        raise ValueError(f"old_vocab must be a positive int, got {old_vocab!r}")
    if family is not None:
        family_of(family)  # an unknown family is an error now, not at the first update

    def zero_old(path, u):
        axis = vocab_axis(path_names(path), family)
        if axis is None or u is None:
            return u
        if u.shape[axis] <= old_vocab:
            raise ValueError(f"{'/'.join(path_names(path))} has {u.shape[axis]} vocabulary entries, "
                             f"none beyond old_vocab={old_vocab}")
        keep = jnp.arange(u.shape[axis]) >= old_vocab
        keep = keep[:, None] if axis == 0 else keep[None, :]
        return jnp.where(keep, u, jnp.zeros((), u.dtype))

    def update(updates, state, params=None):
        del params
        return jax.tree_util.tree_map_with_path(zero_old, updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def partitioned_optimizer(optimizer: optax.GradientTransformation, mask: Any,
                          new_token_rows: int | None = None) -> optax.GradientTransformation:
    """``optimizer`` on the True leaves of ``mask``, ``set_to_zero`` (no state) elsewhere.

    With ``new_token_rows`` (the old vocabulary size), the trainable branch is wrapped in
    :func:`freeze_old_rows` on both sides so that only new embedding rows/head columns move.
    """
    labels = jax.tree_util.tree_map(lambda m: "train" if m else "freeze", mask)
    train = optimizer
    if new_token_rows is not None:
        freeze = freeze_old_rows(new_token_rows)
        train = optax.chain(freeze, optimizer, freeze)
    return optax.multi_transform({"train": train, "freeze": optax.set_to_zero()}, labels)


def trainable_optimizer(optimizer: optax.GradientTransformation, params: dict, mode: str,
                        patterns: Iterable[str] | str | None = None,
                        new_token_rows: int | None = None) -> optax.GradientTransformation:
    """:func:`trainable_mask` + :func:`partitioned_optimizer` in one call.

    The new-embeddings modes require ``new_token_rows`` here, since without it the old rows
    would train too.
    """
    if "new-embeddings" in str(mode) and new_token_rows is None:
        raise ValueError(f"mode={mode!r} needs new_token_rows (the vocabulary size before "
                         "add_tokens) so that old rows stay frozen")
    mask = trainable_mask(params, mode, patterns, new_token_rows)
    return partitioned_optimizer(optimizer, mask,
                                 new_token_rows if "new-embeddings" in mode else None)
