"""``jaxreason.registry.Registry``: decorator and direct registration, lazy discovery of the
registering modules on the first unknown lookup, close-match errors, duplicate refusal."""

from __future__ import annotations

import sys
import types

import pytest

from jaxreason.config_io import ConfigError
from jaxreason.registry import OBJECTIVES, STUDIES, TASKS, Registry


@pytest.fixture
def plugin_module(monkeypatch):
    """A fake module ``_plugin_for_registry_test`` that registers 'late' when imported."""
    reg = Registry("widget", modules=("_plugin_for_registry_test",), hint="or build one")
    imported = []

    class Finder:
        def find_spec(self, name, path=None, target=None):
            if name != "_plugin_for_registry_test":
                return None
            from importlib.machinery import ModuleSpec

            return ModuleSpec(name, self)

        def create_module(self, spec):
            return types.ModuleType(spec.name)

        def exec_module(self, module):
            imported.append(module.__name__)
            reg.register("late", "from the plugin")

    monkeypatch.setattr(sys, "meta_path", [Finder(), *sys.meta_path])
    monkeypatch.delitem(sys.modules, "_plugin_for_registry_test", raising=False)
    return reg, imported


def test_known_names_need_no_discovery_and_unknown_ones_trigger_it(plugin_module):
    reg, imported = plugin_module

    @reg.register("early")
    def early():
        return 1

    assert reg.get("early") is early and imported == []  # found without importing anything
    assert reg.get("late") == "from the plugin" and imported == ["_plugin_for_registry_test"]
    assert reg.names() == ["early", "late"] and imported == ["_plugin_for_registry_test"]


def test_unknown_name_lists_known_ones_with_a_close_match(plugin_module):
    reg, _ = plugin_module
    with pytest.raises(ConfigError, match=r"unknown widget 'lat'; registered: \['late'\] "
                                          r"\(or build one\)\. Did you mean 'late'\?"):
        reg.get("lat")


def test_a_taken_name_is_refused_for_another_object():
    reg = Registry("widget")
    reg.register("a", "one")
    reg.register("a", "one")  # the same object again is fine (a re-imported module)
    with pytest.raises(ValueError, match="widget 'a' is already registered"):
        reg.register("a", "two")


def test_project_registries_find_their_entries():
    assert {"copy", "kth_smallest", "formulas"} <= set(TASKS.names())
    assert {"causal_lm", "last_token", "classify", "last_token_double_softmax"} <= set(
        OBJECTIVES.names())
    assert {"mechprobe_kth", "mechprobe_llama", "think_to_talk"} <= set(STUDIES.names())
