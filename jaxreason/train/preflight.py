"""Checks a training run makes before its first step, where the config meets the devices,
the model and the data: each refusal names the config key, the value and what would work.

Without them a mesh asked for on one device was silently ignored, a batch that does not
split over the data-parallel devices failed inside JAX without naming ``data.batch_size``,
and a ``checkpoint.best_metric`` that is never logged kept no best checkpoint at all.
"""

from __future__ import annotations

import difflib
from typing import Iterable

import jax

from jaxreason.config_io import ConfigError
from jaxreason.sharding import MESH_AXES

# keys the loop itself adds to every training row, beside the objective's metrics
LOOP_KEYS = ("grad_norm", "lr", "tokens_per_s", "step")


def check_devices(config, device_count: int, process_count: int = 1) -> tuple[int, int, int]:
    """The mesh shape for ``device_count`` devices, after checking the mesh sizes and that
    ``data.batch_size`` splits over the data-parallel shards and the hosts."""
    mesh = config.mesh
    sizes = {a: getattr(mesh, a) for a in MESH_AXES}
    try:
        shape = mesh.shape(device_count)
    except ValueError as e:
        raise ConfigError(
            f"mesh {sizes}: {e}. The product of mesh.data, mesh.fsdp and mesh.tensor must be "
            f"the {device_count} device(s) (one of them may be -1: the rest)") from None
    shards = shape[0] * shape[1]
    batch = config.data.batch_size
    if batch % shards:
        raise ConfigError(
            f"data.batch_size={batch} does not split over the {shards} data-parallel shards "
            f"of the mesh (data={shape[0]} x fsdp={shape[1]}, tensor={shape[2]}, on "
            f"{device_count} devices): use a multiple of {shards}")
    if batch % process_count:
        raise ConfigError(f"data.batch_size={batch} does not split over the {process_count} "
                          "hosts: use a multiple of the host count")
    return shape


def logged_metrics(objective, model, params, batch: dict, options: dict,
                   with_eval: bool) -> set[str]:
    """Every metric name a training row holds (and ``eval_*`` ones when there is held-out
    data), found by tracing the objective on ``batch`` without running it."""
    _, metrics = jax.eval_shape(lambda p, b: objective(model, p, b, None, **options),
                                params, batch)
    names = set(metrics) | set(LOOP_KEYS)
    if with_eval:
        names |= {f"eval_{k}" for k in metrics}
    return names


def unknown_best_metric(name: str, known: Iterable[str], extra: str = "") -> ConfigError:
    known = sorted(known)
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return ConfigError(f"checkpoint.best_metric={name!r} is never logged{extra}, so no best "
                       f"checkpoint would be kept.{hint} Logged metrics: {', '.join(known)}")
