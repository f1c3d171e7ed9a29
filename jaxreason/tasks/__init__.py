"""Data families. Each task module builds a :class:`jaxreason.train.data.TokenDataset`
from a seed and its own arguments and registers itself under a name that configs use as
``data.source``."""

from __future__ import annotations

from typing import Callable

TASKS: dict[str, Callable] = {}


def register(name: str):
    def wrap(fn):
        TASKS[name] = fn
        return fn
    return wrap


def build(name: str, seed: int, **args):
    """The dataset of task ``name``; an unknown name lists the registered ones."""
    import jaxreason.tasks.all  # noqa: F401  (every task module registers itself)

    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; registered tasks: {sorted(TASKS)} "
                         "(or use data.source=arrays with data.path)")
    try:
        return TASKS[name](seed=seed, **args)
    except TypeError as e:
        raise ValueError(f"task {name!r}: bad data.task_args {sorted(args)}: {e}") from None
