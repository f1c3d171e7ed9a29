"""The model with planning tokens: the base model, its new rows, and a frozen bias on the new
logits.

The original wraps the model: new ids look up a separate table ``new_embedding [n_new, D]``
and the head is ``concat(W_lm h, new_linear(h))`` with a bias on the new logits only. Here the
new rows are appended to the embedding and head (:func:`jaxreason.train.vocab.add_tokens`),
which computes the same function, and the training masks keep the old rows out of the
gradient, the clipping norm and the update (``peft.mode`` ``new-embeddings``), so the new rows
train exactly as a separate table would. The frozen bias is a constant, not a parameter: the
objective adds it to the last ``n_new`` logits in training, and :class:`BiasedLM` adds it in
generation and analysis.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from jaxreason.models.lm import CausalLM


def add_logit_bias(logits, bias):
    """``logits`` (..., V) with ``bias`` (n,) added to the last n entries (n = 0: unchanged)."""
    if len(bias) == 0:
        return logits
    b = jnp.asarray(bias, logits.dtype)
    return logits.at[..., -b.shape[0]:].add(b)


@dataclasses.dataclass(frozen=True)
class BiasedLM(CausalLM):
    """A :class:`CausalLM` whose logits get a constant ``logit_bias`` on their last entries;
    hashable like the base class, so generation compiles it as any model."""

    logit_bias: tuple[float, ...] = ()

    def apply(self, params, input_ids, attention_mask=None, **kwargs):
        out = super().apply(params, input_ids, attention_mask, **kwargs)
        return out.replace(logits=add_logit_bias(out.logits, self.logit_bias))

    def checked_apply(self, params, input_ids, attention_mask=None, **kwargs):
        err, out = super().checked_apply(params, input_ids, attention_mask, **kwargs)
        return err, out.replace(logits=add_logit_bias(out.logits, self.logit_bias))


def with_bias(model: CausalLM, bias) -> CausalLM:
    """``model`` whose new logits carry ``bias`` (the model itself when there is none)."""
    bias = tuple(float(b) for b in bias)
    if not bias or not any(bias):
        return CausalLM(model.config)
    return BiasedLM(model.config, bias)
