"""Import every task module so each registers its tasks (and objectives)."""

import importlib
import pkgutil

import jaxreason.tasks as _pkg

for _info in pkgutil.iter_modules(_pkg.__path__):
    if _info.name != "all":
        importlib.import_module(f"jaxreason.tasks.{_info.name}")
