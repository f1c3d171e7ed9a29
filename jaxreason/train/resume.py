"""Resuming a run: compare the config saved beside a checkpoint with the current one.

A resumed run must rebuild the exact parameter tree it saved, so a change to the model or to
what trains (``model.*``, ``peft.*``) is refused up front, naming every field that differs
(Orbax would otherwise fail deep inside the restore). Everything else may change between
launches -- more steps, another learning rate or batch size -- and each change is reported in
one line, so a resumed run never differs from its checkpoint without a word.
"""

from __future__ import annotations

from typing import Any, Callable

from jaxreason.config_io import ConfigError

STRUCTURAL = ("model", "peft")
# model fields that change how the model runs, not its parameters: a checkpoint of the other
# block layout converts on restore (``jaxreason.models.layout``)
EXECUTION = frozenset({"model.scan_layers", "model.remat"})
# how a run is launched or displayed, not what it computes
IGNORED = frozenset({"trainer.run_dir", "trainer.progress", "trainer.plot", "trainer.overwrite",
                     "checkpoint.resume"})
# free-form mappings: a key present on one side only is a change, not a schema difference
OPEN_DICTS = ("model.overrides", "data.task_args", "trainer.objective_options")
_UNSET = object()


class ModelChanged(ConfigError):
    """The current config builds another model (or trains other parameters) than the
    checkpoint saved."""


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out or {prefix.rstrip("."): {}}
    return {prefix.rstrip("."): tree}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not (
            isinstance(a, bool) or isinstance(b, bool)):
        return float(a) == float(b)
    return a == b


def config_changes(saved: dict, current: dict) -> list[tuple[str, Any, Any]]:
    """``(dotted key, current value, saved value)`` for every field that differs.

    A schema field missing on one side (a checkpoint from an older version) is not a change;
    inside the free-form mappings a missing key shows as ``"not set"``."""
    old, new = _flatten(saved), _flatten(current)
    changes = []
    for key in sorted(set(old) | set(new)):
        if key in IGNORED:
            continue
        a, b = new.get(key, _UNSET), old.get(key, _UNSET)
        if a is _UNSET or b is _UNSET:
            if not key.startswith(tuple(d + "." for d in OPEN_DICTS)):
                continue
        if not _same(a, b):
            changes.append((key, "not set" if a is _UNSET else a,
                            "not set" if b is _UNSET else b))
    return changes


def _is_structural(key: str) -> bool:
    return key.split(".", 1)[0] in STRUCTURAL and key not in EXECUTION


def refuse_model_change(saved: dict, current: dict, step: int, directory: str) -> None:
    """ModelChanged naming each ``model.*`` / ``peft.*`` field that differs."""
    model = [c for c in config_changes(saved, current) if _is_structural(c[0])]
    if model:
        fields = "; ".join(f"{k} {a!r} (checkpoint: {b!r})" for k, a, b in model)
        raise ModelChanged(
            f"checkpoint.resume: the checkpoint of step {step} in {directory} was saved for "
            f"another model or other trained parameters: {fields}. Restore those values to "
            "resume, or start a new run (another trainer.run_dir, or --overwrite)")


def report_changes(saved: dict, current: dict, report: Callable[[str], None] = print
                   ) -> list[str]:
    """One line per changed non-model field ("resuming with optimizer.lr 0.001
    (checkpoint: 0.003)"); returns the lines."""
    lines = [f"resuming with {k} {a!r} (checkpoint: {b!r})"
             for k, a, b in config_changes(saved, current) if not _is_structural(k)]
    for line in lines:
        report(line)
    return lines


def resume_state(checkpointer, target, current: dict, report: Callable[[str], None] = print):
    """``(step, state)`` of the newest checkpoint that restores into ``target``.

    The model check runs first, against the newest checkpoint whose config reads; damaged
    checkpoints are then skipped (one line each) and the config changes against the one
    restored are reported."""
    directory = checkpointer.directory
    for step in reversed(checkpointer.all_steps()):
        try:
            saved = checkpointer.config(step)
        except Exception:  # a damaged config item: the restore below skips that step
            continue
        refuse_model_change(saved, current, step, directory)
        break
    step, state = checkpointer.restore_newest(target, report=report)
    report(f"resuming from checkpoint step {step} in {directory}")
    try:
        saved = checkpointer.config(step)
    except Exception as e:
        report(f"resuming from step {step} without comparing configs: its saved config does "
               f"not read ({type(e).__name__})")
    else:
        report_changes(saved, current, report)
    return step, state
