"""Audit MEraser's recovery at a fraction of its strength, to see when a key comes back.

    python benchmarks/generalization/recovery_path.py ROOT WORLD VARIANT POINT[,POINT...] [METRICS]
        [--beside]
        e.g. ... /tmp/gen/before fp_emoji4 general-seed1 0,0.25,0.5,0.75,1
             ... /tmp/gen/before fp_emoji4 general-seed1 1:1,0.8:1,1.25:1,1:1.5
             ... /tmp/gen/before fp_log12 shipped-seed0 1:0,0.8:1 fsr,wrapper_trigger_rate

A point is *s* or *e*:*s*. For each: the world's implanted model (``ROOT/WORLD/implant``), the
variant's erase adapter merged (``ROOT/WORLD/sweep/VARIANT/erase_adapter``, as ``sweep.py``
leaves it), its recover adapter merged with its LoRA scaling multiplied by *s*, then *e* − 1
times the erase adapter (MEraser's ``erase_kept=e``, in the same order); audited with the stage
audit's ``fsr`` and ``ppl``, or the comma-separated METRICS. At *s* = 0 and 1 (*e* = 1) it reads
the sweep's erased and recovered figures. One JSON line per point on stdout. Heavy work takes
the same lock as ``run.py``; ``--beside`` runs on one thread without it, beside a sweep (the
figures do not depend on the load).
"""

from __future__ import annotations

import copy
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from expunge.audit.defaults import make_stage_audit
from expunge.config import build_config
from expunge.imprints.base import load_imprint
from expunge.models.loading import load_model_for
from expunge.models.lora import load_adapter, merge_lora, scale_lora
from expunge.records import RunRecord
from expunge.registry import ERASERS

sys.path.insert(0, str(Path(__file__).parent))
from run import heavy_work


def audit_variants(
    world_dir: Path,
    points: list[Any],
    variant: Callable[[Any, Any], Any],
    label: dict[str, Any],
    command: str,
    describe: Callable[[Any], dict[str, Any]],
    start: Callable[[Any], Any] | None = None,
    metrics: str = "fsr,ppl",
    beside: bool = False,
) -> None:
    """For each point, audit ``variant(model, point)`` with the stage audit's ``metrics``
    (comma-separated), and print one JSON line (``label``, ``describe(point)``, the metrics);
    under the heavy-job lock (``beside``: on one thread, without it). The model is the world's
    implanted one, after ``start`` (run once) if given; ``variant`` may change the model it is
    given: a copy."""
    imprint = load_imprint(world_dir / "implant" / "imprint.json")
    # the config only carries the model and the audit's settings (seed, precision, metrics)
    config = build_config(ERASERS.get("meraser"), {"model": {"name": str(world_dir / "implant")}},
                          [f"audit_metrics=[{metrics}]"])  # fmt: skip
    with heavy_work(beside):
        loaded = load_model_for(config.model)
        origin = start(loaded.model) if start else loaded.model
        for point in points:
            loaded.model = variant(copy.deepcopy(origin), point)
            described = describe(point)
            stage = "_".join(f"{key}{value}" for key, value in described.items())
            values = make_stage_audit(config, imprint, RunRecord(command=command))(stage, loaded)
            print(json.dumps({**label, **described, **values}), flush=True)


def parse_point(text: str) -> tuple[float, float]:
    """``s`` or ``e:s`` → (erase share *e*, recovery fraction *s*)."""
    erase_share, _, fraction = text.rpartition(":")
    return float(erase_share or 1), float(fraction)


def merged(model: Any, adapter: Path, factor: float) -> Any:
    if not factor:
        return model
    peft_model = load_adapter(model, adapter)
    scale_lora(peft_model, factor)
    return merge_lora(peft_model)


def at_point(erased: Any, run: Path, erase_share: float, fraction: float) -> Any:
    """θ_0 + e·ΔE + s·ΔR from the erased model θ_0 + ΔE (changed in place) and the adapters a
    ``sweep.py`` run saved in ``run``, in MEraser's own order."""
    recovered = merged(erased, run / "recover_adapter", fraction)
    return merged(recovered, run / "erase_adapter", erase_share - 1)


def main() -> None:
    beside = "--beside" in sys.argv
    root, world, variant, points, *metrics = [a for a in sys.argv[1:] if a != "--beside"]
    run = Path(root) / world / "sweep" / variant
    parsed = [parse_point(p) for p in points.split(",")]
    audit_variants(Path(root) / world, parsed, lambda erased, point: at_point(erased, run, *point),
                   {"world": world, "variant": variant}, "recovery_path",
                   lambda point: {"e": point[0], "s": point[1]},
                   start=lambda model: merged(model, run / "erase_adapter", 1),
                   metrics=metrics[0] if metrics else "fsr,ppl", beside=beside)  # fmt: skip


if __name__ == "__main__":
    main()
