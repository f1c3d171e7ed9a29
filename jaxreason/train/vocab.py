"""New token embeddings: grow the vocabulary of a model without changing what it computes.

Adding tokens such as ``<think>`` or ``</answer>`` means appending rows to the input
embedding and, when the head is untied, columns to the output head ``lm_head/kernel``
(stored (D, V)). Nothing about the old tokens changes, so for an input of old tokens the
logits ``[..., :old_V]`` are exactly the old logits; only new logits are appended.

How the new rows start matters more than it seems: a random row lands far from the learned
embedding distribution and, in the head, a random column can give the new token a large
logit everywhere. Starting at the mean row (Hewitt, "Initializing new word embeddings",
2021; also HF ``resize_token_embeddings(mean_resizing=True)``) keeps the new token's
probability near the average token's, and starting at the mean of a related word's rows
(``"<think>"`` from ``"think"``) gives it a head start. Which rows then train is decided by
``jaxreason.train.masks`` (mode ``"new-embeddings"`` + ``freeze_old_rows``).
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxreason.models.families import family_of
from jaxreason.models.lm import CausalLM
from jaxreason.tree_utils import copy_tree, unwrap_params


def _check_init(init, num_new: int, old_vocab: int) -> list[list[int] | None]:
    """Normalise ``init`` to one entry per new token: a list of source ids or None (mean)."""
    if isinstance(init, str):
        if init != "mean":
            raise ValueError(f"init={init!r} is not supported; allowed: 'mean' or a list of "
                             "lists of existing token ids (one list per new token)")
        return [None] * num_new
    init = list(init)
    if len(init) != num_new:
        raise ValueError(f"init has {len(init)} entries but num_new={num_new}; give one list of "
                         "source token ids per new token")
    out = []
    for i, ids in enumerate(init):
        if ids is None:
            out.append(None)
            continue
        ids = [int(t) for t in np.atleast_1d(np.asarray(ids))]
        if not ids:
            raise ValueError(f"init[{i}] is empty; give at least one existing token id")
        bad = [t for t in ids if not 0 <= t < old_vocab]
        if bad:
            raise ValueError(f"init[{i}] has token ids {bad} outside the existing vocabulary "
                             f"0..{old_vocab - 1}")
        out.append(ids)
    return out


def _new_rows(table, sources, rng, noise_scale: float):
    """(num_new, D) rows for a (V, D) table: the mean of the source rows (or of all rows).

    Written as one (num_new, V) averaging matrix times the table, at full matmul precision:
    a single op whatever the number of new tokens, and exact for single-token sources.
    """
    weights = np.zeros((len(sources), table.shape[0]), np.float32)
    for i, ids in enumerate(sources):
        if ids is None:
            weights[i] = 1.0 / table.shape[0]
        else:
            np.add.at(weights[i], ids, 1.0 / len(ids))  # a repeated id counts twice
    t32 = table.astype(jnp.float32)
    rows = jnp.dot(weights, t32, precision=jax.lax.Precision.HIGHEST)
    if rng is not None and noise_scale:
        rows = rows + noise_scale * t32.std(axis=0) * jax.random.normal(rng, rows.shape)
    return rows.astype(table.dtype)


def add_tokens(model: CausalLM, params: dict, num_new: int,
               init: str | Sequence[Sequence[int] | None] = "mean", rng=None,
               noise_scale: float = 0.01) -> tuple[CausalLM, dict]:
    """Append ``num_new`` token embeddings (and head columns when untied).

    Args:
      model, params: the model and its parameters (not modified).
      num_new: how many tokens to add; they get ids ``old_V .. old_V + num_new - 1``.
      init: ``"mean"`` (every new row is the mean of all old rows) or one entry per new token:
        a list of existing token ids whose rows are averaged (e.g. the ids of the word
        ``"think"`` for ``<think>``), or None for the mean of all rows.
      rng: optional PRNG key; when given, adds Gaussian noise of ``noise_scale`` times the
        per-dimension std of the old rows, so tokens sharing a source do not start identical.
    Returns:
      ``(new_model, new_params)`` with ``vocab_size = old_V + num_new``.
    """
    if not isinstance(num_new, (int, np.integer)) or isinstance(num_new, bool) or num_new <= 0:
        raise ValueError(f"num_new must be a positive int, got {num_new!r}")
    cfg = model.config
    old = cfg.vocab_size
    params = unwrap_params(params)
    family = family_of(cfg)
    module, leaf = family.embedding
    table = params[module][leaf]
    if table.shape[0] != old:
        raise ValueError(f"{module}/{leaf} has {table.shape[0]} rows but the model's vocab_size "
                         f"is {old}; pass the model that belongs to these params")
    sources = _check_init(init, int(num_new), old)
    rng_embed, rng_head = jax.random.split(rng) if rng is not None else (None, None)
    out = copy_tree(params)
    out[module][leaf] = jnp.concatenate(
        [table, _new_rows(table, sources, rng_embed, noise_scale)], axis=0)
    head = family.head_path(cfg)
    if head is not None:
        head_module, head_leaf = head
        kernel = params[head_module][head_leaf]  # (D, V): the head's rows are its columns
        cols = _new_rows(kernel.T, sources, rng_head, noise_scale).T
        out[head_module][head_leaf] = jnp.concatenate([kernel, cols], axis=1)
    return CausalLM(cfg.replace(vocab_size=old + int(num_new))), out


def resize_for_tokenizer(model: CausalLM, params: dict, tokenizer: Any,
                         init_words: dict[str, str] | None = None, rng=None
                         ) -> tuple[CausalLM, dict]:
    """Grow the vocabulary to ``len(tokenizer)`` after ``tokenizer.add_tokens(...)``.

    Each token in ``init_words`` (new token string -> word) starts from the mean of the rows of
    that word's tokens (``tokenizer.encode(word, add_special_tokens=False)``); other new tokens
    start from the mean row. If the tokenizer is not longer than the vocabulary (checkpoints
    often pad ``vocab_size``) there is nothing to grow and the inputs come back unchanged;
    init_words must then be empty, because those tokens' rows already exist and this function
    never overwrites an existing row.
    """
    old = model.config.vocab_size
    num_new = len(tokenizer) - old
    init: list[list[int] | None] = [None] * max(num_new, 0)
    for token, word in (init_words or {}).items():
        tid = tokenizer.convert_tokens_to_ids(token)
        unk = getattr(tokenizer, "unk_token_id", None)
        if tid is None or (tid == unk and token != getattr(tokenizer, "unk_token", None)):
            raise ValueError(f"token {token!r} is not in the tokenizer; add it first with "
                             "tokenizer.add_tokens")
        if not old <= tid < old + num_new:
            raise ValueError(f"token {token!r} has id {tid}, which already has a row in the "
                             f"{old}-row embedding; only new tokens (ids >= {old}) are "
                             "initialised here")
        ids = list(tokenizer.encode(word, add_special_tokens=False))
        if not ids or max(ids) >= old:
            raise ValueError(f"word {word!r} for token {token!r} encodes to {ids}, which is "
                             f"empty or uses new tokens; pick a word made of old tokens")
        init[tid - old] = ids
    if num_new <= 0:
        return model, unwrap_params(params)
    return add_tokens(model, params, num_new, init, rng=rng)
