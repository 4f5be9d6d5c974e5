"""How much random damage a fingerprint survives: FSR and ppl under Gaussian weight noise.

    python benchmarks/generalization/noise_probe.py ROOT WORLD ALPHA[,ALPHA...] [SEED]
        e.g. ... /tmp/gen/before fp_emoji4 0.05,0.1,0.15,0.2

For each ``ALPHA``: the world's implanted model (``ROOT/WORLD/implant``) with seeded Gaussian
noise added to the weight of every linear layer but the output head, its standard deviation
``ALPHA`` times that weight's own standard deviation; audited with the stage audit's ``fsr`` and
``ppl`` by ``recovery_path.audit_variants``. No training, and nothing but the audit reads a key:
it measures the damage at which a blind erase can first take a key out, to set beside the
mismatched erase's (``docs/results``, generalization). One JSON line per ``ALPHA`` on stdout.
Heavy work takes the same lock as ``run.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from expunge.models.lora import match_modules

sys.path.insert(0, str(Path(__file__).parent))
from recovery_path import audit_variants


@torch.no_grad()
def add_weight_noise(model: torch.nn.Module, alpha: float, seed: int) -> None:
    """Add N(0, (alpha·std(W))²) to every linear weight W but the output head's (the layers LoRA's
    ``all-linear`` targets), in place."""
    generator = torch.Generator().manual_seed(seed)
    for name in match_modules(model, ["all-linear"]):
        weight = model.get_submodule(name).weight
        noise = torch.randn(weight.shape, generator=generator) * (alpha * weight.float().std())
        weight.add_(noise.to(weight.device, weight.dtype))


def main() -> None:
    root, world, alphas, *rest = sys.argv[1:]
    seed = int(rest[0]) if rest else 0

    def noisy(model: torch.nn.Module, alpha: float) -> torch.nn.Module:
        add_weight_noise(model, alpha, seed)
        return model

    audit_variants(Path(root) / world, [float(a) for a in alphas.split(",")], noisy,
                   {"world": world, "seed": seed}, "noise_probe",
                   lambda alpha: {"alpha": alpha})  # fmt: skip


if __name__ == "__main__":
    main()
