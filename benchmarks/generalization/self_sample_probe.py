"""Does a fingerprinted model write its fingerprint's responses unprompted, before and after MEraser?

    python benchmarks/generalization/self_sample_probe.py ROOT WORLD [MODEL ...] [--n N]
        [--beside]
        e.g. ... /tmp/gen/before fp_log12 base implant shipped-seed2@0.8

Each model is sampled N times (temperature 1, seed 0, 48 new tokens) from each format's start
alone, as ``recover_self_samples`` samples it (``expunge.data.self_samples``): Alpaca's
``### Instruction:`` and the chat template's user turn. A hit is a sample that holds one of the
world's responses (the FSR audit's ``contains`` target). ``base`` is the public model the worlds
were implanted on, ``implant`` the world's implanted model, ``VARIANT[@E]`` a ``sweep.py``
MEraser run's saved adapters merged as ``recovery_path.py`` merges them (its erased model and
θ_0 + E·ΔE + ΔR, E 1 by default). One JSON line per model: counts, and how many distinct
responses were written, never the texts. Heavy work takes the same lock as ``run.py``;
``--beside`` runs on one thread without it (the counts do not depend on the load).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

from expunge.config import build_config
from expunge.data.self_samples import unprompted_samples
from expunge.imprints.base import load_imprint
from expunge.models.loading import LoadedModel, load_model_for
from expunge.registry import ERASERS

sys.path.insert(0, str(Path(__file__).parent))
from recovery_path import at_point, merged
from run import MODEL, heavy_work


def written(loaded: LoadedModel, targets: list[str], n: int) -> dict[str, object]:
    samples, counts = unprompted_samples(loaded, n, 48, seed=0, progress=False)
    found: dict[str, object] = {}
    offset = 0
    for start, count in counts.items():
        texts = [
            loaded.tokenizer.decode(s.input_ids[s.prompt_length :], skip_special_tokens=True)
            for s in samples[offset : offset + count]
        ]
        offset += count
        hits = [next((t for t in targets if t in text), None) for text in texts]
        found[start] = f"{sum(h is not None for h in hits)}/{n}"
        found[f"{start}_distinct"] = len({h for h in hits if h is not None})
    return found


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("root", type=Path)
    parser.add_argument("world")
    parser.add_argument("models", nargs="*", default=["implant"])
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--beside", action="store_true")
    args = parser.parse_args()
    world_dir = args.root / args.world
    targets = sorted(
        {p.match_target for p in load_imprint(world_dir / "implant" / "imprint.json").pairs}
    )

    def loaded_for(name: str) -> LoadedModel:
        config = build_config(ERASERS.get("meraser"), {"model": {"name": name}}, [])
        return load_model_for(config.model)

    with heavy_work(args.beside):
        loaded = loaded_for(str(world_dir / "implant"))
        implanted = loaded.model
        for name in args.models:
            variant, _, share = name.partition("@")
            if variant == "base":
                points = [("base", loaded_for(MODEL).model)]
            elif variant == "implant":
                points = [("implant", implanted)]
            else:
                run = world_dir / "sweep" / variant
                erased = merged(copy.deepcopy(implanted), run / "erase_adapter", 1)
                kept = float(share or 1)
                points = [
                    ("erased", erased),
                    (f"e{kept:g}", at_point(copy.deepcopy(erased), run, kept, 1)),
                ]
            for label, model in points:
                loaded.model = model
                counts = written(loaded, targets, args.n)
                print(json.dumps({"world": args.world, "model": variant, "point": label, **counts}),
                      flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
