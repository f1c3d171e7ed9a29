"""Running a model's blocks: unrolled, under ``nn.scan``, and under activation checkpointing,
with every hook behaving the same way in each.

A block reaches its hooks and its slice of the KV cache only through a *view*
(:class:`UnrolledView`, :class:`ScannedView`), never through shared Python state, because both
``nn.scan`` and ``nn.remat`` trace the block as a function of its own: a value the block put
into a Python dict would escape that trace. So each block returns what it captured and the
cache it wrote, and :func:`run_blocks` merges them into the call's context.

Unrolled, block ``i`` is the module ``h_{i}`` (``layers_{i}``) with its own parameters, and
its hooks are looked up by name, ``blocks.{i}.hook_x``, as in the rest of jaxreason.

Under scan (``config.scanned``), one module ``h`` (``layers``) holds every block's parameters
stacked on a leading L axis (logical axis ``layers``), the block body is traced once and the
layer index is a traced value. The capture and intervention requests are then turned into
per-layer data (:class:`ScanHooks`):

* interventions at a hook are grouped by the shape of their spec; a group's specs are stacked
  (``(n, ...)`` leaves) and the body takes layer ``l``'s spec by index and keeps its edit only
  where ``l`` is one of the group's layers (a select, not a Python branch), so editing one
  layer of 80 compiles to the same program as editing none, plus one edit;
* captures at a hook are grouped by request; each group writes into an ``(n + 1, ...)`` buffer
  carried through the scan (row ``j`` for its j-th layer, the last row for every other layer),
  so capturing one layer's attention pattern keeps one pattern, not L. The buffer shapes come
  from :func:`hook_struct`, which states each hook's shape and dtype.

The stacked cache (``(L, B, S, K, E)``) is carried through the scan and written in place.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxreason.hooks import (HOOK_TEMPLATES, HookRunner, block_name, check_spec, layer_of,
                             position_axis)
from jaxreason.models.config import dtype_of

# The hooks whose values only the explicit attention path materialises.
ATTENTION_INTERNALS = ("attn.hook_attn_scores", "attn.hook_pattern")

REMAT_POLICIES = {
    "block": None,  # save nothing inside the block: recompute all of it
    # keep the products with the weights (no batch dimensions: our dense layers flatten to
    # 2-D); recompute norms, activations and the attention scores and pattern
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def leaf_of(name: str) -> str:
    """``"blocks.3.attn.hook_k"`` -> ``"attn.hook_k"``."""
    return name.split(".", 2)[2]


def _touched(plan) -> set[str]:
    return set(plan.capture) | set(plan.interventions)


# ----------------------------------------------------------------------------- unrolled

class UnrolledView:
    """Block ``layer`` of an unrolled model: hooks by name, its own cache entry.

    Captures go into a runner of its own (the same plan), so they can be returned out of a
    checkpointed block instead of escaping its trace."""

    def __init__(self, ctx, layer: int):
        self.ctx, self.layer = ctx, layer
        outer = ctx.hooks
        self.runner = HookRunner(outer.plan, outer.slots, outer.length, outer.valid)
        self.new_kv = None
        touched = _touched(outer.plan)
        self.fused_attention = ctx_fused(ctx) and not any(
            block_name(layer, leaf) in touched for leaf in ATTENTION_INTERNALS)

    def hook(self, leaf: str, x):
        return self.runner(block_name(self.layer, leaf), x)

    def cache_kv(self, k, v):
        cache = self.ctx.cache
        if cache is None:
            return k, v
        at = (0, self.ctx.offset, 0, 0)
        k = jax.lax.dynamic_update_slice(cache.keys[self.layer],
                                         k.astype(cache.keys[self.layer].dtype), at)
        v = jax.lax.dynamic_update_slice(cache.values[self.layer],
                                         v.astype(cache.values[self.layer].dtype), at)
        self.new_kv = (k, v)
        return k, v

    def close(self, x):
        return x, {"captured": self.runner.captured, "kv": self.new_kv}


def ctx_fused(ctx) -> bool:
    """Whether the model may use fused attention at all (``attention_impl``)."""
    return ctx.attention_impl == "auto"


# ----------------------------------------------------------------------------- scanned

def hook_struct(config, leaf: str, b: int, t: int, s: int, z_dtype) -> jax.ShapeDtypeStruct:
    """Shape and dtype of block hook ``leaf``'s value in a call of B rows, T query positions
    and S key slots (the hook table of ``jaxreason.hooks``). ``z_dtype``: the dtype of the
    values the pattern mixes (the cache's dtype when decoding)."""
    dt = dtype_of(config.dtype)
    d, f = config.hidden_size, config.intermediate_size
    h, k, e = config.num_heads, config.num_kv_heads, config.head_dim
    table = {
        "hook_resid_pre": (b, t, d), "hook_attn_out": (b, t, d), "hook_resid_mid": (b, t, d),
        "hook_mlp_out": (b, t, d), "hook_resid_post": (b, t, d),
        "attn.hook_q": (b, t, h, e), "attn.hook_rot_q": (b, t, h, e),
        "attn.hook_k": (b, t, k, e), "attn.hook_v": (b, t, k, e), "attn.hook_rot_k": (b, t, k, e),
        "attn.hook_attn_scores": (b, h, t, s), "attn.hook_pattern": (b, h, t, s),
        "attn.hook_z": (b, t, h, e),
        "mlp.hook_pre": (b, t, f), "mlp.hook_pre_linear": (b, t, f), "mlp.hook_post": (b, t, f),
    }
    dtype = {"attn.hook_attn_scores": jnp.float32, "attn.hook_pattern": jnp.float32,
             "attn.hook_z": z_dtype}.get(leaf, dt)
    return jax.ShapeDtypeStruct(table[leaf], jnp.dtype(dtype))


@dataclasses.dataclass
class _EditGroup:
    name: str  # the first layer's hook name (for messages)
    layers: tuple[int, ...]
    spec: Any  # one spec shared by every layer, or the specs stacked on a leading axis
    stacked: bool
    slot: np.ndarray  # (L,) int32: layer -> row of the stacked spec
    member: np.ndarray  # (L,) bool


@dataclasses.dataclass
class _CaptureGroup:
    name: str
    layers: tuple[int, ...]
    slot: np.ndarray  # (L,) int32: layer -> buffer row (n for layers outside the group)
    struct: Any  # pytree of ShapeDtypeStruct of one layer's captured value


def _spec_key(spec):
    leaves, treedef = jax.tree_util.tree_flatten(spec)
    return treedef, tuple((np.shape(a), jnp.result_type(a)) for a in leaves)


class ScanHooks:
    """The capture and intervention requests of one call, as per-layer data for a scan."""

    def __init__(self, ctx, config, batch: int, t: int):
        plan, runner = ctx.hooks.plan, ctx.hooks
        self.ctx, self.runner, self.num_layers = ctx, runner, config.num_layers
        L = config.num_layers
        z_dtype = dtype_of(config.dtype) if ctx.cache is None else ctx.cache.values.dtype
        self.edits: dict[str, list[_EditGroup]] = {}
        by_leaf: dict[str, dict[Any, list[tuple[int, Any]]]] = {}
        for name, spec in plan.interventions.items():
            layer = layer_of(name)
            if layer is None:
                continue
            # shapes and concrete contents checked here, once, under the layer's own name
            check_spec(name, spec, hook_struct(config, leaf_of(name), batch, t, runner.length,
                                               z_dtype),
                       position_axis(name), runner.length, plan.runtime_checks)
            groups = by_leaf.setdefault(leaf_of(name), {})
            groups.setdefault(_spec_key(spec), []).append((layer, spec))
        for leaf, groups in by_leaf.items():
            for members in groups.values():
                members.sort(key=lambda m: m[0])
                layers = tuple(m[0] for m in members)
                specs = [m[1] for m in members]
                shared = all(s is specs[0] for s in specs)
                spec = specs[0] if shared else jax.tree_util.tree_map(
                    lambda *a: jnp.stack([jnp.asarray(x) for x in a]), *specs)
                slot = np.zeros(L, np.int32)
                slot[list(layers)] = np.arange(len(layers))
                member = np.zeros(L, bool)
                member[list(layers)] = True
                self.edits.setdefault(leaf, []).append(_EditGroup(
                    block_name(layers[0], leaf), layers, spec, not shared, slot, member))
        self.captures: dict[str, list[_CaptureGroup]] = {}
        cap_groups: dict[tuple[str, int], list[int]] = {}
        for name, request in plan.capture.items():
            layer = layer_of(name)
            if layer is not None:
                cap_groups.setdefault((leaf_of(name), id(request)), []).append(layer)
        quiet = HookRunner(dataclasses.replace(plan, runtime_checks=False), runner.slots,
                           runner.length, runner.valid)
        for (leaf, _), layers in cap_groups.items():
            layers = tuple(sorted(layers))
            name = block_name(layers[0], leaf)
            value = hook_struct(config, leaf, batch, t, runner.length, z_dtype)
            struct = jax.eval_shape(
                lambda x, n=name: quiet._capture(n, x, position_axis(n), layer=0), value)
            slot = np.full(L, len(layers), np.int32)
            slot[list(layers)] = np.arange(len(layers))
            self.captures.setdefault(leaf, []).append(_CaptureGroup(name, layers, slot, struct))
        self.fused_attention = ctx_fused(ctx) and not any(
            leaf in self.edits or leaf in self.captures for leaf in ATTENTION_INTERNALS)

    def initial_state(self) -> dict:
        """The scan's carried state besides the residual stream: capture buffers, cache."""
        bufs = {f"{leaf}#{j}": jax.tree_util.tree_map(
                    lambda s, n=len(g.layers): jnp.zeros((n + 1, *s.shape), s.dtype), g.struct)
                for leaf, groups in self.captures.items() for j, g in enumerate(groups)}
        cache = self.ctx.cache
        return {"captured": bufs,
                "cache": None if cache is None else (cache.keys, cache.values)}

    def apply(self, leaf: str, layer, x, state: dict):
        """Edit and record hook ``leaf`` of block ``layer`` (traced) inside the scan body."""
        axis = position_axis(leaf)
        runner = self.runner
        for g in self.edits.get(leaf, ()):
            if g.stacked:
                row = jnp.asarray(g.slot)[layer]
                spec = jax.tree_util.tree_map(lambda a, row=row: a[row], g.spec)
            else:
                spec = g.spec
            edited = spec.edit(x, runner.slots, axis)
            x = edited if len(g.layers) == self.num_layers else jnp.where(
                jnp.asarray(g.member)[layer], edited, x)
        for j, g in enumerate(self.captures.get(leaf, ())):
            value = runner._capture(g.name, x, axis, layer=layer)
            key = f"{leaf}#{j}"
            row = jnp.asarray(g.slot)[layer]

            def write(buf, v, g=g):
                if v.shape != buf.shape[1:]:
                    raise AssertionError(f"capture of {g.name!r}: value of shape {v.shape} "
                                         f"does not fit its scan buffer {buf.shape[1:]}; "
                                         "hook_struct is out of date")
                return jax.lax.dynamic_update_index_in_dim(buf, v.astype(buf.dtype), row, 0)
            state["captured"][key] = jax.tree_util.tree_map(write, state["captured"][key], value)
        return x

    def finish(self, state: dict) -> None:
        """Hand each requested layer's row of the buffers to the call's captures."""
        out = {}
        for leaf, groups in self.captures.items():
            for j, g in enumerate(groups):
                buf = state["captured"][f"{leaf}#{j}"]
                for row, layer in enumerate(g.layers):
                    out[block_name(layer, leaf)] = jax.tree_util.tree_map(
                        lambda b, row=row: b[row], buf)
        order = {t: i for i, t in enumerate(HOOK_TEMPLATES)}  # the forward order
        for name in sorted(out, key=lambda n: (layer_of(n), order["blocks.{i}." + leaf_of(n)])):
            self.runner.captured[name] = out[name]
        if state["cache"] is not None:
            self.ctx.new_kv = state["cache"]


class ScannedView:
    """One iteration of the scan: block ``layer`` (a traced index)."""

    def __init__(self, ctx, layer, state: dict):
        self.ctx, self.layer, self.state = ctx, layer, state
        self.scan = ctx.scan_hooks
        self.fused_attention = self.scan.fused_attention

    def hook(self, leaf: str, x):
        return self.scan.apply(leaf, self.layer, x, self.state)

    def cache_kv(self, k, v):
        if self.state["cache"] is None:
            return k, v
        keys, values = self.state["cache"]
        at = (self.layer, 0, self.ctx.offset, 0, 0)
        keys = jax.lax.dynamic_update_slice(keys, k[None].astype(keys.dtype), at)
        values = jax.lax.dynamic_update_slice(values, v[None].astype(values.dtype), at)
        self.state["cache"] = (keys, values)
        def take(a):
            return jax.lax.dynamic_index_in_dim(a, self.layer, 0, keepdims=False)
        return take(keys), take(values)

    def close(self, x):
        return (x, self.state), None


# ----------------------------------------------------------------------------- the stack

def open_block(ctx, layer: int | None, carry, xs):
    """``(view, x)`` at the start of a block's ``__call__(carry, xs)``.

    Unrolled blocks know their ``layer`` and get ``carry = x``; scanned blocks get
    ``layer=None``, ``carry = (x, state)`` and the traced layer index as ``xs``."""
    if layer is not None:
        return UnrolledView(ctx, layer), carry
    x, state = carry
    return ScannedView(ctx, xs, dict(state, captured=dict(state["captured"]))), x


def run_blocks(ctx, x, block_cls, config, unrolled_name: str, stacked_name: str):
    """Run the ``config.num_layers`` blocks on the residual stream ``x`` (B, T, D).

    ``block_cls(config, ctx, layer)`` is the family's block module; ``unrolled_name`` is the
    template of block i's module name (``"h_{i}"``), ``stacked_name`` the scanned module's."""
    cls = block_cls
    if config.remat != "none":
        # under scan, remat needs no CSE barrier (the loop already is one), and one costs speed
        cls = nn.remat(cls, policy=REMAT_POLICIES[config.remat],
                       prevent_cse=not config.scanned)
    ctx.attention_impl = config.attention_impl
    if not config.scanned:
        for i in range(config.num_layers):
            x, out = cls(config, ctx, i, name=unrolled_name.format(i=i))(x, None)
            ctx.hooks.captured.update(out["captured"])
            if out["kv"] is not None:
                ctx.new_kv.append(out["kv"])
        return x
    ctx.scan_hooks = ScanHooks(ctx, config, x.shape[0], x.shape[1])
    scan = nn.scan(cls, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
                   length=config.num_layers, metadata_params={nn.PARTITION_NAME: "layers"})
    (x, state), _ = scan(config, ctx, None, name=stacked_name)(
        (x, ctx.scan_hooks.initial_state()), jnp.arange(config.num_layers, dtype=jnp.int32))
    ctx.scan_hooks.finish(state)
    return x
