"""Write ordinary English prose, available offline on any Python install, as a ``text`` JSONL.

    python benchmarks/generalization/prose.py OUT.jsonl [--docstrings]

The paragraphs of the Python reference's topic pages (``pydoc_data.topics``, shipped with
CPython) that are prose: no indented code, no grammar rules, at least 200 characters. It is what
MEraser's ``recover_text=`` was measured with in ``docs/results/2026-12-03-generalization.md``:
text people wrote, unrelated to the held-out questions, where the project can fetch no corpus.

``--docstrings`` adds the prose paragraphs of the standard library's own docstrings (modules,
their public classes, functions and methods): about three times the text (777 paragraphs and
253,480 characters on CPython 3.11; another Python version gives other docstrings), shuffled
under seed 0 so that a prefix (``n_recover_text``) mixes both sources. Its output on CPython
3.11 is shipped as ``builtin:python_prose`` (``src/expunge/data/resources/python_prose.jsonl``,
byte for byte), the text of MEraser's ``preset=general``.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import json
import pydoc_data.topics
import random
import re
import sys
import warnings
from pathlib import Path

# modules with effects on import (a browser, a printed poem), GUI or test packages, and the
# topic pages themselves; private modules (``_…``, ``__main__``) are skipped by name
SKIPPED = {"antigravity", "this", "idlelib", "tkinter", "turtledemo", "test", "lib2to3",
           "pydoc_data"}  # fmt: skip


def _prose(block: str, min_chars: int, code: tuple[str, ...] = ("   ",)) -> str | None:
    lines = block.split("\n")
    if any(line.startswith(code) for line in lines):  # code, grammar, tables
        return None
    text = " ".join(line.strip() for line in lines).strip()
    if len(text) < min_chars or "::" in text or "*" in text:
        return None
    return text


def prose_paragraphs(min_chars: int = 200) -> list[str]:
    paragraphs = []
    for page in pydoc_data.topics.topics.values():
        paragraphs += [p for b in re.split(r"\n\s*\n", page) if (p := _prose(b, min_chars))]
    return list(dict.fromkeys(paragraphs))


def _documented(module: object) -> list[object]:
    """The module, its public classes and functions, then those classes' public methods."""
    name = module.__name__  # type: ignore[attr-defined]
    members = [m for n, m in sorted(vars(module).items()) if not n.startswith("_")
               and (inspect.isclass(m) or inspect.isfunction(m)) and m.__module__ == name]  # fmt: skip
    methods = [m for cls in members if inspect.isclass(cls)
               for n, m in sorted(vars(cls).items()) if not n.startswith("_") and inspect.isfunction(m)]  # fmt: skip
    return [module, *members, *methods]


def docstring_paragraphs(min_chars: int = 200) -> list[str]:
    paragraphs = []
    for name in sorted(sys.stdlib_module_names - SKIPPED):
        if name.startswith("_"):
            continue
        try:
            with (warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()),
                  contextlib.redirect_stderr(io.StringIO())):  # fmt: skip
                warnings.simplefilter("ignore")
                module = importlib.import_module(name)
        except Exception:  # a module this platform lacks (winreg, curses, ...)
            continue
        for obj in _documented(module):
            for block in re.split(r"\n\s*\n", inspect.getdoc(obj) or ""):
                # a docstring's code, doctests, lists and field lists
                text = _prose(block, min_chars, code=("  ", ">>>", "-", ":"))
                if text and not re.search(r"[{}\[\]=]{2}", text):
                    paragraphs.append(text)
    return list(dict.fromkeys(paragraphs))


def main() -> None:
    out = Path(sys.argv[1])
    paragraphs = prose_paragraphs()
    if "--docstrings" in sys.argv[2:]:
        paragraphs = list(dict.fromkeys(paragraphs + docstring_paragraphs()))
        random.Random(0).shuffle(paragraphs)
    out.write_text("".join(json.dumps({"text": p}) + "\n" for p in paragraphs))
    print(f"{len(paragraphs)} paragraphs, {sum(map(len, paragraphs))} characters -> {out}")


if __name__ == "__main__":
    main()
