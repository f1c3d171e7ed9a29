"""Hook points: the names of every readable and editable activation, and the capture and
intervention machinery that runs at them.

Names follow TransformerLens, because published interpretability code is keyed by them.
Shapes use one alphabet: B batch, T query positions of this call, S key slots (T for a plain
forward, the cache length when decoding with a KV cache), D model width, H query heads,
K key/value heads, E head width, F MLP width, V vocabulary.

==========================================  ==============  =====================================
hook name                                   shape           what it is
==========================================  ==============  =====================================
``hook_embed``                              (B, T, D)       token embeddings
``hook_pos_embed``                          (B, T, D)       learned position embeddings (GPT-2)
``blocks.{i}.hook_resid_pre``               (B, T, D)       residual stream entering block i
``blocks.{i}.attn.hook_q``                  (B, T, H, E)    queries (before RoPE)
``blocks.{i}.attn.hook_k``                  (B, T, K, E)    keys (before RoPE)
``blocks.{i}.attn.hook_v``                  (B, T, K, E)    values
``blocks.{i}.attn.hook_rot_q``              (B, T, H, E)    queries after RoPE (Llama)
``blocks.{i}.attn.hook_rot_k``              (B, T, K, E)    keys after RoPE (Llama)
``blocks.{i}.attn.hook_attn_scores``        (B, H, T, S)    scaled, masked scores (float32)
``blocks.{i}.attn.hook_pattern``            (B, H, T, S)    attention probabilities (float32)
``blocks.{i}.attn.hook_z``                  (B, T, H, E)    per-head mix of values
``blocks.{i}.hook_attn_out``                (B, T, D)       attention output projection
``blocks.{i}.hook_resid_mid``               (B, T, D)       residual after attention
``blocks.{i}.mlp.hook_pre``                 (B, T, F)       MLP pre-activation (Llama: gate)
``blocks.{i}.mlp.hook_pre_linear``          (B, T, F)       up projection (Llama)
``blocks.{i}.mlp.hook_post``                (B, T, F)       neuron activations into down proj
``blocks.{i}.hook_mlp_out``                 (B, T, D)       MLP output
``blocks.{i}.hook_resid_post``              (B, T, D)       residual stream leaving block i
``ln_final.hook_normalized``                (B, T, D)       final norm output (before the head)
==========================================  ==============  =====================================

Design: a hook site in the model is one call, ``x = hooks("blocks.3.hook_resid_post", x)``.
What happens there is decided by two explicit arguments of the forward pass, never by global
state, so everything works under ``jit``, ``grad``, ``vmap`` and sharding:

* ``capture``: which names to record (a set of names or ``fnmatch`` patterns, or a dict from
  name/pattern to a request: None for the whole value, the positions to keep, or a reduction
  spec). The names are static: the compiled program only contains the captures asked for,
  and capturing nothing is the same program as a plain forward.
* Reductions (:class:`TopK`, :class:`Norm`, :class:`Mean`, defined in
  ``jaxreason.reductions``) summarise a value inside the compiled program, so F-wide
  activations never leave the device: ``capture={"blocks.*.mlp.hook_post": TopK(20,
  scale=norms)}`` with ``norms`` (L, F) records, per layer and position, the 20 neurons with
  the largest ``|a_i| * norms[l, i]`` as ``{"indices": (B, T, 20), "scores": (B, T, 20)}``.
  A spec's arrays are traced (a new ``norms`` reuses the program), its ``k`` is static.
  Reduced values are position-first (positions on axis 1) for every hook.
* ``interventions``: a dict from name/pattern to a spec (:class:`Replace`, :class:`Add`,
  :class:`Scale`, :class:`Zero`, :class:`NeuronScale`, :class:`HeadMask`, :class:`Apply`).
  Specs are pytrees, so their arrays may be traced values and gradients flow through them.

Positions are absolute slot indices: the column of the token in the (padded) input array, plus
the number of slots already in the KV cache when decoding. They therefore stay correct under
left padding and across cached decoding steps. Captured values are taken after any
intervention at the same site (what flows downstream).
"""

from __future__ import annotations

import abc
import dataclasses
import difflib
import fnmatch
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

# the reduction specs are part of the capture vocabulary: importable from here too
from jaxreason.reductions import Mean, Norm, Reduction, TopK, as_arrays  # noqa: F401
from jaxreason.runtime_checks import check_range

# Every hook template, in forward order. Each model family has all of them or a subset
# (``jaxreason.models.family.Family.hook_templates``); ``{i}`` is the block index.
HOOK_TEMPLATES: tuple[str, ...] = (
    "hook_embed",
    "hook_pos_embed",
    "blocks.{i}.hook_resid_pre",
    "blocks.{i}.attn.hook_q",
    "blocks.{i}.attn.hook_k",
    "blocks.{i}.attn.hook_v",
    "blocks.{i}.attn.hook_rot_q",
    "blocks.{i}.attn.hook_rot_k",
    "blocks.{i}.attn.hook_attn_scores",
    "blocks.{i}.attn.hook_pattern",
    "blocks.{i}.attn.hook_z",
    "blocks.{i}.hook_attn_out",
    "blocks.{i}.hook_resid_mid",
    "blocks.{i}.mlp.hook_pre",
    "blocks.{i}.mlp.hook_pre_linear",
    "blocks.{i}.mlp.hook_post",
    "blocks.{i}.hook_mlp_out",
    "blocks.{i}.hook_resid_post",
    "ln_final.hook_normalized",
)


def hook_names(templates, num_layers: int) -> tuple[str, ...]:
    """Every hook name of a model that has ``templates`` (a subset of
    :data:`HOOK_TEMPLATES`), in the order the forward pass reaches them."""
    have = set(templates)
    front = [t for t in HOOK_TEMPLATES if t in have and "{i}" not in t
             and not t.startswith("ln_final")]
    block = [t for t in HOOK_TEMPLATES if t in have and "{i}" in t]
    names = list(front)
    for i in range(num_layers):
        names += [t.format(i=i) for t in block]
    names.append("ln_final.hook_normalized")
    return tuple(names)


def position_axis(name: str) -> int:
    """The axis of a hook's value that indexes query positions."""
    return 2 if name.endswith(("hook_attn_scores", "hook_pattern")) else 1


def block_name(i: int, leaf: str) -> str:
    """``block_name(3, "hook_resid_post") == "blocks.3.hook_resid_post"``."""
    return f"blocks.{i}.{leaf}"


def layer_of(name: str) -> int | None:
    """The block index of a ``blocks.{i}...`` hook name; None for hooks outside the blocks."""
    parts = name.split(".")
    if len(parts) > 2 and parts[0] == "blocks" and parts[1].isdigit():
        return int(parts[1])
    return None


def hidden_state_hook(index: int, num_layers: int) -> str:
    """The hook holding HF ``output_hidden_states[index]``: 0 is the embedding output (the
    residual entering block 0), ``1 <= index < L`` the residual after block ``index - 1``,
    and ``L`` the final norm's output (HF puts the normed state last, not the raw one)."""
    if not 0 <= index <= num_layers:
        raise ValueError(f"hidden-state index {index} is outside 0..{num_layers} "
                         f"(a model with {num_layers} blocks)")
    if index == 0:
        return block_name(0, "hook_resid_pre")
    if index == num_layers:
        return "ln_final.hook_normalized"
    return block_name(index - 1, "hook_resid_post")


def expand_names(pattern: str, valid: tuple[str, ...], what: str = "hook") -> list[str]:
    """Names matching an exact name or ``fnmatch`` pattern; a clear error when none do."""
    if pattern in valid:
        return [pattern]
    matched = [n for n in valid if fnmatch.fnmatchcase(n, pattern)]
    if matched:
        return matched
    close = difflib.get_close_matches(pattern, valid, n=3)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    examples = ", ".join(valid[:4])
    raise ValueError(f"unknown {what} name {pattern!r}.{hint} Valid names look like "
                     f"{examples}, ... ({len(valid)} in all; see jaxreason.hooks).")


# ----------------------------------------------------------------------------- positions

def check_positions(positions, length: int, where: str, *, batch: int | None = None,
                    runtime: bool = False) -> None:
    """Refuse positions that are not integer slots of ``[0, length)`` in shape (P,) or (B, P).

    Shapes and dtypes are checked even for traced positions; traced contents only when
    ``runtime`` (a checkified program, see ``jaxreason.runtime_checks``)."""
    if positions is None:
        return
    shape = np.shape(positions)
    dtype = positions.dtype if hasattr(positions, "dtype") else np.asarray(positions).dtype
    if len(shape) not in (1, 2):
        raise ValueError(f"{where}: positions must have shape (P,) or (B, P), got {shape}")
    if not np.issubdtype(dtype, np.integer) and not (np.size(positions) == 0):
        raise ValueError(f"{where}: positions must be integer slots, got dtype {dtype}")
    if batch is not None and len(shape) == 2 and shape[0] != batch:
        raise ValueError(f"{where}: positions of shape {shape} have {shape[0]} rows but the "
                         f"batch has {batch}; give (P,) for every row or ({batch}, P)")
    check_range(positions, 0, length, f"{where}: position",
                f"is outside the sequence; valid positions are 0..{length - 1}", runtime=runtime)


def check_request_positions(capture, interventions, length: int,
                            batch: int | None = None) -> None:
    """Check the concrete positions of a capture request and of intervention specs up front,
    before ``jit`` turns them into tracers whose contents only a runtime check can see."""
    for pattern, request in normalize_capture(capture).items():
        positions = request.positions if isinstance(request, Reduction) else request
        check_positions(positions, length, f"capture of {pattern!r}", batch=batch)
    for pattern, spec in (interventions or {}).items():
        check_positions(getattr(spec, "positions", None), length, f"intervention at {pattern!r}",
                        batch=batch)


def _match(positions, slots, batch: int):
    """(B, P, T) bool: does requested position p equal slot t of this call."""
    p = jnp.asarray(positions, jnp.int32)
    if p.ndim == 1:
        p = jnp.broadcast_to(p[None], (batch, p.shape[0]))
    return p[:, :, None] == slots[None, None, :]


def _move_pos_first(x, axis: int):
    """Bring (B, ..., T at ``axis``, ...) to (B, T, ...) so one code path serves all hooks."""
    return jnp.moveaxis(x, axis, 1)


def _move_pos_back(x, axis: int):
    return jnp.moveaxis(x, 1, axis)


def _gather(xt, positions, slots):
    """(B, T, ...) position-first -> (B, P, ...) at the requested positions, and (B, P) bool:
    whether each position is one of this call's slots.

    A position not present in this call's slots yields zeros (used while decoding, where each
    step only holds one slot)."""
    match = _match(positions, slots, xt.shape[0])  # (B, P, T)
    idx = jnp.argmax(match, axis=-1)  # (B, P)
    hit = match.any(-1)
    expand = (1,) * (xt.ndim - 2)
    taken = jnp.take_along_axis(xt, idx.reshape(idx.shape + expand), axis=1)
    return jnp.where(hit.reshape(hit.shape + expand), taken, 0), hit


def _select(x, positions, slots, axis: int):
    """Gather the requested positions of a hook value: (B, P, ...) in position-first layout."""
    return _gather(_move_pos_first(x, axis), positions, slots)[0]


# ----------------------------------------------------------------------------- interventions

class Intervention(abc.ABC):
    """Base class of intervention specs. ``edit(x, slots, axis)`` returns the new value."""

    positions: Any = None

    @abc.abstractmethod
    def edit(self, x, slots, axis):
        """Return the edited hook value; ``axis`` is the value's position axis."""

    def _where(self, x, slots, axis, new_at_positions):
        """Put ``new_at_positions(x_at_positions)`` back at the spec's positions (all when None)."""
        if self.positions is None:
            return new_at_positions(x, None)
        xt = _move_pos_first(x, axis)
        match = _match(self.positions, slots, xt.shape[0])  # (B, P, T)
        hit = match.any(1)  # (B, T)
        src = jnp.argmax(match, axis=1)  # (B, T): which requested position lands on slot t
        expand = (1,) * (xt.ndim - 2)
        new = new_at_positions(xt, src)
        out = jnp.where(hit.reshape(hit.shape + expand), new, xt)
        return _move_pos_back(out, axis)


def _gather_values(values, src, like):
    """values (B, P, ...) -> (B, T, ...) by ``src`` (B, T) index into P."""
    v = jnp.asarray(values)
    if v.ndim < like.ndim:
        raise ValueError(f"intervention values of shape {v.shape} need a batch and a position "
                         f"axis to match a hook value of shape {like.shape}")
    v = jnp.broadcast_to(v, (like.shape[0],) + v.shape[1:])
    return jnp.take_along_axis(v, src.reshape(src.shape + (1,) * (v.ndim - 2)), axis=1)


def _check_values_shape(values, x, axis, positions, name):
    if not hasattr(values, "shape"):
        return
    xt_shape = list(x.shape)
    pos_len = xt_shape[axis] if positions is None else np.shape(positions)[-1]
    want = [xt_shape[0], pos_len] + [d for i, d in enumerate(xt_shape) if i not in (0, axis)]
    got = list(values.shape)
    if positions is None:
        want_layout = xt_shape
        try:
            np.broadcast_shapes(tuple(got), tuple(want_layout))
            return
        except ValueError:
            pass
        raise ValueError(f"{name}: values of shape {tuple(got)} do not fit the hook value of "
                         f"shape {tuple(want_layout)}")
    if len(got) != len(want) or any(g not in (w, 1) for g, w in zip(got, want)):
        raise ValueError(f"{name}: values of shape {tuple(got)} do not fit; expected "
                         f"{tuple(want)} (batch, positions, then the hook's other axes)")


@struct.dataclass
class Replace(Intervention):
    """Overwrite the hook value with ``values`` at ``positions`` (all positions when None).

    ``values``: (B, P, ...) in position-first layout (attention patterns: (B, P, H, S)), or the
    full hook shape when ``positions`` is None. ``positions``: (P,) or (B, P) absolute slots.
    Gradients flow into ``values``.
    """

    values: Any
    positions: Any = None

    def edit(self, x, slots, axis):
        if self.positions is None:
            return jnp.broadcast_to(jnp.asarray(self.values, x.dtype), x.shape)
        return self._where(x, slots, axis,
                           lambda xt, src: _gather_values(self.values, src, xt).astype(x.dtype))


@struct.dataclass
class Add(Intervention):
    """Add ``values`` (a steering vector, say) at ``positions``; shapes as in :class:`Replace`."""

    values: Any
    positions: Any = None

    def edit(self, x, slots, axis):
        if self.positions is None:
            return x + jnp.asarray(self.values, x.dtype)
        return self._where(x, slots, axis, lambda xt, src: xt + _gather_values(
            self.values, src, xt).astype(x.dtype))


@struct.dataclass
class Scale(Intervention):
    """Multiply the hook value by ``factor`` (a scalar or broadcastable array) at ``positions``."""

    factor: Any
    positions: Any = None

    def edit(self, x, slots, axis):
        f = jnp.asarray(self.factor, x.dtype)
        return self._where(x, slots, axis, lambda xt, src: xt * f)


@struct.dataclass
class Zero(Intervention):
    """Zero-ablate the hook value at ``positions`` (all positions when None)."""

    positions: Any = None

    def edit(self, x, slots, axis):
        return self._where(x, slots, axis, lambda xt, src: jnp.zeros_like(xt))


@struct.dataclass
class NeuronScale(Intervention):
    """Scale chosen neurons (last axis) of ``mlp.hook_post``; ``factor=0`` ablates them.

    ``neurons``: (N,) indices, or (B, N) per example. ``factor``: scalar or (N,)/(B, N).
    """

    neurons: Any
    factor: Any = 0.0
    positions: Any = None

    def edit(self, x, slots, axis):
        n = jnp.asarray(self.neurons, jnp.int32)
        width = x.shape[-1]
        onehot = jax.nn.one_hot(n, width, dtype=x.dtype)  # (..., N, F)
        f = jnp.broadcast_to(jnp.asarray(self.factor, x.dtype), n.shape)
        # multiplier per neuron: 1 where untouched, factor where chosen
        mult = 1.0 + jnp.einsum("...n,...nf->...f", f - 1.0, onehot)
        if mult.ndim == 2:  # (B, F) -> (B, 1, F)
            mult = mult[:, None, :]
        return self._where(x, slots, axis, lambda xt, src: xt * mult)


@struct.dataclass
class HeadMask(Intervention):
    """Multiply chosen heads of ``attn.hook_pattern`` or ``attn.hook_z`` by ``mask``.

    The same semantics as HF ``head_mask``: the attention probabilities of head h are scaled
    by ``mask[h]`` after the softmax. ``mask``: (H,) or (B, H), 1 keeps a head, 0 removes it.
    """

    mask: Any
    positions: Any = None

    def edit(self, x, slots, axis):
        m = jnp.asarray(self.mask, x.dtype)
        if m.ndim == 1:
            m = m[None]
        heads_axis = 1 if axis == 2 else 2  # pattern (B,H,T,S); z (B,T,H,E)
        shape = [m.shape[0]] + [1] * (x.ndim - 1)
        shape[heads_axis] = m.shape[1]
        mult = m.reshape(shape)
        if self.positions is None:
            return x * mult
        mult_t = jnp.moveaxis(jnp.broadcast_to(mult, (m.shape[0],) + x.shape[1:]), axis, 1)
        return self._where(x, slots, axis, lambda xt, src: xt * mult_t)


def head_mask_interventions(mask, every_layer: bool = False) -> dict:
    """``{"blocks.{l}.attn.hook_pattern": HeadMask(mask[l])}`` for an (L, H) mask (1 keeps a
    head, 0 removes it; HF ``head_mask`` semantics).

    By default only the layers that mask a head get an edit (``mask`` must be concrete);
    ``every_layer=True`` edits every layer, so masks of the same shape share one compiled
    program and ``mask`` may be traced."""
    if every_layer:
        return {f"blocks.{l}.attn.hook_pattern": HeadMask(jnp.asarray(mask[l], jnp.float32))
                for l in range(mask.shape[0])}
    m = np.asarray(mask, np.float32)
    return {f"blocks.{l}.attn.hook_pattern": HeadMask(jnp.asarray(m[l]))
            for l in range(m.shape[0]) if (m[l] != 1).any()}


@struct.dataclass
class Apply(Intervention):
    """Run a pure function ``fn(x, slots) -> x`` on the hook value (full hook shape).

    ``slots`` are the absolute positions of this call's query axis. ``args`` is an optional
    pytree of arrays passed as ``fn(x, slots, args)`` when given, so traced values can flow in.
    """

    fn: Callable = struct.field(pytree_node=False)
    args: Any = None

    def edit(self, x, slots, axis):
        return self.fn(x, slots) if self.args is None else self.fn(x, slots, self.args)


def _fits(got: tuple, want: tuple) -> bool:
    """Whether an array of shape ``got`` broadcasts to exactly ``want``."""
    try:
        return np.broadcast_shapes(got, want) == want
    except ValueError:
        return False


def _check_spec(name: str, spec, x, axis: int, length: int, runtime: bool = False) -> None:
    """Refuse a spec that does not fit the hook value ``x`` (its shape, its positions)."""
    if not isinstance(spec, Intervention):
        raise TypeError(f"intervention for {name!r} must be a jaxreason.hooks spec (Replace, "
                        f"Add, Scale, Zero, NeuronScale, HeadMask, Apply), got {type(spec).__name__}")
    where = f"intervention at {name!r}"
    b = x.shape[0]
    positions = getattr(spec, "positions", None)
    check_positions(positions, length, where, batch=b, runtime=runtime)
    # the value a spec sees at its positions, in position-first layout (B, P or T, ...)
    rest = tuple(d for i, d in enumerate(x.shape) if i not in (0, axis))
    seen = tuple(x.shape) if positions is None else (b, x.shape[axis]) + rest
    if isinstance(spec, (Replace, Add)):
        _check_values_shape(spec.values, x, axis, spec.positions, where)
    if isinstance(spec, Scale) and not _fits(tuple(np.shape(spec.factor)), seen):
        layout = "the hook value" if positions is None else "the position-first value"
        raise ValueError(f"{where}: Scale factor of shape {tuple(np.shape(spec.factor))} does "
                         f"not broadcast to {layout} of shape {seen}; give a scalar or a "
                         f"shape that broadcasts to it")
    if isinstance(spec, NeuronScale):
        if not name.endswith("mlp.hook_post") and not name.endswith("mlp.hook_pre"):
            raise ValueError(f"NeuronScale applies to mlp.hook_post (or mlp.hook_pre), not {name!r}")
        n_shape = tuple(np.shape(spec.neurons))
        if len(n_shape) not in (1, 2) or (len(n_shape) == 2 and n_shape[0] != b):
            raise ValueError(f"{where}: NeuronScale neurons of shape {n_shape} do not fit; "
                             f"expected (N,) or ({b}, N) for a batch of {b}")
        if not _fits(tuple(np.shape(spec.factor)), n_shape):
            raise ValueError(f"{where}: NeuronScale factor of shape "
                             f"{tuple(np.shape(spec.factor))} does not broadcast to the "
                             f"neurons' shape {n_shape}; give a scalar or one factor per neuron")
        check_range(spec.neurons, 0, x.shape[-1], f"{where}: neuron",
                    f"is outside 0..{x.shape[-1] - 1} (the hook's {x.shape[-1]} neurons)",
                    runtime=runtime)
    if isinstance(spec, HeadMask):
        if not name.endswith(("hook_pattern", "hook_z", "hook_attn_scores")):
            raise ValueError(f"HeadMask applies to attn.hook_pattern or attn.hook_z, not {name!r}")
        heads = x.shape[1] if axis == 2 else x.shape[2]
        m_shape = tuple(np.shape(spec.mask))
        if len(m_shape) not in (1, 2) or m_shape[-1] != heads or (
                len(m_shape) == 2 and m_shape[0] not in (1, b)):
            raise ValueError(f"{where}: head mask of shape {m_shape} does not match {heads} "
                             f"heads; expected ({heads},) or ({b}, {heads}) for a batch of {b}")


# The same check for code that applies specs itself (blocks under scan, models/block_stack.py).
check_spec = _check_spec


# ----------------------------------------------------------------------------- the runner

@dataclasses.dataclass(frozen=True)
class HookPlan:
    """Static, resolved request: which exact names to capture (and how) and edit."""

    capture: Mapping[str, Any]  # name -> None, positions, or a Reduction
    interventions: Mapping[str, Intervention]
    num_layers: int = 0  # blocks of the model, for per-layer reduction arrays
    runtime_checks: bool = False  # stage checks of traced indices (a checkified program)

    @property
    def empty(self) -> bool:
        return not self.capture and not self.interventions


def _capture_request(pattern: str, request):
    """Check one capture request: None, positions, or a reduction (arrays made jax arrays)."""
    if request is None:
        return None
    if isinstance(request, Reduction):
        return as_arrays(request)
    if isinstance(request, (list, tuple, range, np.ndarray, jax.Array)):
        return request
    raise TypeError(f"capture of {pattern!r} must map to None (the whole value), positions "
                    f"((P,) or (B, P) slots) or a reduction (TopK, Norm, Mean from "
                    f"jaxreason.reductions); got {type(request).__name__}")


def normalize_capture(capture) -> dict[str, Any]:
    """Accept None, a string, an iterable of names/patterns, or a dict name -> request, where
    a request is None, positions (P,) or (B, P), or a :class:`Reduction`."""
    if capture is None:
        return {}
    if isinstance(capture, str):
        return {capture: None}
    if isinstance(capture, Mapping):
        return {k: _capture_request(k, v) for k, v in capture.items()}
    return {c: None for c in capture}


def captured_position_axis(name: str, request) -> int:
    """The axis of a captured value (of each leaf, when reduced) that indexes positions."""
    return 1 if isinstance(request, Reduction) else position_axis(name)


def make_plan(capture, interventions, valid: tuple[str, ...], *,
              runtime_checks: bool = False) -> HookPlan:
    """Resolve patterns against a model's hook names; raises on unknown names.

    ``runtime_checks``: also check traced positions and neuron indices when the program runs
    (only inside ``checkify.checkify``; see ``jaxreason.runtime_checks``)."""
    cap = {}
    for pattern, request in normalize_capture(capture).items():
        for name in expand_names(pattern, valid):
            cap[name] = request
    edits = {}
    for pattern, spec in (interventions or {}).items():
        for name in expand_names(pattern, valid):
            edits[name] = spec
    layers = [i for i in map(layer_of, valid) if i is not None]
    return HookPlan(cap, edits, num_layers=max(layers, default=-1) + 1,
                    runtime_checks=runtime_checks)


class HookRunner:
    """Executes a :class:`HookPlan` at each hook site during one traced forward pass.

    Lives only for the duration of a trace (a Python object, not a pytree): it edits values
    per the plan and collects captures into ``self.captured``.

    Args:
      plan: the resolved request.
      slots: (T,) int32 absolute positions of this call's query axis.
      length: number of slots (S) visible in this call, for position checks.
      valid: (B, T) bool, False at padding (what :class:`Mean` leaves out); None: all real.
    """

    def __init__(self, plan: HookPlan, slots, length: int, valid=None):
        self.plan = plan
        self.slots = slots
        self.length = length
        self.valid = valid
        self.captured: dict[str, Any] = {}

    def __call__(self, name: str, x):
        if self.plan.empty:
            return x
        axis = position_axis(name)
        spec = self.plan.interventions.get(name)
        if spec is not None:
            _check_spec(name, spec, x, axis, self.length, self.plan.runtime_checks)
            x = spec.edit(x, self.slots, axis)
        if name in self.plan.capture:
            self.captured[name] = self._capture(name, x, axis)
        return x

    def _capture(self, name: str, x, axis: int, layer=None):
        """The captured value of ``x`` at ``name``. ``layer``: the block index when it is a
        traced value (blocks under scan); by default the one in ``name``."""
        request = self.plan.capture[name]
        where = f"capture of {name!r}"
        if request is None:
            return x
        runtime, batch = self.plan.runtime_checks, x.shape[0]
        if not isinstance(request, Reduction):
            check_positions(request, self.length, where, batch=batch, runtime=runtime)
            return _select(x, request, self.slots, axis)
        layer = layer_of(name) if layer is None else layer
        request.check(where, tuple(x.shape), layer, self.plan.num_layers)
        xt = _move_pos_first(x, axis)  # (B, T, ...)
        valid = self.valid
        if valid is None:
            valid = jnp.ones(xt.shape[:2], bool)
        if request.positions is not None:
            check_positions(request.positions, self.length, where, batch=batch, runtime=runtime)
            xt, hit = _gather(xt, request.positions, self.slots)
            valid = _gather(valid, request.positions, self.slots)[0].astype(bool) & hit
        return request.reduce(xt, valid, layer)
