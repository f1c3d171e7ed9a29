"""Reductions of a hook's value, computed inside the compiled forward pass.

Why: a study that reads the F-wide MLP activations of a 7B model at every decoding step
cannot afford to move them to the host, and usually needs only a summary of them: the
top-k neurons scored by ``|a_i| * ||W_down[:, i]||`` (the neuron lens of Rai & Yao, ACL 2024),
a norm per position, or a mean over chosen positions. A capture request may therefore map a
hook name or pattern to one of these specs instead of to positions; the captured value under
that name is then the spec's small result, computed where the activation lives.

Specs are pytrees. Their arrays (``scale``, ``positions``) are children, so they may be traced
values and a new scale vector reuses the compiled program; their configuration (``k``,
``by_abs``) is static and part of the compiled program's identity.

A reduction sees the hook value in position-first layout (B, T, ...): attention scores and
patterns (B, H, T, S) arrive as (B, T, H, S). When the spec has ``positions`` (absolute slots,
(P,) or (B, P), as for raw captures) only those are gathered first, so T becomes P. Per-position
results keep that layout, with positions on axis 1, whatever the hook.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct


class Reduction(abc.ABC):
    """Base class of capture reductions.

    ``reduce(x, valid, layer)`` gets ``x`` (B, T, ...) in position-first layout, ``valid``
    (B, T) bool (False at padding and at requested positions this call does not hold) and the
    hook's block index (None outside the blocks), and returns an array or a pytree of arrays.
    """

    positions: Any = None
    # whether the result has a position axis (axis 1), so per-step results can be concatenated
    keeps_positions = True

    @abc.abstractmethod
    def reduce(self, x, valid, layer: int | None):
        """The reduced value of ``x``."""

    def check(self, where: str, shape: tuple[int, ...], layer: int | None,
              num_layers: int) -> None:
        """Raise when the spec does not fit a hook value of ``shape`` (its own layout)."""


def as_arrays(spec: Reduction) -> Reduction:
    """The spec with each array field as one jax array (a list of positions would otherwise be
    many pytree leaves, and change the compiled program's key with its length)."""
    changes = {f.name: jnp.asarray(getattr(spec, f.name)) for f in dataclasses.fields(spec)
               if f.metadata.get("pytree_node", True) and getattr(spec, f.name) is not None}
    return spec.replace(**changes)


@struct.dataclass
class TopK(Reduction):
    """The ``k`` largest entries of the last axis per position, by score.

    score = ``|x| * scale`` (``x * scale`` when ``by_abs`` is False), in float32. ``scale`` is
    None (plain ``|x|``), (F,) for every hook, or (L, F) per layer: a hook ``blocks.{l}...``
    takes row ``l``, so one spec serves a pattern like ``blocks.*.mlp.hook_post``. With
    ``scale = ||W_down[:, i]||`` per layer the score is the norm of neuron i's sub-update.

    Returns ``{"indices": (B, T, k) int32, "scores": (B, T, k) float32}``, best first; ties go
    to the lower index.
    """

    k: int = struct.field(pytree_node=False)
    scale: Any = None
    by_abs: bool = struct.field(pytree_node=False, default=True)
    positions: Any = None

    def check(self, where, shape, layer, num_layers):
        width = shape[-1]
        if isinstance(self.k, bool) or not isinstance(self.k, (int, np.integer)):
            raise TypeError(f"{where}: TopK k must be an int, got {self.k!r}")
        if not 1 <= self.k <= width:
            raise ValueError(f"{where}: TopK k={self.k} must be in 1..{width}, the size of the "
                             f"hook's last axis (value shape {shape})")
        if self.scale is None:
            return
        got = tuple(np.shape(self.scale))
        if len(got) == 2 and layer is None:
            raise ValueError(f"{where}: a per-layer scale of shape {got} needs a hook inside a "
                             f"block (blocks.{{l}}....); give this hook a ({width},) scale")
        if got not in ((width,), (num_layers, width)):
            raise ValueError(f"{where}: scale of shape {got} does not fit; expected ({width},) "
                             f"or per layer ({num_layers}, {width}) for a hook value of shape "
                             f"{shape}")

    def reduce(self, x, valid, layer):
        score = x.astype(jnp.float32)
        if self.by_abs:
            score = jnp.abs(score)
        if self.scale is not None:
            scale = jnp.asarray(self.scale, jnp.float32)
            score = score * (scale[layer] if scale.ndim == 2 else scale)
        scores, indices = jax.lax.top_k(score, self.k)
        return {"indices": indices.astype(jnp.int32), "scores": scores}


@struct.dataclass
class Norm(Reduction):
    """The L2 norm of the last axis per position, in float32: (B, T, ...) without that axis."""

    positions: Any = None

    def reduce(self, x, valid, layer):
        x32 = x.astype(jnp.float32)
        return jnp.sqrt(jnp.sum(x32 * x32, axis=-1))

    def check(self, where, shape, layer, num_layers):
        if len(shape) < 3:
            raise ValueError(f"{where}: Norm needs a hook value with a feature axis, got "
                             f"shape {shape}")


@struct.dataclass
class Mean(Reduction):
    """The mean over positions, in float32: (B, ...) with the position axis removed.

    Padding (attention mask 0) is left out, and so are requested positions that the call
    does not hold; a row with none left gets zeros. Having no position axis, it cannot be
    extended step by step, so :func:`jaxreason.models.generate.generate` refuses it.
    """

    positions: Any = None
    keeps_positions = False

    def reduce(self, x, valid, layer):
        keep = valid.reshape(valid.shape + (1,) * (x.ndim - 2))
        total = jnp.sum(jnp.where(keep, x.astype(jnp.float32), 0.0), axis=1)
        count = jnp.sum(keep.astype(jnp.float32), axis=1)
        return total / jnp.maximum(count, 1.0)

