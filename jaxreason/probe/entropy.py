"""Head entropies and head masks for MechanisticProbe's causal analysis (Hou et al., 2023;
the original repository's ``stask/prune.py``).

Pipeline: per-head last-query attention (N, L, H, S) from
:func:`jaxreason.probe.features.last_query_attention`. :func:`attention_by_rank` averages it
over the dataset twice: once by input position, and once by the *size rank* of the number
at each key. :func:`head_entropy` gives the normalised entropy of each head's averaged
distribution, H_pos or H_size. :func:`heads_to_mask` picks heads (random, or lowest entropy
first), and :func:`interventions_for_mask` turns the (L, H) 0/1 mask into
:class:`~jaxreason.hooks.HeadMask` interventions, which have HF ``head_mask`` semantics.

Faithful / fixed choices:

* Rank reindexing. **Faithful** (``dedupe=False``): key r = the position of the
  first occurrence of ``sorted(list)[r]``. A duplicated value repeats that position and the
  other copy's position is never read, so the reindexed row does not sum to 1.
  **Fixed** (``dedupe=True``): key r = ``argsort(list, kind="stable")[r]``. Every copy gets
  its own rank, earlier positions first, so the reindexing is a permutation and the row still
  sums to 1.
* Entropy. ``scipy.stats.entropy`` semantics, as in the original: the distribution is first
  renormalised to sum 1 (which matters for the faithful by-rank rows), with 0·log 0 = 0 and
  natural logs, then divided by ln S, so 1 is uniform and 0 one-hot. A row that sums to 0
  gives NaN.
* Number of heads. ``p = int(fraction * L * H)``, evaluated left to right as the
  original's ``int(d / 100 * L * H)``. **Faithful** masks ``p + 1`` heads (its ``while
  p_count <= p_num`` loop); **fixed** masks ``p``. Both are capped at L*H.
* "low" policy. The original repeatedly takes the argmin of the entropies, breaking ties at
  random, and sets the chosen head to 1.0. That is the maximum of a normalised entropy, so an
  already-chosen head is at worst tied with the unchosen ones; when it is drawn again, the
  draw is skipped. The result is therefore the unchosen heads in ascending entropy order,
  with ties broken at random. This is implemented as one ``lexsort`` on (entropy, random
  key) in both modes. It also avoids the original's endless loop when a float rounds an
  entropy slightly above 1. NaN entropies come last.
* "random" policy. A uniformly random set of heads. The original draws (layer, head) with
  replacement until enough distinct heads are masked, which gives the same distribution.
"""

from __future__ import annotations

import numpy as np

from jaxreason.hooks import head_mask_interventions

__all__ = ["rank_key_positions", "attention_by_rank", "head_entropy", "heads_to_mask",
           "interventions_for_mask"]


def rank_key_positions(lists, dedupe: bool = False) -> np.ndarray:
    """(N, S) int: for each example and size rank r, the input position read as rank r.

    ``dedupe=False`` (faithful): the first occurrence of ``sorted[r]``, so duplicates repeat a
    position. ``dedupe=True`` (fixed): the stable argsort, a permutation of positions.
    """
    v = np.asarray(lists)
    if v.ndim == 1:
        v = v[None]
    if dedupe:
        return np.argsort(v, axis=1, kind="stable")
    s = np.sort(v, axis=1)
    return (v[:, None, :] == s[:, :, None]).argmax(axis=-1)  # first index equal to sorted[r]


def attention_by_rank(attn_heads, lists, dedupe: bool = False):
    """Dataset-mean per-head attention, by input position and by size rank.

    Args:
      attn_heads: (N, L, H, S) last-query attention per head.
      lists: (N, S) the number values at each position.
      dedupe: False is the faithful first-occurrence reindexing, True the permutation (see
        the module docstring).
    Returns:
      ``(by_position (L, H, S), by_rank (L, H, S))``, both means over the N examples.
    """
    a = np.asarray(attn_heads, np.float64)
    if a.ndim != 4:
        raise ValueError(f"attn_heads must be (N, L, H, S), got shape {a.shape}")
    keys = rank_key_positions(lists, dedupe)
    if keys.shape != (a.shape[0], a.shape[3]):
        raise ValueError(f"lists of shape {np.shape(lists)} do not match attention {a.shape}")
    by_rank = np.take_along_axis(a, keys[:, None, None, :], axis=3)
    return a.mean(axis=0), by_rank.mean(axis=0)


def head_entropy(dist) -> np.ndarray:
    """Normalised Shannon entropy of each head's distribution over the last axis.

    Args:
      dist: (L, H, S) non-negative (dataset-averaged attention); renormalised to sum 1.
    Returns:
      (L, H) entropy / ln S, in [0, 1] (NaN for an all-zero row).
    """
    d = np.asarray(dist, np.float64)
    total = d.sum(axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = d / total
        terms = np.where(p > 0, -p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    h = terms.sum(axis=-1) / np.log(d.shape[-1])
    return np.where(total[..., 0] > 0, h, np.nan)


def heads_to_mask(entropy, fraction: float, policy: str = "low", rng=None,
                  faithful: bool = True) -> np.ndarray:
    """An (L, H) 0/1 head mask (0 = masked) for one pruning level.

    Args:
      entropy: (L, H) head entropies (only their order matters; unused for "random").
      fraction: the share of heads to mask, e.g. 0.4; ``p = int(fraction * L * H)``.
      policy: ``"random"`` or ``"low"`` (lowest entropy first, random tie-break).
      rng: a ``numpy.random.Generator`` or seed for the random choices.
      faithful: True masks ``p + 1`` heads (the original's off-by-one), False masks ``p``.
    """
    e = np.asarray(entropy, np.float64)
    if e.ndim != 2:
        raise ValueError(f"entropy must be (L, H), got shape {e.shape}")
    if policy not in ("random", "low"):
        raise ValueError(f"policy must be 'random' or 'low', got {policy!r}")
    rng = np.random.default_rng(rng)
    layers, heads = e.shape
    p = int(fraction * layers * heads)
    count = min(p + 1 if faithful else p, layers * heads)
    flat = np.ones(layers * heads)
    if policy == "random":
        chosen = rng.choice(layers * heads, size=count, replace=False)
    else:
        key = np.where(np.isnan(e.ravel()), np.inf, e.ravel())
        chosen = np.lexsort((rng.random(key.size), key))[:count]
    flat[chosen] = 0.0
    return flat.reshape(layers, heads)


def interventions_for_mask(mask) -> dict:
    """The interventions that apply the (L, H) 0/1 ``mask`` to ``model.apply`` (only the
    layers that mask a head); see :func:`jaxreason.hooks.head_mask_interventions`."""
    return head_mask_interventions(mask)
