"""Deferred imports: a heavy library loads when it is first used, not when expunge is imported.

``torch = lazy("torch")`` at the top of a module reads like the import it replaces and costs
nothing until an attribute is used. A command therefore checks its arguments, its config and
its input files in well under a second; torch (about 3 s on a small CPU), transformers, peft
and accelerate load only once there is something to run.

What still needs the real module at import time: a class that subclasses a library class, and
a decorator applied when the module is imported — ``no_grad`` below stands in for
``@torch.no_grad()``. Annotations need nothing (``from __future__ import annotations``; names
used only in annotations are imported under ``TYPE_CHECKING``). ``tests/test_lazy_imports.py``
checks that building and validating every stage's config imports no heavy library.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

# What must not be imported before a command has checked its input (tests/test_lazy_imports.py).
HEAVY = ("torch", "transformers", "peft", "accelerate", "datasets", "sklearn", "scipy")


class LazyModule:
    """A stand-in for module ``name`` that imports it on first attribute access."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        # __getattr__ runs only for attributes this object lacks: everything but _name
        return getattr(importlib.import_module(self._name), attr)

    def __repr__(self) -> str:
        return f"<lazy module {self._name!r}>"


def lazy(name: str) -> Any:
    """``name`` (``"torch"``, ``"torch.nn.functional"``), imported when first used."""
    return LazyModule(name)


def no_grad(function: F) -> F:
    """``@torch.no_grad()`` without importing torch until ``function`` is called."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import torch

        with torch.no_grad():
            return function(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
