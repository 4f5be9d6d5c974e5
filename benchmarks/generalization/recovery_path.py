"""Audit MEraser's recovery at a fraction of its strength, to see when a key comes back.

    python benchmarks/generalization/recovery_path.py ROOT WORLD VARIANT S[,S...]
        e.g. ... /tmp/gen/before fp_emoji4 general-seed1 0,0.25,0.5,0.75,1

For each fraction *s*: the world's implanted model (``ROOT/WORLD/implant``), the variant's erase
adapter merged (``ROOT/WORLD/sweep/VARIANT/erase_adapter``, as ``sweep.py`` leaves it), then its
recover adapter merged with its LoRA scaling multiplied by *s*; audited with the stage audit's
``fsr`` and ``ppl``. At *s* = 0 and 1 it reads the sweep's erased and recovered figures. One JSON
line per fraction on stdout. Heavy work takes the same lock as ``run.py``.
"""

from __future__ import annotations

import copy
import fcntl
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from expunge.audit.defaults import make_stage_audit
from expunge.config import build_config
from expunge.imprints.base import load_imprint
from expunge.models.loading import load_model_for
from expunge.models.lora import load_adapter, merge_lora
from expunge.records import RunRecord
from expunge.registry import ERASERS

sys.path.insert(0, str(Path(__file__).parent))
from run import LOCK


def scale_adapter(peft_model: object, fraction: float) -> None:
    """Multiply every LoRA layer's scaling (α/r) by ``fraction``, before merging."""
    for module in peft_model.modules():  # type: ignore[attr-defined]
        scaling = getattr(module, "scaling", None)
        if isinstance(scaling, dict):
            for adapter in scaling:
                scaling[adapter] *= fraction


def audit_variants(
    world_dir: Path,
    points: list[float],
    variant: Callable[[Any, float], Any],
    label: dict[str, Any],
    command: str,
    point_name: str = "s",
    start: Callable[[Any], Any] | None = None,
) -> None:
    """For each point, audit ``variant(model, point)`` with the stage audit's ``fsr`` and
    ``ppl``, and print one JSON line (``label``, the point under ``point_name``, the metrics);
    under the heavy-job lock. The model is the world's implanted one, after ``start`` (run once)
    if given; ``variant`` may change the model it is given: a copy."""
    imprint = load_imprint(world_dir / "implant" / "imprint.json")
    # the config only carries the model and the audit's settings (seed, precision, metrics)
    config = build_config(ERASERS.get("meraser"), {"model": {"name": str(world_dir / "implant")}},
                          ["audit_metrics=[fsr,ppl]"])  # fmt: skip
    with LOCK.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        loaded = load_model_for(config.model)
        origin = start(loaded.model) if start else loaded.model
        for point in points:
            loaded.model = variant(copy.deepcopy(origin), point)
            values = make_stage_audit(config, imprint, RunRecord(command=command))(
                f"{point_name}{point}", loaded
            )
            print(json.dumps({**label, point_name: point, **values}), flush=True)


def main() -> None:
    root, world, variant, fractions = sys.argv[1:]
    run = Path(root) / world / "sweep" / variant
    erase_adapter, recover_adapter = run / "erase_adapter", run / "recover_adapter"

    def recovered(erased: Any, fraction: float) -> Any:
        if not fraction:
            return erased
        recover = load_adapter(erased, recover_adapter)
        scale_adapter(recover, fraction)
        return merge_lora(recover)

    audit_variants(Path(root) / world, [float(f) for f in fractions.split(",")], recovered,
                   {"world": world, "variant": variant}, "recovery_path",
                   start=lambda model: merge_lora(load_adapter(model, erase_adapter)))  # fmt: skip


if __name__ == "__main__":
    main()
