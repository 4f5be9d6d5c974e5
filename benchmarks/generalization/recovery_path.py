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
from pathlib import Path

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


def main() -> None:
    root, world, variant, fractions = sys.argv[1:]
    base = Path(root) / world
    run = base / "sweep" / variant
    imprint = load_imprint(base / "implant" / "imprint.json")
    # the config only carries the model and the audit's settings (seed, precision, metrics)
    config = build_config(ERASERS.get("meraser"), {"model": {"name": str(base / "implant")}},
                          ["audit_metrics=[fsr,ppl]"])  # fmt: skip
    with LOCK.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        loaded = load_model_for(config.model)
        erased = merge_lora(load_adapter(loaded.model, run / "erase_adapter"))
        for fraction in (float(f) for f in fractions.split(",")):
            loaded.model = copy.deepcopy(erased)  # merging the recover adapter changes it
            if fraction:
                recover = load_adapter(loaded.model, run / "recover_adapter")
                scale_adapter(recover, fraction)
                loaded.model = merge_lora(recover)
            record = RunRecord(command="recovery_path")
            values = make_stage_audit(config, imprint, record)(f"s{fraction}", loaded)
            print(json.dumps({"world": world, "variant": variant, "s": fraction, **values}),
                  flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
