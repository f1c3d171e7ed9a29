"""Attention features of MechanisticProbe (Hou et al., 2023): GPT-2 and LLaMA probe inputs.

The probe only ever reads the attention *rows of the prediction token(s)*, so this module
never materialises a full T x T pattern outside the compiled program:

:func:`last_query_attention` (JAX)
    One query position, every layer and head: (N, L, H, S). A jitted forward per batch asks
    the hook runner for ``blocks.*.attn.hook_pattern`` at that one position (capture with
    positions), and returns only the stacked rows, so XLA also drops the LM head. Batches
    are padded to a fixed size (one compile), and the result is exported to numpy.

    Dropout (faithful random baseline): HF's ``GPT2LMHeadModel(GPT2Config())`` is
    in train mode, so its attention probabilities go through ``attn_dropout`` (p=0.1, torch
    semantics: zero with probability p, scale the survivors by 1/(1-p)) *before* they are
    mixed into the values and returned as ``attentions``. The same happens here through an
    :class:`~jaxreason.hooks.Apply` intervention on ``hook_pattern``: the edited pattern feeds
    the value mix (so later layers see the dropped-out model) and is what gets captured.
    Every example gets its own key, ``fold_in(fold_in(fold_in(PRNGKey(seed), example index),
    layer), site)``, so the result does not depend on ``batch_size``. It is not bit-equal
    to torch's RNG, only equal in distribution.

    ``dropout_sites`` chooses where dropout runs. ``("attn",)`` (the default) is attention
    dropout only. The HF train-mode model also drops the embedding sum (``embd``: at
    ``blocks.0.hook_resid_pre``) and both residual branches (``resid``: ``hook_attn_out`` and
    ``hook_mlp_out``), which are exactly HF's ``drop``, ``attn.resid_dropout`` and
    ``mlp.dropout``. Pass ``dropout_sites=HF_TRAIN_DROPOUT_SITES`` for the complete faithful
    baseline. These extra sites change the attention of later layers.

:func:`gpt2_probe_features` (numpy)
    Head mean per layer, transposed to [positions x layers], divided by the per-example
    global maximum: the 12-dim feature vector of every number. This is faithful; the original
    has no alternative to fix here.

:func:`llama_statement_features` (numpy)
    Given the attention of the query rows (question plus "True or False?") of one example,
    pool over query tokens (``"max"``, the LLaMA/ICL features; ``"mean"``, the faithful
    random-init baseline of ``ft_analysis``), take the mean over heads, average over each
    statement's token span, and keep a subset of layers (:data:`PROOFWRITER_KEEP_LAYERS`,
    :data:`ARC_KEEP_LAYERS`; the faithful baseline keeps all 32). No max-normalisation.
    :func:`statement_boundaries` reproduces the approximate span arithmetic of the original:
    separate tokenisation, a cumulative sum, and the first boundary shifted by +1. An empty
    span (possible only when the +1 shift eats a one-token first statement) gives NaN, as the
    original's ``torch.mean`` of an empty slice does.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxreason.hooks import Apply, head_mask_interventions

__all__ = [
    "HF_TRAIN_DROPOUT_SITES", "PROOFWRITER_KEEP_LAYERS", "ARC_KEEP_LAYERS",
    "last_query_attention", "gpt2_probe_features", "statement_boundaries",
    "llama_statement_features",
]

# Every dropout HF GPT-2 applies in train mode (embeddings, attention probs, both residual
# branches); pass as ``dropout_sites`` for the complete faithful random baseline.
HF_TRAIN_DROPOUT_SITES = ("attn", "resid", "embd")

# The original's LLaMA features: ProofWriter drops layers {17,18,20..27,29,30,31};
# ARC drops 17..31 (0-based).
PROOFWRITER_KEEP_LAYERS = tuple(list(range(17)) + [19, 28])
ARC_KEEP_LAYERS = tuple(range(17))

_SITE_IDS = {"attn.hook_pattern": 0, "hook_attn_out": 1, "hook_mlp_out": 2, "hook_resid_pre": 3}


# ----------------------------------------------------------------------------- dropout

def _dropout(x, slots, args):
    """Torch-style dropout of a hook value with one key per example (``Apply`` callback).

    ``args = (keys (B, 2) uint32, rate ())``; zeroes each entry with probability ``rate`` and
    scales the survivors by ``1 / (1 - rate)``."""
    keys, rate = args
    keep = jax.vmap(lambda k: jax.random.bernoulli(k, 1.0 - rate, x.shape[1:]))(keys)
    return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


def _dropout_interventions(num_layers: int, sites: tuple[str, ...], seed, example_idx, rate):
    """``{hook name: Apply(_dropout, (per-example keys, rate))}`` for the chosen sites."""
    base = jax.random.PRNGKey(seed)
    ex_keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(example_idx)  # (B, 2)

    def keys_for(layer: int, site: str):
        return jax.vmap(lambda k: jax.random.fold_in(jax.random.fold_in(k, layer),
                                                     _SITE_IDS[site]))(ex_keys)

    edits = {}
    for layer in range(num_layers):
        leaves = []
        if "attn" in sites:
            leaves.append("attn.hook_pattern")
        if "resid" in sites:
            leaves += ["hook_attn_out", "hook_mlp_out"]
        if "embd" in sites and layer == 0:
            leaves.append("hook_resid_pre")
        for leaf in leaves:
            edits[f"blocks.{layer}.{leaf}"] = Apply(_dropout, (keys_for(layer, leaf), rate))
    return edits


@functools.partial(jax.jit, static_argnames=("model", "query_position", "sites"))
def _query_rows(model, params, ids, example_idx, seed, rate, query_position: int,
                sites: tuple[str, ...], head_mask=None):
    """(B, L, H, S) attention rows of ``query_position``; only they leave the program."""
    num_layers = model.config.num_layers
    edits = (_dropout_interventions(num_layers, sites, seed, example_idx, rate)
             if sites else {})
    if head_mask is not None:  # HF head_mask semantics on every layer's pattern
        edits.update(head_mask_interventions(head_mask, every_layer=True))
    edits = edits or None
    out = model.apply(params, ids,
                      capture={"blocks.*.attn.hook_pattern": jnp.array([query_position])},
                      interventions=edits)
    rows = [out.captured[f"blocks.{i}.attn.hook_pattern"][:, 0] for i in range(num_layers)]
    return jnp.stack(rows, axis=1).astype(jnp.float32)  # (B, L, H, S)


def last_query_attention(model, params, tokens, batch_size: int = 256, query_position: int = -1,
                         dropout_rate: float = 0.0, dropout_seed: int = 0, *,
                         dropout_sites: Sequence[str] = ("attn",),
                         head_mask=None) -> np.ndarray:
    """Attention rows of one query position for every layer and head.

    Args:
      model: a :class:`jaxreason.models.CausalLM` (GPT-2 or Llama).
      params: its parameters.
      tokens: (N, T) int token ids, all of the same length (no padding: the k-th smallest
        lists are exactly 16 tokens).
      batch_size: examples per jitted call; the last batch is padded (one compile).
      query_position: the query slot; negative counts from the end (-1 = last token).
      dropout_rate: p of torch-style dropout at ``dropout_sites`` (0 = eval mode).
      dropout_seed: seed of the per-example dropout keys.
      dropout_sites: any of ``"attn"`` (attention probabilities), ``"resid"`` (attention and
        MLP outputs) and ``"embd"`` (embedding sum); see the module docstring.
      head_mask: optional (L, H) 0/1 mask applied to every layer's attention probabilities
        while running (masked heads then return zero rows); not combinable with attention
        dropout.
    Returns:
      (N, L, H, S) float32 numpy array: post-softmax (post-dropout) probabilities from the
      query to every key slot; key slots after the query are 0 (causal mask).
    """
    tokens = np.asarray(tokens)
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be (N, T), got shape {tokens.shape}")
    n, t = tokens.shape
    q = query_position + t if query_position < 0 else query_position
    if not 0 <= q < t:
        raise ValueError(f"query_position {query_position} is outside 0..{t - 1}")
    if not 0.0 <= dropout_rate < 1.0:
        raise ValueError(f"dropout_rate must be in [0, 1), got {dropout_rate}")
    sites = tuple(sorted(set(dropout_sites))) if dropout_rate > 0 else ()
    if head_mask is not None and "attn" in sites:
        raise ValueError("head_mask and attention dropout both edit hook_pattern; use one")
    unknown = set(sites) - set(HF_TRAIN_DROPOUT_SITES)
    if unknown:
        raise ValueError(f"unknown dropout sites {sorted(unknown)}; choose from "
                         f"{HF_TRAIN_DROPOUT_SITES}")
    c = model.config
    out = np.empty((n, c.num_layers, c.num_heads, t), np.float32)
    if n == 0:
        return out
    bs = max(1, min(batch_size, n))
    seed = jnp.asarray(dropout_seed, jnp.uint32)
    rate = jnp.asarray(dropout_rate, jnp.float32)
    for start in range(0, n, bs):
        chunk = tokens[start:start + bs]
        m = len(chunk)
        if m < bs:  # pad with copies of the last row; their rows are discarded
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], bs - m, axis=0)])
        idx = jnp.arange(start, start + bs, dtype=jnp.int32)
        rows = _query_rows(model, params, jnp.asarray(chunk, jnp.int32), idx, seed, rate,
                           query_position=q, sites=sites,
                           head_mask=None if head_mask is None else jnp.asarray(head_mask,
                                                                                jnp.float32))
        out[start:start + m] = np.asarray(rows)[:m]
    return out


# ----------------------------------------------------------------------------- GPT-2

def gpt2_probe_features(attn) -> np.ndarray:
    """The original's GPT-2 feature matrices from last-query attention.

    Args:
      attn: (N, L, H, S) from :func:`last_query_attention` (or a single (L, H, S)).
    Returns:
      (N, S, L) float array (or (S, L)): the head mean per layer, transposed to [positions x
      layers], divided by each example's global maximum. Row i is number i's feature vector.
    """
    a = np.asarray(attn, np.float64)
    single = a.ndim == 3
    if single:
        a = a[None]
    if a.ndim != 4:
        raise ValueError(f"attn must be (N, L, H, S), got shape {np.shape(attn)}")
    feats = a.mean(axis=2).transpose(0, 2, 1)  # (N, S, L)
    feats = feats / feats.max(axis=(1, 2), keepdims=True)
    return feats[0] if single else feats


# ----------------------------------------------------------------------------- LLaMA

def statement_boundaries(prefix_len: int, statement_lens: Sequence[int]) -> np.ndarray:
    """The original's approximate statement boundaries.

    ``prefix_len`` is ``len(encode(icl_text))`` (0 for the demo-free random baseline);
    ``statement_lens[j]`` is ``len(encode(statement_j))``, each tokenised separately. The lengths
    are summed cumulatively and the first boundary is shifted by +1. Returns ``b`` of length
    ``n_statements + 1``: statement j covers tokens ``[b[j], b[j+1])`` and the query rows are
    ``b[-1]`` to the end of the prompt.
    """
    b = np.cumsum([int(prefix_len)] + [int(s) for s in statement_lens])
    b[0] += 1
    return b


def llama_statement_features(attn_rows: Sequence, boundaries: Sequence, query_pool: str = "max",
                             keep_layers: Sequence[int] | None = None) -> list[np.ndarray]:
    """The original's LLaMA statement features, one (n_statements, n_kept_layers) array per example.

    Args:
      attn_rows: per example, an (L, H, Q, S) array: the attention of the Q query rows (the
        positions ``b[-1]`` .. end) to S >= ``b[-1]`` key slots.
      boundaries: per example, the ``n_statements + 1`` boundaries of
        :func:`statement_boundaries`.
      query_pool: ``"max"`` over query tokens (the LLaMA features) or ``"mean"`` (the faithful
        random-init baseline, ``ft_analysis``).
      keep_layers: 0-based layers to keep, in order (None = all); e.g.
        :data:`PROOFWRITER_KEEP_LAYERS`, :data:`ARC_KEEP_LAYERS`.
    Returns:
      list of float arrays (n_statements_i, len(keep_layers)); NaN rows for empty spans.
    """
    if query_pool not in ("max", "mean"):
        raise ValueError(f"query_pool must be 'max' or 'mean', got {query_pool!r}")
    if len(attn_rows) != len(boundaries):
        raise ValueError(f"{len(attn_rows)} attention arrays but {len(boundaries)} boundary lists")
    feats = []
    for a, b in zip(attn_rows, boundaries):
        a = np.asarray(a, np.float64)
        b = np.asarray(b, int)
        if a.ndim != 4:
            raise ValueError(f"each attention array must be (L, H, Q, S), got shape {a.shape}")
        if b[-1] > a.shape[-1]:
            raise ValueError(f"boundary {b[-1]} is beyond the {a.shape[-1]} key slots")
        ctx = a[..., :b[-1]]  # (L, H, Q, context) as the original slices it
        pooled = ctx.max(axis=2) if query_pool == "max" else ctx.mean(axis=2)  # (L, H, C)
        per_token = pooled.mean(axis=1).T  # (C, L)
        rows = np.full((len(b) - 1, per_token.shape[1]), np.nan)
        for j in range(len(b) - 1):
            if b[j + 1] > b[j]:
                rows[j] = per_token[b[j]:b[j + 1]].mean(axis=0)
        if keep_layers is not None:
            rows = rows[:, list(keep_layers)]
        feats.append(rows)
    return feats
