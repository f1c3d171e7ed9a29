"""The public model object: one interface over both families.

``CausalLM`` pairs a frozen config with its Flax module and exposes the call notebooks and
studies rely on::

    model, params = jaxreason.models.from_config(GPT2Config.tiny(), seed=0)
    out = model.apply(params, input_ids, attention_mask=mask,
                      capture={"blocks.*.hook_resid_post"},
                      interventions={"blocks.1.hook_resid_post": Replace(vals, positions)})
    out.logits        # (B, T, V) float32
    out.captured      # {"blocks.0.hook_resid_post": (B, T, D), ...}

``apply`` is a pure function of its array arguments, so it can be wrapped in ``jax.jit``
(with ``capture`` static), differentiated, vmapped or sharded. ``model.jit_apply`` is a
convenience that does the jit for you and caches one compiled program per capture request.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxreason.hooks import check_request_positions, is_concrete, make_plan, normalize_capture
from jaxreason.models.config import BaseConfig
from jaxreason.models.families import config_classes, family_of
from jaxreason.models.layers import KVCache, build_context, finish_cache
from jaxreason.reductions import Reduction
from jaxreason.tree_utils import unwrap_params


@struct.dataclass
class ModelOutput:
    """What a forward pass returns: logits, the requested captures, and the updated cache."""

    logits: jax.Array  # (B, T, V) float32
    captured: dict = struct.field(default_factory=dict)
    cache: KVCache | None = None


@dataclasses.dataclass(frozen=True)
class CausalLM:
    """A decoder-only language model with hook points. Hashable, so it can be jit-static."""

    config: BaseConfig

    @property
    def family(self) -> str:
        return self.config.family

    @functools.cached_property
    def module(self) -> nn.Module:
        return family_of(self).module_class(self.config)

    @functools.cached_property
    def hook_names(self) -> tuple[str, ...]:
        """Every valid hook name of this model, in forward order."""
        return family_of(self).hook_names(self.config.num_layers)

    # ------------------------------------------------------------------ parameters

    def _abstract_call(self, rng, t: int = 2):
        ids = jnp.zeros((1, t), jnp.int32)
        ctx, *_ = build_context(make_plan(None, None, self.hook_names), ids, None, None, None,
                                None)
        return self.module.init(rng, ctx, ids)

    def init(self, rng) -> dict:
        """Fresh random parameters (the bare tree, logical-axis boxes removed).

        Jitted: drawing every tensor eagerly costs one dispatch per op, seconds on a CPU."""
        return _jitted_init(self, rng)

    def logical_axes(self) -> dict:
        """A tree like the params whose leaves are ``PartitionSpec`` of logical axis names."""
        boxed = jax.eval_shape(self._abstract_call, jax.random.PRNGKey(0))
        return nn.get_partition_spec(boxed)["params"]

    def param_shapes(self) -> dict:
        """``ShapeDtypeStruct`` tree of the parameters without allocating them."""
        return jax.eval_shape(self.init, jax.random.PRNGKey(0))

    def init_cache(self, batch: int, max_len: int, dtype=None) -> KVCache:
        """An empty KV cache with ``max_len`` slots per row."""
        return KVCache.create(self.config, batch, max_len, dtype)

    # ------------------------------------------------------------------ forward

    def apply(self, params, input_ids, attention_mask=None, *, position_ids=None,
              capture=None, interventions=None, cache: KVCache | None = None,
              dropout_rng=None) -> ModelOutput:
        """Run the model.

        Args:
          params: the parameter tree (or ``{"params": tree}``).
          input_ids: (B, T) int token ids.
          attention_mask: (B, T), 1 for real tokens and 0 for padding (left or right).
            Position ids follow it, so each real token gets the same result as without padding.
          position_ids: (B, T) explicit position ids overriding the mask-derived ones.
          capture: hook names or patterns to record, or a dict name -> request: None (the
            whole value), positions (P,) or (B, P) to record only those query positions, or a
            reduction (``TopK``, ``Norm``, ``Mean`` from ``jaxreason.reductions``) computed in
            the forward pass, whose result is captured instead. The names and a reduction's
            configuration are static; under ``jit_apply`` arrays (positions, scales) are not.
          interventions: dict name/pattern -> spec from ``jaxreason.hooks``.
          cache: a :class:`KVCache`; the tokens are appended after its filled slots.
          dropout_rng: a PRNG key that turns on training-time dropout (LoRA dropout).
        Returns:
          :class:`ModelOutput` with ``logits`` (B, T, V), ``captured`` and the new ``cache``.
        """
        self._check_inputs(input_ids, attention_mask, position_ids, cache)
        plan = make_plan(capture, interventions, self.hook_names)
        window = getattr(self.config, "sliding_window", None)
        ctx, mask, key_valid, key_pos = build_context(plan, input_ids, attention_mask,
                                                      position_ids, cache, window)
        self._check_positions(ctx.positions)
        rngs = None if dropout_rng is None else {"dropout": dropout_rng}
        logits = self.module.apply({"params": unwrap_params(params)}, ctx, input_ids, rngs=rngs)
        return ModelOutput(logits=logits, captured=ctx.hooks.captured,
                           cache=finish_cache(ctx, mask, key_valid, key_pos))

    def jit_apply(self, params, input_ids, attention_mask=None, *, position_ids=None,
                  capture=None, interventions=None, cache=None) -> ModelOutput:
        """``apply`` under ``jax.jit``; one compiled program per set of captured names and
        reduction configurations (positions and reduction arrays are traced arguments)."""
        cap = normalize_capture(capture)
        check_request_positions(cap, interventions,
                                input_ids.shape[1] if cache is None else cache.max_len)
        key = tuple(sorted(cap))
        requests = tuple(cap[k] if cap[k] is None or isinstance(cap[k], Reduction)
                         else jnp.asarray(cap[k]) for k in key)
        return _jitted_apply(self, params, input_ids, attention_mask, position_ids,
                             interventions, cache, capture_key=key, capture_requests=requests)

    # ------------------------------------------------------------------ checks

    def _check_inputs(self, input_ids, attention_mask, position_ids, cache):
        shape = getattr(input_ids, "shape", None)
        if shape is None or len(shape) != 2:
            raise ValueError(f"input_ids must be a (batch, seq) array, got shape {shape}")
        if not jnp.issubdtype(input_ids.dtype, jnp.integer):
            raise ValueError(f"input_ids must be integers, got dtype {input_ids.dtype}")
        for name, arr in (("attention_mask", attention_mask), ("position_ids", position_ids)):
            if arr is not None and tuple(arr.shape) != tuple(shape):
                raise ValueError(f"{name} has shape {tuple(arr.shape)} but input_ids has "
                                 f"shape {tuple(shape)}")
        if is_concrete(input_ids) and input_ids.size:
            ids = np.asarray(input_ids)
            if ids.min() < 0 or ids.max() >= self.config.vocab_size:
                bad = int(ids.max() if ids.max() >= self.config.vocab_size else ids.min())
                raise ValueError(f"token id {bad} is outside the vocabulary 0.."
                                 f"{self.config.vocab_size - 1}")
        if cache is not None and is_concrete(cache.length):
            if int(cache.length) + shape[1] > cache.max_len:
                raise ValueError(f"the cache has {cache.max_len - int(cache.length)} free slots "
                                 f"but {shape[1]} tokens were given; create a larger cache")

    def _check_positions(self, positions):
        family = family_of(self)
        limit = family.position_limit(self.config)
        if limit is not None and is_concrete(positions) and positions.size:
            top = int(np.asarray(positions).max())
            if top >= limit:
                raise ValueError(f"position {top} exceeds {family.title}'s learned positions "
                                 f"0..{limit - 1}")


@functools.partial(jax.jit, static_argnames=("model",))
def _jitted_init(model: CausalLM, rng):
    return nn.meta.unbox(model._abstract_call(rng))["params"]


@functools.partial(jax.jit, static_argnames=("model", "capture_key"))
def _jitted_apply(model: CausalLM, params, input_ids, attention_mask, position_ids, interventions,
                  cache, capture_key, capture_requests):
    """One compiled program per (equal) model and capture request, shared across instances.

    ``capture_requests`` is a pytree argument: a reduction's static fields belong to its tree
    structure (and so to the program's key), its arrays are traced."""
    capture = dict(zip(capture_key, capture_requests)) if capture_key else None
    return model.apply(params, input_ids, attention_mask, position_ids=position_ids,
                       capture=capture, interventions=interventions, cache=cache)


def from_config(config: BaseConfig, seed: int = 0) -> tuple[CausalLM, dict]:
    """A fresh randomly initialised model and its parameters."""
    if not isinstance(config, config_classes()):
        names = " or ".join(c.__name__ for c in config_classes())
        raise TypeError(f"config must be a {names}, got {type(config).__name__}")
    model = CausalLM(config)
    return model, model.init(jax.random.PRNGKey(seed))


def count_params(params: Any) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(params))
