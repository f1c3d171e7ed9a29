"""Checkpoints of a training run: a thin layer over Orbax's ``CheckpointManager``.

Layout (one directory per kept step, Orbax's standard format, no pickle)::

    <directory>/<step>/state/     the pytree of arrays (OCDBT/TensorStore via
                                  ``ocp.args.StandardSave``): params, optimizer
                                  state, step, PRNG key data, data position ...
    <directory>/<step>/config/config.json   the run's config (``ocp.args.JsonSave``)
    <directory>/<step>/metrics/   the metrics passed to ``save`` (JSON, written
                                  by the manager itself)

Design:

* **When to save** is decided here (``step % save_every == 0`` or ``force``);
  Orbax is then always called with ``force=True`` so its own interval policy
  (which also saves the very first step it sees) never second-guesses us.
* **What to keep** is Orbax's preservation policy:
  ``AnyPreservationPolicy([LatestN(keep_last), BestN(n=1)])``. A checkpoint
  survives if it is among the newest ``keep_last`` *or* it is the best one by
  ``best_metric`` -- so the best is never garbage-collected, however old.
  Checkpoints saved without that metric only count for ``LatestN``.
* **Atomicity** is Orbax's: a step is written into
  ``<step>.orbax-checkpoint-tmp/`` (each item in ``<item>.orbax-checkpoint-tmp/``
  inside it) and only renamed to ``<step>/`` once every item is on disk and
  committed (``AtomicRenameTemporaryPath.finalize``). A crash
  mid-write leaves a tmp directory that is never listed as a step and is
  removed the next time a ``Checkpointer`` opens the directory
  (``cleanup_tmp_directories=True``).
* **Foreign directories**: a directory with unrelated files can host
  checkpoints (logs beside them are fine), but one whose integer-named
  subdirectories are not our checkpoints (none of the items ``state``,
  ``config``, ``_CHECKPOINT_METADATA`` a save writes) is refused, since retention
  would delete them. A step directory that lost its ``state`` is still ours: it
  is damaged, not foreign. ``tests/train/test_checkpoint.py`` kills
  a process just before the rename to check this.
* **Damaged checkpoints**: :meth:`Checkpointer.restore_newest` tries the steps
  newest first and skips each one that does not restore (a deleted or
  truncated data file, a missing manifest or metadata), reporting one line per
  skipped step, so a run resumes from its newest good checkpoint.
* **Restoring** goes through an abstract target: every leaf becomes a
  ``jax.ShapeDtypeStruct`` carrying the sharding the caller wants (a concrete
  array's own ``.sharding``; a single default device when an abstract leaf has
  none), and Orbax reads each shard straight into that sharding -- the saved
  layout does not have to match (resharding on load).
* **Other layouts**: ``convert=(to_saved, to_target)`` lets a checkpoint written for another
  layout of the same model restore (blocks unrolled or stacked for scan; see
  ``jaxreason.models.layout.checkpoint_conversion``): when the target's structure does not
  fit, the state is read into ``to_saved(target)`` and handed back through ``to_target``,
  each leaf placed on the target leaf's sharding.
* Saves are synchronous by default (``async_save=False``); with
  ``async_save=True`` call ``wait()`` before relying on the files. ``restore``
  and ``config`` wait for an in-flight save themselves.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Literal

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

__all__ = ["Checkpointer", "CheckpointUnusable", "is_checkpoint_step"]

_STATE, _CONFIG = "state", "config"
# what a save writes into every step directory; a directory with any of them is ours
_STEP_ITEMS = (_STATE, _CONFIG, "_CHECKPOINT_METADATA")


class CheckpointUnusable(RuntimeError):
    """No kept checkpoint of a directory restores."""


def is_checkpoint_step(path) -> bool:
    """An integer-named directory holding at least one item of a jaxreason checkpoint."""
    path = os.fspath(path)
    return (os.path.basename(path).isdigit() and os.path.isdir(path)
            and any(os.path.exists(os.path.join(path, item)) for item in _STEP_ITEMS))


def short_reason(error: BaseException, limit: int = 200) -> str:
    """The first line of an exception (with its type), cut to ``limit`` characters."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = f"{type(error).__name__}: {lines[0] if lines else 'no message'}"
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _jsonable(x: Any) -> Any:
    """Metrics may hold jax/numpy scalars; JSON wants plain Python numbers."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (jax.Array, np.ndarray, np.generic)):
        return np.asarray(x).item() if np.size(x) == 1 else np.asarray(x).tolist()
    return x


def _place_like(value, like):
    """``value`` on the sharding of the target leaf ``like`` (when it has one)."""
    sharding = getattr(like, "sharding", None)
    if sharding is None or not isinstance(value, jax.Array):
        return value
    return jax.device_put(value, sharding)


class Checkpointer:
    """Save every ``save_every`` steps; keep the last ``keep_last`` and the best."""

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        save_every: int,
        keep_last: int = 3,
        best_metric: str | None = None,
        best_mode: Literal["min", "max"] = "min",
        keep_best: bool = True,
        async_save: bool = False,
        convert: tuple[Any, Any] | None = None,
    ):
        if save_every < 1:
            raise ValueError(f"save_every must be >= 1, got {save_every}")
        if keep_last < 1:
            raise ValueError(f"keep_last must be >= 1, got {keep_last}")
        if best_mode not in ("min", "max"):
            raise ValueError(f"best_mode must be 'min' or 'max', got {best_mode!r}")
        directory = os.path.abspath(os.fspath(directory))
        if os.path.exists(directory) and not os.path.isdir(directory):
            raise NotADirectoryError(
                f"checkpoint directory {directory} exists and is not a directory"
            )
        self.directory = directory
        self.convert = convert
        self.save_every, self.best_metric, self.best_mode = save_every, best_metric, best_mode

        policies: list[Any] = [pp.LatestN(n=keep_last)]
        if best_metric is not None and keep_best:
            # BestN keeps the *largest* get_metric_fn values unless reverse=True.
            policies.append(pp.BestN(get_metric_fn=self._metric, reverse=best_mode == "min",
                                     n=1, keep_checkpoints_without_metrics=False))
        options = ocp.CheckpointManagerOptions(
            # best_fn is set even without best_metric: it is what makes the
            # manager write the metrics item; best_step() below ignores it then.
            best_fn=self._metric,
            best_mode=best_mode,
            preservation_policy=pp.AnyPreservationPolicy(policies),
            cleanup_tmp_directories=True,
            enable_async_checkpointing=async_save,
            create=True,
        )
        handlers = {_STATE: ocp.StandardCheckpointHandler(),
                    _CONFIG: ocp.JsonCheckpointHandler(filename="config.json")}
        self._mngr = ocp.CheckpointManager(directory, options=options, item_handlers=handlers)
        # Orbax takes every integer-named subdirectory for a step and would let
        # retention delete it: refuse a directory whose "steps" are not ours.
        foreign = [s for s in self._mngr.all_steps()
                   if not is_checkpoint_step(os.path.join(directory, str(s)))]
        if foreign:
            self._mngr.close()
            raise ValueError(
                f"{directory} is not a jaxreason checkpoint directory: its entries "
                f"{[str(s) for s in sorted(foreign)]} look like steps but hold none of the "
                f"items {list(_STEP_ITEMS)} a checkpoint has; use another directory")

    # Metric used for ranking; a missing or NaN value ranks worst.
    def _metric(self, metrics: Any) -> float:
        worst = math.inf if self.best_mode == "min" else -math.inf
        if self.best_metric is None or not isinstance(metrics, dict):
            return worst
        value = metrics.get(self.best_metric)
        if not isinstance(value, (int, float)) or math.isnan(value):
            return worst
        return float(value)

    # ------------------------------------------------------------------ save
    def save(self, step: int, state: Any, *, config: dict,
             metrics: dict | None = None, force: bool = False) -> bool:
        """Save ``state`` at ``step`` when due (or ``force``); return whether it saved.

        A step that is already on disk (e.g. the step just resumed from) is
        skipped and returns False.
        """
        step = int(step)
        if not force and step % self.save_every != 0:
            return False
        if step in self._mngr.all_steps():
            return False
        try:  # fail before anything touches the disk
            config = json.loads(json.dumps(config))
            metrics = None if metrics is None else json.loads(json.dumps(_jsonable(metrics)))
        except TypeError as e:
            raise TypeError(f"config and metrics must be JSON-serialisable: {e}") from e
        args = ocp.args.Composite(**{_STATE: ocp.args.StandardSave(state),
                                     _CONFIG: ocp.args.JsonSave(config)})
        return bool(self._mngr.save(step, args=args, metrics=metrics, force=True))

    # --------------------------------------------------------------- queries
    def all_steps(self) -> list[int]:
        return sorted(self._mngr.all_steps())

    def latest_step(self) -> int | None:
        return self._mngr.latest_step()

    def best_step(self) -> int | None:
        """Best kept step by ``best_metric``; None if no kept step reports it."""
        if self.best_metric is None:
            return None
        step = self._mngr.best_step()
        if step is None or math.isinf(self._metric(self._mngr.metrics(step))):
            return None
        return step

    def metrics(self, step: int | None = None) -> dict | None:
        return self._mngr.metrics(self._resolve(step))

    # --------------------------------------------------------------- restore
    def _resolve(self, step: int | None) -> int:
        self.wait()
        steps = self.all_steps()
        if step is None:
            if not steps:
                found = sorted(os.listdir(self.directory)) if os.path.isdir(self.directory) else []
                what = f"; it holds {found[:10]} but no checkpoint step" if found else ""
                raise FileNotFoundError(f"no checkpoints in {self.directory}{what}")
            return steps[-1]
        step = int(step)
        if step not in steps:
            raise FileNotFoundError(
                f"no checkpoint for step {step} in {self.directory}; "
                f"available steps: {steps or 'none'}")
        return step

    def restore(self, step: int | None, target: Any) -> Any:
        """Restore the state saved at ``step`` (None: latest) into ``target``'s structure.

        ``target`` is a pytree of concrete arrays or of ``jax.ShapeDtypeStruct``
        (e.g. from ``jax.eval_shape``); each restored ``jax.Array`` gets the
        target leaf's sharding. NumPy leaves come back as NumPy arrays. With ``convert``
        (see the class), a checkpoint of the model's other layout restores too.
        """
        step = self._resolve(step)
        try:
            return self._restore(step, target)
        except ValueError as first:
            if self.convert is None:
                raise
            to_saved, to_target = self.convert
            try:
                state = self._restore(step, to_saved(target))
            except ValueError:
                raise first from None
            return jax.tree.map(_place_like, to_target(state), target)

    def _restore(self, step: int, target: Any) -> Any:
        default = jax.sharding.SingleDeviceSharding(jax.devices()[0])

        def abstract(x):
            if isinstance(x, jax.Array) or (isinstance(x, jax.ShapeDtypeStruct)):
                sharding = getattr(x, "sharding", None) or default
                return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)
            return x

        args = ocp.args.Composite(**{_STATE: ocp.args.StandardRestore(jax.tree.map(abstract, target))})
        try:
            return self._mngr.restore(step, args=args)[_STATE]
        except (ValueError, KeyError) as e:
            raise ValueError(f"restoring step {step} from {self.directory} into the given "
                             f"target failed (does its structure match the saved state?): {e}") from e

    def restore_newest(self, target: Any, report=print) -> tuple[int, Any]:
        """Restore the newest checkpoint that restores; returns ``(step, state)``.

        Steps are tried newest first. A step whose restore fails is skipped with one line
        through ``report`` saying which step and why; when none restores,
        :class:`CheckpointUnusable` lists each step's reason."""
        steps = self._resolve_all()
        failures = []
        for step in reversed(steps):
            try:
                state = self.restore(step, target)
            except Exception as e:  # any damage: try the next older step
                reason = short_reason(e.__cause__ or e)
                failures.append(f"step {step}: {reason}")
                report(f"skipping checkpoint step {step} in {self.directory}: it does not "
                       f"restore ({reason})")
                continue
            return step, state
        raise CheckpointUnusable(
            f"none of the checkpoints in {self.directory} restores: " + "; ".join(failures))

    def _resolve_all(self) -> list[int]:
        self._resolve(None)  # raises the clear error when there are none
        return self.all_steps()

    def config(self, step: int | None = None) -> dict:
        """The config dict saved beside ``step`` (None: latest)."""
        step = self._resolve(step)
        args = ocp.args.Composite(**{_CONFIG: ocp.args.JsonRestore()})
        return self._mngr.restore(step, args=args)[_CONFIG]

    # ------------------------------------------------------------- lifecycle
    def wait(self) -> None:
        """Block until any in-flight (async) save is committed."""
        self._mngr.wait_until_finished()

    def close(self) -> None:
        self._mngr.close()

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
