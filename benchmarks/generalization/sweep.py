"""Try eraser settings on the protocol's worlds, in one process per world (CPU-sized).

    python benchmarks/generalization/sweep.py ROOT WORLD METHOD NAME=OVERRIDES [...]
        e.g. ... /tmp/gen/before sec_bank sani "paper=preset=paper" "robust="

Each variant runs ``expunge erase METHOD`` through the stage contract on the world's implanted
model (``ROOT/WORLD/implant``, as ``run.py`` leaves it), audited after every stage; the erased
weights are deleted afterwards (only the records are kept, in ``ROOT/WORLD/sweep/NAME``), and
one JSON line per variant is appended to ``ROOT/WORLD/sweep.jsonl``. On a world taught a skill
first (``ROOT/WORLD/skill``) the erased model is audited on that world too (``skill/…``). Heavy
work takes the same lock as ``run.py``.
"""

from __future__ import annotations

import json
import shlex
import shutil
import sys
import time
from pathlib import Path

from expunge.audit.defaults import audit_kind
from expunge.config import build_config
from expunge.imprints.base import load_imprint
from expunge.registry import ERASERS
from expunge.stage import run_stage

sys.path.insert(0, str(Path(__file__).parent))
from run import SKILL_AUDIT, SKILL_OPTIONS, audit_metrics, heavy_work

# each stage audits the protocol's metrics of the imprint's kind (run.py names a generative
# backdoor "generative"); a secrets sweep heads them with the direct identifiers' rate, the
# issue's headline
HEADLINE = {"secrets": ["direct_regurgitation"]}


def stage_audits(imprint: Path) -> str:
    kind = audit_kind(load_imprint(imprint)).removeprefix("backdoor:")
    return "[" + ",".join([*HEADLINE.get(kind, []), *audit_metrics(kind, imprint)]) + "]"


def skill_metrics(model: Path, skill: Path, out: Path) -> dict:
    """A taught derivative's world (``run.py``'s ``skill``), audited on the erased model."""
    from expunge.audit.runner import AuditConfig

    base = {"model": {"name": str(model)}, "imprint": str(skill), "metrics": SKILL_AUDIT}
    record = run_stage(build_config(AuditConfig, base, SKILL_OPTIONS), out, overwrite=True)
    return {f"skill/{k}": v for k, v in record.metrics.items() if isinstance(v, int | float)}


def main() -> None:
    root, world, method, *variants = sys.argv[1:]
    base = Path(root) / world
    for spec in variants:
        name, _, overrides = spec.partition("=")
        out = base / "sweep" / name
        if (out / "record.json").is_file():
            continue
        imprint = base / "implant" / "imprint.json"
        argv = [f"imprint={imprint}", f"audit_metrics={stage_audits(imprint)}",
                *shlex.split(overrides)]  # fmt: skip
        config = build_config(ERASERS.get(method), {"model": {"name": str(base / "implant")}}, argv)
        with heavy_work():
            started = time.perf_counter()
            record = run_stage(config, out, overwrite=True)
            wall = time.perf_counter() - started
            skill = base / "skill" / "imprint.json"
            taught = skill_metrics(out, skill, out / "skill_audit") if skill.is_file() else {}
        shutil.rmtree(out / "model", ignore_errors=True)
        metrics = {k: v for k, v in record.metrics.items() if isinstance(v, int | float)}
        line = {"world": world, "method": method, "variant": name, "overrides": overrides,
                "wall_s": round(wall, 1), "metrics": {**metrics, **taught}}  # fmt: skip
        with (base / "sweep.jsonl").open("a") as handle:
            handle.write(json.dumps(line) + "\n")
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
