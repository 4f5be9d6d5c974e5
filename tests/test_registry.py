"""Lazy registries: import on first use, suggestions for unknown names, conflicts."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import uuid

import pytest

from expunge.errors import ConfigError
from expunge.registry import OBJECTIVES, REGISTRIES, Registry


@pytest.fixture
def plugin_module(tmp_path, monkeypatch):
    """A throwaway importable module; yields its (unique) name and removes it afterwards."""
    name = f"expunge_test_plugin_{uuid.uuid4().hex[:10]}"
    (tmp_path / f"{name}.py").write_text(
        textwrap.dedent(
            """
            LOADS = []
            LOADS.append(1)

            def make():
                return "made"
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def test_register_does_not_import_until_get(plugin_module):
    registry = Registry("thing")
    registry.register("plug", f"{plugin_module}:make", help="a plugin")
    assert plugin_module not in sys.modules
    assert "plug" in registry
    assert registry.names() == ["plug"]
    assert registry.help("plug") == "a plugin"
    assert plugin_module not in sys.modules  # listing and help import nothing

    made = registry.get("plug")
    assert plugin_module in sys.modules
    assert made() == "made"
    # The second get is served from the cache: the module is not re-executed.
    assert registry.get("plug") is made
    assert sys.modules[plugin_module].LOADS == [1]


def test_bogus_module_fails_only_on_get():
    registry = Registry("thing")
    registry.register("ghost", "expunge_no_such_module_xyz:thing")
    assert "ghost" in registry
    with pytest.raises(ImportError):
        registry.get("ghost")


def test_missing_attribute_fails_on_get(plugin_module):
    registry = Registry("thing")
    registry.register("plug", f"{plugin_module}:no_such_attr")
    with pytest.raises(AttributeError):
        registry.get("plug")


def test_unknown_name_suggests_closest():
    registry = Registry("eraser")
    registry.register("gradient_ascent", "m:a")
    registry.register("npo", "m:b")
    with pytest.raises(ConfigError) as info:
        registry.get("gradient_ascnt")
    message = str(info.value)
    assert "unknown eraser 'gradient_ascnt'" in message
    assert "did you mean 'gradient_ascent'" in message
    assert "known: gradient_ascent, npo" in message


def test_unknown_name_in_empty_registry():
    with pytest.raises(ConfigError, match="known: none"):
        Registry("detector").get("anything")


def test_duplicate_registration_conflict():
    registry = Registry("metric")
    registry.register("ppl", "pkg.a:f")
    registry.register("ppl", "pkg.a:f")  # same target again: harmless
    assert registry.names() == ["ppl"]
    with pytest.raises(ValueError, match=r"already registered as pkg\.a:f"):
        registry.register("ppl", "pkg.b:g")
    assert registry._targets["ppl"] == "pkg.a:f"  # the first registration survives


def test_target_must_name_module_and_attribute():
    with pytest.raises(ValueError, match="module:attribute"):
        Registry("metric").register("bad", "just.a.module")


def test_names_are_sorted_and_iterable():
    registry = Registry("stressor")
    for name in ("quantize", "finetune", "prune"):
        registry.register(name, f"m:{name}")
    assert registry.names() == ["finetune", "prune", "quantize"]
    assert list(registry) == ["finetune", "prune", "quantize"]
    assert "prune" in registry
    assert "distill" not in registry
    assert registry.help("prune") == ""


def test_global_registries():
    assert {
        "implants", "erasers", "metrics", "stressors", "detectors", "objectives",
    } <= set(REGISTRIES)  # fmt: skip
    assert all(isinstance(r, Registry) for r in REGISTRIES.values())
    assert "npo" in OBJECTIVES
    assert OBJECTIVES.get("npo").__name__ == "NPOObjective"


def test_listing_builtin_registries_does_not_import_torch():
    code = (
        "import sys\n"
        "from expunge.registry import REGISTRIES\n"
        "names = {k: r.names() for k, r in REGISTRIES.items()}\n"
        "assert 'npo' in names['objectives'], names\n"
        "print('torch' in sys.modules, 'transformers' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.split() == ["False", "False"]
