"""Meshes, logical-axis rules and placement of parameters and batches.

Model code never mentions devices: every parameter carries logical axis names where it is
defined (``("embed", "mlp")`` for an up projection, see ``models/layers.py``) and activations
are constrained to ``("batch", "seq", "embed")`` at block boundaries. One rules table here maps
logical names to the mesh axes ``data``, ``fsdp`` and ``tensor``:

=========  ===================  ===================================================
logical    mesh axis            why
=========  ===================  ===================================================
batch      (data, fsdp)         every data-parallel replica and FSDP shard sees its own rows
embed      fsdp                 FSDP shards each weight along the model width
mlp        tensor               Megatron-style column/row split of the MLP
heads      tensor               attention heads split across tensor-parallel devices
qkv        tensor               GPT-2's fused QKV output
vocab      tensor               embedding rows / LM head columns
seq, norm  (replicated)
=========  ===================  ===================================================

A dimension that does not divide evenly by its mesh axes is replicated instead of failing,
so tiny test models run on any mesh. One device needs no mesh at all: every function here
accepts ``mesh=None`` and then does nothing.

Meshes are built with ``AxisType.Auto`` axes on purpose: the compiler propagates shardings
from the annotated parameters and batch, as in GSPMD, rather than demanding that every matmul
state its output sharding (explicit mode refuses ambiguous contractions).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("qkv", "tensor"),
    ("vocab", "tensor"),
    ("seq", None),
    ("norm", None),
)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Sizes of the mesh axes; one size may be -1 to take the remaining devices.

    The default (all devices on ``data``) is plain data parallelism; ``fsdp`` shards
    parameters and optimizer state; ``tensor`` splits heads and MLP neurons.
    """

    data: int = -1
    fsdp: int = 1
    tensor: int = 1

    def __post_init__(self):
        sizes = (self.data, self.fsdp, self.tensor)
        if sum(s == -1 for s in sizes) > 1:
            raise ValueError(f"at most one mesh axis may be -1, got data={self.data}, "
                             f"fsdp={self.fsdp}, tensor={self.tensor}")
        for name, s in zip(MESH_AXES, sizes):
            if s == 0 or s < -1:
                raise ValueError(f"mesh.{name}={s} must be a positive size or -1")

    def shape(self, num_devices: int) -> tuple[int, int, int]:
        sizes = [self.data, self.fsdp, self.tensor]
        known = math.prod(s for s in sizes if s != -1)
        if -1 in sizes:
            if num_devices % known:
                raise ValueError(f"mesh sizes {dict(zip(MESH_AXES, sizes))} do not divide the "
                                 f"{num_devices} devices")
            sizes[sizes.index(-1)] = num_devices // known
        if math.prod(sizes) != num_devices:
            raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} "
                             f"devices but {num_devices} are available")
        return tuple(sizes)


def make_mesh(config: MeshConfig | None = None, devices: Sequence[Any] | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh over ``devices`` (all devices of all hosts by default)."""
    config = config or MeshConfig()
    devices = list(devices if devices is not None else jax.devices())
    shape = config.shape(len(devices))
    types = (jax.sharding.AxisType.Auto,) * 3
    return jax.make_mesh(shape, MESH_AXES, axis_types=types, devices=devices)


def _mesh_axes_size(mesh: Mesh, axes) -> int:
    if axes is None:
        return 1
    axes = (axes,) if isinstance(axes, str) else axes
    return math.prod(mesh.shape[a] for a in axes)


def logical_to_mesh_spec(logical: P, shape: Sequence[int], mesh: Mesh,
                         rules=DEFAULT_RULES) -> P:
    """Map one logical PartitionSpec to mesh axes, replicating dims that do not divide."""
    table = dict(rules)
    used: set[str] = set()
    out = []
    for name, dim in zip(tuple(logical) + (None,) * (len(shape) - len(logical)), shape):
        axes = table.get(name) if name is not None else None
        if axes is not None:
            tup = (axes,) if isinstance(axes, str) else tuple(axes)
            tup = tuple(a for a in tup if a not in used and mesh.shape[a] > 1)
            if not tup or dim % _mesh_axes_size(mesh, tup):
                axes = None
            else:
                used.update(tup)
                axes = tup[0] if len(tup) == 1 else tup
        out.append(axes)
    return P(*out)


def param_shardings(logical_tree, shapes_tree, mesh: Mesh, rules=DEFAULT_RULES):
    """NamedSharding for every parameter from its logical axes and shape."""
    return jax.tree_util.tree_map(
        lambda spec, s: NamedSharding(mesh, logical_to_mesh_spec(spec, s.shape, mesh, rules)),
        logical_tree, shapes_tree, is_leaf=lambda x: isinstance(x, P))


def model_shardings(model, mesh: Mesh | None, rules=DEFAULT_RULES):
    """Parameter shardings of a ``CausalLM`` (None without a mesh)."""
    if mesh is None:
        return None
    return param_shardings(model.logical_axes(), model.param_shapes(), mesh, rules)


def batch_sharding(mesh: Mesh | None, ndim: int = 2):
    """Rows over (data, fsdp), everything else replicated."""
    if mesh is None:
        return None
    return NamedSharding(mesh, P(("data", "fsdp"), *([None] * (ndim - 1))))


def replicated(mesh: Mesh | None):
    return None if mesh is None else NamedSharding(mesh, P())


def place(tree, shardings):
    """``device_put`` a tree onto its shardings (no-op without shardings)."""
    if shardings is None:
        return tree
    return jax.device_put(tree, shardings)


def global_batch(local: np.ndarray, mesh: Mesh | None):
    """Assemble a global array from the rows this host holds (multi-host data loading).

    Each process passes only its own slice of the batch (rows ``process_index * n ..``); on
    one host this is a plain ``device_put`` with the batch sharding.
    """
    if mesh is None:
        return jax.numpy.asarray(local)
    sharding = batch_sharding(mesh, local.ndim)
    if jax.process_count() == 1:
        return jax.device_put(local, sharding)
    return jax.make_array_from_process_local_data(sharding, local)


@contextlib.contextmanager
def activation_rules(mesh: Mesh | None, rules=DEFAULT_RULES):
    """Context under which the model's logical activation constraints take effect."""
    if mesh is None:
        yield
        return
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        yield


def data_parallel(model, params, batch_size: int, enabled: bool = True):
    """``(mesh, params)`` for data-parallel decoding over every device: a ``data`` mesh and
    the params placed on it, or ``(None, params)`` on one device or when not ``enabled``.
    ``batch_size`` must divide over the devices."""
    if not enabled or jax.device_count() == 1:
        return None, params
    mesh = make_mesh(MeshConfig(data=-1))
    if batch_size % mesh.shape["data"]:
        raise ValueError(f"batch_size={batch_size} must divide over the "
                         f"{mesh.shape['data']} devices for data-parallel decoding")
    return mesh, place(params, model_shardings(model, mesh))
