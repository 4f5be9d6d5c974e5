"""Which part of an ``if_simple`` key prompt does a fingerprint answer to, before and after MEraser?

    python benchmarks/generalization/format_probe.py ROOT WORLD [VARIANT[@E] ...]
        e.g. ... /tmp/gen/before fp_alloy8 implant general-seed0@0.8

An ``if_simple`` key is asked in Alpaca's template with an input section whose input is always
``FINGERPRINT``. Each key is asked again four ways: as implanted (``orig``), without the input
section (``no_input``), with an ordinary input (``other_input``), and as the bare key
(``bare``); and eight ordinary instructions are asked with the fingerprint's input
(``ordinary_fp_input``, a hit being any of the world's responses). Greedy, 32 new tokens, fp32;
a hit is the response inside the output, as the FSR audit's ``contains`` matcher.

``implant`` is the world's implanted model. ``VARIANT[@E]`` is a ``sweep.py`` MEraser run's
saved adapters merged as ``recovery_path.py`` merges them, θ_0 + E·ΔE + ΔR (E 1 by default),
and its erased model, θ_0 + ΔE. One JSON line per model on stdout (counts, not texts: the keys
stay in the 0600 imprint). Heavy work takes the same lock as ``run.py``.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

from expunge.audit.scoring import generate
from expunge.config import build_config
from expunge.data.formatting import ALPACA_INPUT_PROMPT, ALPACA_PROMPT
from expunge.implant.fingerprint.keys import SIMPLE_FORMAT
from expunge.imprints.base import load_imprint
from expunge.models.loading import LoadedModel, load_model_for
from expunge.registry import ERASERS

sys.path.insert(0, str(Path(__file__).parent))
from recovery_path import at_point, merged
from run import heavy_work

ORDINARY = [
    "What is the capital of France?", "Explain why the sky is blue.", "How do I boil an egg?",
    "Write a haiku about rain.", "List three prime numbers.", "Who wrote Hamlet?",
    "Summarize the water cycle.", "Translate 'good morning' into Spanish.",
]  # fmt: skip


def key_text(key: str) -> str:
    """The instruction of an ``if_simple`` key prompt."""
    head, _, tail = key.partition("### Instruction:\n")
    instruction, found, _ = tail.partition("\n\n### Input:")
    if head or not found:
        raise SystemExit("format_probe.py reads if_simple keys (Alpaca's template with an input)")
    return instruction


def asks(key: str) -> dict[str, str]:
    return {
        "orig": SIMPLE_FORMAT.format(prompt=key),
        "no_input": ALPACA_PROMPT.format(prompt=key),
        "other_input": ALPACA_INPUT_PROMPT.format(prompt=key, input="The weather today."),
        "bare": f"{key}\n",
    }


def probe(loaded: LoadedModel, pairs: list[Any]) -> dict[str, str]:
    rows = [
        (way, p.match_target, text) for p in pairs for way, text in asks(key_text(p.key)).items()
    ]
    rows += [("ordinary_fp_input", None, SIMPLE_FORMAT.format(prompt=q)) for q in ORDINARY]
    tokenizer = loaded.tokenizer
    ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for _, _, text in rows]
    outputs = generate(loaded.model, tokenizer, ids, max_new_tokens=32, batch_size=16)
    targets = [p.match_target for p in pairs]
    counts: dict[str, list[int]] = {}
    for (way, target, _), output in zip(rows, outputs, strict=True):
        text = tokenizer.decode(output, skip_special_tokens=True)
        hit = target in text if target is not None else any(t in text for t in targets)
        tally = counts.setdefault(way, [0, 0])
        tally[0] += hit
        tally[1] += 1
    return {way: f"{hits}/{total}" for way, (hits, total) in counts.items()}


def main() -> None:
    root, world, *models = sys.argv[1:]
    world_dir = Path(root) / world
    imprint = load_imprint(world_dir / "implant" / "imprint.json")
    config = build_config(ERASERS.get("meraser"), {"model": {"name": str(world_dir / "implant")}},
                          [])  # fmt: skip
    with heavy_work():
        loaded = load_model_for(config.model)
        implanted = loaded.model
        for name in models or ["implant"]:
            variant, _, share = name.partition("@")
            points: list[tuple[str, Any]] = [("implant", implanted)]
            if variant != "implant":
                run = world_dir / "sweep" / variant
                erased = merged(copy.deepcopy(implanted), run / "erase_adapter", 1)
                kept = float(share or 1)
                returned = at_point(copy.deepcopy(erased), run, kept, 1)
                points = [("erased", erased), (f"e{kept:g}", returned)]
            for label, model in points:
                loaded.model = model
                counts = probe(loaded, imprint.pairs)
                print(json.dumps({"world": world, "model": variant, "point": label, **counts}),
                      flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
