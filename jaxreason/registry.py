"""Named registries for what configs refer to by name: studies, tasks and objectives.

A config says ``study: mechprobe_kth``, ``data.source: copy`` or ``trainer.objective:
last_token``; code that reads the config looks the name up here. The modules that define
those things register them with a decorator (``@TASKS.register("copy")``) when they are
imported. The lookup side never imports them itself: each registry holds the dotted paths of
the modules that may register into it and imports them on the first lookup of a name it does
not hold yet. That keeps the package layered one way: the training loop asks
:data:`OBJECTIVES` for a name without importing any task or study, and the study command line
asks :data:`STUDIES` without importing any study up front.

The module lists at the bottom are the only place that names who registers what; a new task,
objective or study module is added there (or imported by the user before the lookup).
"""

from __future__ import annotations

import difflib
import importlib
from typing import Callable, Generic, Iterable, TypeVar

from jaxreason.config_io import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Names to objects of one kind, filled by the modules in ``modules`` on demand.

    ``kind`` names the entries in error messages ("task", "objective", ...); ``hint`` is
    appended to the unknown-name error (e.g. what else a config may say instead).
    """

    def __init__(self, kind: str, modules: Iterable[str] = (), hint: str = ""):
        self.kind = kind
        self.modules = tuple(modules)
        self.hint = hint
        self._entries: dict[str, T] = {}
        self._pending = list(self.modules)  # not imported yet

    def register(self, name: str, entry: T | None = None):
        """``@registry.register(name)`` on a function or class, or ``register(name, obj)``.

        Registering a second, different object under a taken name is an error (a silent
        override would make the result depend on import order)."""
        def add(obj: T) -> T:
            old = self._entries.get(name)
            if old is not None and not _same(old, obj):
                raise ValueError(f"{self.kind} {name!r} is already registered "
                                 f"({_qualname(old)}); cannot register {_qualname(obj)}")
            self._entries[name] = obj
            return obj

        return add if entry is None else add(entry)

    def discover(self) -> None:
        """Import every module that registers into this registry (each once; a lookup made
        while one of them is importing sees what is registered so far)."""
        while self._pending:
            module = self._pending.pop(0)
            try:
                importlib.import_module(module)
            except BaseException:
                self._pending.insert(0, module)  # a later lookup tries (and reports) again
                raise

    def get(self, name: str) -> T:
        """The entry named ``name``; an unknown name is a :class:`ConfigError` with the
        closest match and every known name."""
        if name not in self._entries:
            self.discover()
        if name not in self._entries:
            close = difflib.get_close_matches(str(name), list(self._entries), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            extra = f" ({self.hint})" if self.hint else ""
            raise ConfigError(f"unknown {self.kind} {name!r}; registered: {self.names()}"
                              f"{extra}.{hint}")
        return self._entries[name]

    def names(self) -> list[str]:
        """Every registered name, after discovery, sorted."""
        self.discover()
        return sorted(self._entries)


def _same(old, new) -> bool:
    """One entry registered twice: the object itself, an equal one, or the same function or
    class defined again (a module imported a second time)."""
    if old is new or old == new:
        return True
    return hasattr(old, "__qualname__") and hasattr(new, "__qualname__") and (
        _qualname(old) == _qualname(new))


def _qualname(obj) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__name__)}"


# Who registers what. Entries are module paths, imported on the first lookup.
STUDIES: Registry = Registry("study", modules=(
    "jaxreason.studies.mechprobe",
    "jaxreason.studies.think_to_talk",
    "jaxreason.studies.neuron_lens",
    "jaxreason.studies.planning_tokens",
    "jaxreason.studies.kv_transplant",
))
TASKS: Registry[Callable] = Registry("task", modules=(
    "jaxreason.tasks.copy",
    "jaxreason.tasks.kth_smallest",
    "jaxreason.tasks.formulas_lm",
    "jaxreason.tasks.word_problems_lm",
), hint="or use data.source=arrays with data.path")
OBJECTIVES: Registry[Callable] = Registry("objective", modules=(
    "jaxreason.train.objectives",
    "jaxreason.studies.mechprobe.objectives",
    "jaxreason.studies.planning_tokens.objective",
    "jaxreason.studies.kv_transplant.transplant",
))
