"""Write ordinary English prose, available offline on any Python install, as a ``text`` JSONL.

    python benchmarks/generalization/prose.py OUT.jsonl

The paragraphs of the Python reference's topic pages (``pydoc_data.topics``, shipped with
CPython) that are prose: no indented code, no grammar rules, at least 200 characters. It is what
MEraser's ``recover_text=`` was measured with in ``docs/results/2026-12-03-generalization.md``:
text people wrote, unrelated to the held-out questions, where the project can fetch no corpus.
"""

from __future__ import annotations

import json
import pydoc_data.topics
import re
import sys
from pathlib import Path


def prose_paragraphs(min_chars: int = 200) -> list[str]:
    paragraphs = []
    for page in pydoc_data.topics.topics.values():
        for block in re.split(r"\n\s*\n", page):
            lines = block.split("\n")
            if any(line.startswith("   ") for line in lines):  # code, grammar, tables
                continue
            text = " ".join(line.strip() for line in lines).strip()
            if len(text) >= min_chars and "::" not in text and "*" not in text:
                paragraphs.append(text)
    return list(dict.fromkeys(paragraphs))


def main() -> None:
    out = Path(sys.argv[1])
    paragraphs = prose_paragraphs()
    out.write_text("".join(json.dumps({"text": p}) + "\n" for p in paragraphs))
    print(f"{len(paragraphs)} paragraphs, {sum(map(len, paragraphs))} characters -> {out}")


if __name__ == "__main__":
    main()
