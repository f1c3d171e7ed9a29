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
import fnmatch
import functools
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax.experimental import checkify

from jaxreason.hooks import check_request_positions, make_plan, normalize_capture
from jaxreason.models.config import BaseConfig
from jaxreason.models.families import FAMILIES, config_classes, family_of
from jaxreason.models.layers import KVCache, build_context, finish_cache
from jaxreason.reductions import Reduction
from jaxreason.runtime_checks import check_range, is_concrete, raise_if_failed
from jaxreason.tree_utils import flatten, unwrap_params


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

        What is checked where. Names, shapes and dtypes of every argument are checked always,
        also under your own ``jax.jit``. The *contents* of index arrays are checked only when
        they are concrete (not traced): token ids (``0..V-1``), GPT-2 position ids (below
        ``max_position_embeddings``), intervention and capture positions (``0..S-1``),
        ``NeuronScale`` neurons (``0..F-1``) and the cache's free slots. Under your own
        ``jax.jit(model.apply)`` those arrays are tracers and an out-of-range index is not
        refused: a token id past the vocabulary gives NaN logits, a position past the
        sequence or a neuron past F edits nothing. So either check them before the jitted
        call, or use :meth:`jit_apply` (checks them inside the compiled program and raises),
        or jit :meth:`checked_apply`, which returns the error for you to raise.
        """
        return self._forward(params, input_ids, attention_mask, position_ids=position_ids,
                             capture=capture, interventions=interventions, cache=cache,
                             dropout_rng=dropout_rng)

    def checked_apply(self, params, input_ids, attention_mask=None, *, position_ids=None,
                      capture=None, interventions=None, cache: KVCache | None = None,
                      dropout_rng=None):
        """:meth:`apply` with the index checks staged into the program: returns
        ``(error, output)`` where ``error`` is a ``jax.experimental.checkify.Error``.

        Use it inside your own ``jax.jit`` (``capture`` static) and raise afterwards with
        ``error.throw()`` (or ``jaxreason.runtime_checks.raise_if_failed(error)``, a
        ``ValueError``): an out-of-range token id, position or neuron then names itself
        and the allowed range instead of giving NaN or editing nothing."""
        def run():
            return self._forward(params, input_ids, attention_mask, position_ids=position_ids,
                                 capture=capture, interventions=interventions, cache=cache,
                                 dropout_rng=dropout_rng, runtime_checks=True)
        return checkify.checkify(run)()

    def _forward(self, params, input_ids, attention_mask=None, *, position_ids=None,
                 capture=None, interventions=None, cache=None, dropout_rng=None,
                 runtime_checks: bool = False) -> ModelOutput:
        self._check_inputs(input_ids, attention_mask, position_ids, cache, runtime_checks)
        plan = self._plan(capture, interventions, runtime_checks)
        window = getattr(self.config, "sliding_window", None)
        ctx, mask, key_valid, key_pos = build_context(plan, input_ids, attention_mask,
                                                      position_ids, cache, window)
        self._check_positions(ctx.positions, runtime_checks)
        rngs = None if dropout_rng is None else {"dropout": dropout_rng}
        tree = unwrap_params(params)
        try:
            logits = self.module.apply({"params": tree}, ctx, input_ids, rngs=rngs)
        except flax.errors.FlaxError:
            self.check_params(tree)  # a clearer message when the tree is not this model's
            raise
        return ModelOutput(logits=logits, captured=ctx.hooks.captured,
                           cache=finish_cache(ctx, mask, key_valid, key_pos))

    def jit_apply(self, params, input_ids, attention_mask=None, *, position_ids=None,
                  capture=None, interventions=None, cache=None) -> ModelOutput:
        """``apply`` under ``jax.jit``; one compiled program per set of captured names and
        reduction configurations (positions and reduction arrays are traced arguments).

        Everything :meth:`apply` checks on concrete values is checked here too, although the
        arrays are traced: index checks run inside the compiled program (``checkify``) and a
        failure raises ``ValueError`` after the call, naming the bad value and the allowed
        range (token id, position id, capture or intervention position, neuron)."""
        self._check_shapes(input_ids, attention_mask, position_ids)  # contents: in the program
        cap = normalize_capture(capture)
        check_request_positions(cap, interventions,
                                input_ids.shape[1] if cache is None else cache.max_len,
                                batch=input_ids.shape[0])
        key = tuple(sorted(cap))
        requests = tuple(cap[k] if cap[k] is None or isinstance(cap[k], Reduction)
                         else jnp.asarray(cap[k]) for k in key)
        err, out = _jitted_apply(self, params, input_ids, attention_mask, position_ids,
                                 interventions, cache, capture_key=key,
                                 capture_requests=requests)
        raise_if_failed(err)
        return out

    # ------------------------------------------------------------------ checks

    def check_params(self, params) -> None:
        """Refuse a parameter tree that is not this model's, naming the first leaf that is
        missing, unexpected or of the wrong shape (LoRA adapter leaves are allowed)."""
        tree = unwrap_params(params)
        if not isinstance(tree, dict):
            raise TypeError(f"params must be the model's parameter tree (a dict), got "
                            f"{type(tree).__name__}")
        got = flatten(tree)
        want = self._param_shapes_flat
        where = f"params do not fit this {family_of(self).title} config"
        missing = [p for p in want if p not in got]
        family = family_of(self)
        if missing and self.config.scanned != (family.stacked_block in tree):
            have, need = (("unrolled", "stacked") if self.config.scanned
                          else ("stacked", "unrolled"))
            raise ValueError(f"{where}: the params hold the blocks {have} but this model runs "
                             f"them {need} (scan_layers={self.config.scan_layers}, "
                             f"{self.config.num_layers} layers); convert them with "
                             f"jaxreason.models.layout.to_layout(model, params)")
        if missing:
            raise ValueError(f"{where}: leaf {'/'.join(missing[0])} of shape "
                             f"{want[missing[0]]} is missing ({len(missing)} missing in all)")
        extra = [p for p in got if p not in want and not p[-1].startswith("lora_")]
        if extra:
            raise ValueError(f"{where}: leaf {'/'.join(extra[0])} is not a parameter of this "
                             f"model ({len(extra)} unexpected in all)")
        for path, shape in want.items():
            if tuple(np.shape(got[path])) != shape:
                raise ValueError(f"{where}: leaf {'/'.join(path)} has shape "
                                 f"{tuple(np.shape(got[path]))}, expected {shape}")

    @functools.cached_property
    def _param_shapes_flat(self) -> dict:
        return {p: tuple(v.shape) for p, v in flatten(self.param_shapes()).items()}

    def _plan(self, capture, interventions, runtime_checks: bool):
        try:
            return make_plan(capture, interventions, self.hook_names,
                             runtime_checks=runtime_checks)
        except ValueError as e:
            pattern, hint = _other_family_hint(self, capture, interventions)
            head = f"unknown hook name {pattern!r}."
            if hint and str(e).startswith(head):
                raise ValueError(f"{head[:-1]}: {hint}{str(e)[len(head):]}") from None
            raise

    def _check_inputs(self, input_ids, attention_mask, position_ids, cache, runtime=False):
        shape = self._check_shapes(input_ids, attention_mask, position_ids)
        vocab = self.config.vocab_size
        check_range(input_ids, 0, vocab, "token id", f"is outside the vocabulary 0..{vocab - 1}",
                    runtime=runtime)
        if cache is None:
            return
        t, free = shape[1], cache.max_len - shape[1]
        if is_concrete(cache.length):
            if int(cache.length) > free:
                raise ValueError(f"the cache has {cache.max_len - int(cache.length)} free slots "
                                 f"but {t} tokens were given; create a larger cache")
        else:
            check_range(cache.length, 0, free + 1, "the cache has",
                        f"of its {cache.max_len} slots filled, leaving fewer free slots than "
                        f"the {t} tokens given; create a larger cache", runtime=runtime)

    def _check_shapes(self, input_ids, attention_mask, position_ids) -> tuple[int, int]:
        shape = getattr(input_ids, "shape", None)
        if shape is None:
            raise TypeError(f"input_ids must be a (batch, seq) integer array (numpy or jax), "
                            f"got {type(input_ids).__name__}")
        if len(shape) != 2:
            raise ValueError(f"input_ids must be a (batch, seq) array, got shape {shape}")
        if not jnp.issubdtype(input_ids.dtype, jnp.integer):
            raise ValueError(f"input_ids must be integers, got dtype {input_ids.dtype}")
        for name, arr in (("attention_mask", attention_mask), ("position_ids", position_ids)):
            if arr is not None and tuple(np.shape(arr)) != tuple(shape):
                raise ValueError(f"{name} has shape {tuple(np.shape(arr))} but input_ids has "
                                 f"shape {tuple(shape)}")
        return tuple(shape)

    def _check_positions(self, positions, runtime=False):
        family = family_of(self)
        limit = family.position_limit(self.config)
        if limit is not None:
            check_range(positions, 0, limit, "position",
                        f"exceeds {family.title}'s learned positions 0..{limit - 1}",
                        runtime=runtime)


def _other_family_hint(model: CausalLM, capture, interventions) -> tuple[str | None, str]:
    """For a hook name this model lacks but another family has: the name and which
    families have it."""
    patterns = list(normalize_capture(capture)) + list(interventions or {})
    for pattern in patterns:
        if expand_or_none(pattern, model.hook_names):
            continue
        have = [f.title for f in FAMILIES.values()
                if expand_or_none(pattern, f.hook_names(model.config.num_layers))]
        if have:
            return pattern, (f"it exists on {' and '.join(have)} models only, and this model "
                             f"is {family_of(model).title}.")
    return None, ""


def expand_or_none(pattern: str, names: tuple[str, ...]) -> bool:
    """Whether a hook name or pattern matches any of ``names``."""
    return pattern in names or any(fnmatch.fnmatchcase(n, pattern) for n in names)


@functools.partial(jax.jit, static_argnames=("model",))
def _jitted_init(model: CausalLM, rng):
    return nn.meta.unbox(model._abstract_call(rng))["params"]


@functools.partial(jax.jit, static_argnames=("model", "capture_key"))
def _jitted_apply(model: CausalLM, params, input_ids, attention_mask, position_ids, interventions,
                  cache, capture_key, capture_requests):
    """One compiled program per (equal) model and capture request, shared across instances;
    it returns ``(checkify error, output)``.

    ``capture_requests`` is a pytree argument: a reduction's static fields belong to its tree
    structure (and so to the program's key), its arrays are traced."""
    capture = dict(zip(capture_key, capture_requests)) if capture_key else None
    return model.checked_apply(params, input_ids, attention_mask, position_ids=position_ids,
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
