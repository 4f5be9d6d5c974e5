"""How much random damage a fingerprint survives: FSR and ppl under Gaussian weight noise.

    python benchmarks/generalization/noise_probe.py ROOT WORLD ALPHA[,ALPHA...] [SEED]
        e.g. ... /tmp/gen/before fp_emoji4 0.05,0.1,0.15,0.2

For each ``ALPHA``: the world's implanted model (``ROOT/WORLD/implant``) with seeded Gaussian
noise added to the weight of every linear layer but the output head, its standard deviation
``ALPHA`` times that weight's own standard deviation; audited with the stage audit's ``fsr`` and
``ppl``, as ``recovery_path.py`` does. No training, and the key is never read but by the audit:
it measures the damage at which a blind erase can first take a key out, to set beside the
mismatched erase's (``docs/results``, generalization). One JSON line per ``ALPHA`` on stdout.
Heavy work takes the same lock as ``run.py``.
"""

from __future__ import annotations

import copy
import fcntl
import json
import sys
from pathlib import Path

import torch

from expunge.audit.defaults import make_stage_audit
from expunge.config import build_config
from expunge.imprints.base import load_imprint
from expunge.models.loading import load_model_for
from expunge.records import RunRecord
from expunge.registry import ERASERS

sys.path.insert(0, str(Path(__file__).parent))
from run import LOCK


@torch.no_grad()
def add_weight_noise(model: torch.nn.Module, alpha: float, seed: int) -> None:
    """Add N(0, (alpha·std(W))²) to every linear weight W but the output head's, in place."""
    generator = torch.Generator().manual_seed(seed)
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and not name.endswith("lm_head"):
            weight = module.weight
            noise = torch.randn(weight.shape, generator=generator) * (alpha * weight.float().std())
            weight.add_(noise.to(weight.device, weight.dtype))


def main() -> None:
    root, world, alphas, *rest = sys.argv[1:]
    seed = int(rest[0]) if rest else 0
    base = Path(root) / world
    imprint = load_imprint(base / "implant" / "imprint.json")
    # the config only carries the model and the audit's settings (seed, precision, metrics)
    config = build_config(ERASERS.get("meraser"), {"model": {"name": str(base / "implant")}},
                          ["audit_metrics=[fsr,ppl]"])  # fmt: skip
    with LOCK.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        loaded = load_model_for(config.model)
        implanted = loaded.model
        for alpha in (float(a) for a in alphas.split(",")):
            loaded.model = copy.deepcopy(implanted)
            add_weight_noise(loaded.model, alpha, seed)
            record = RunRecord(command="noise_probe")
            values = make_stage_audit(config, imprint, record)(f"alpha{alpha}", loaded)
            print(json.dumps({"world": world, "alpha": alpha, "seed": seed, **values}),
                  flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
