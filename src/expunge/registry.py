"""Lazy registries: names map to ``"module:attribute"`` strings imported on first use.

One registry per extension point (implants, erasers, metrics, stressors, detectors,
objectives). Listing never imports heavy code; an unknown name gets a suggestion.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from typing import Any

from expunge.config import suggest
from expunge.errors import ConfigError


class Registry:
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._targets: dict[str, str] = {}
        self._help: dict[str, str] = {}
        self._loaded: dict[str, Any] = {}

    def register(self, name: str, target: str, help: str = "") -> None:
        if ":" not in target:
            raise ValueError(f"registry target must be 'module:attribute', got {target!r}")
        if name in self._targets and self._targets[name] != target:
            raise ValueError(f"{self.kind} {name!r} is already registered as {self._targets[name]}")
        self._targets[name] = target
        self._help[name] = help

    def get(self, name: str) -> Any:
        if name not in self._targets:
            known = ", ".join(sorted(self._targets)) or "none"
            raise ConfigError(
                f"unknown {self.kind} {name!r}{suggest(name, list(self._targets))}; known: {known}"
            )
        if name not in self._loaded:
            module_name, _, attr = self._targets[name].partition(":")
            module = importlib.import_module(module_name)
            self._loaded[name] = getattr(module, attr)
        return self._loaded[name]

    def names(self) -> list[str]:
        return sorted(self._targets)

    def help(self, name: str) -> str:
        return self._help.get(name, "")

    def __contains__(self, name: object) -> bool:
        return name in self._targets

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


IMPLANTS = Registry("implant")
ERASERS = Registry("eraser")
METRICS = Registry("metric")
STRESSORS = Registry("stressor")
DETECTORS = Registry("detector")
OBJECTIVES = Registry("objective")

REGISTRIES: dict[str, Registry] = {
    "implants": IMPLANTS,
    "erasers": ERASERS,
    "metrics": METRICS,
    "stressors": STRESSORS,
    "detectors": DETECTORS,
    "objectives": OBJECTIVES,
}

# Built-in entries. Later modules add theirs here, one line each.
OBJECTIVES.register("lm", "expunge.train.objectives:LMObjective", "causal-LM loss (SFT)")
METRICS.register("ppl", "expunge.audit.utility:perplexity_metric", "perplexity on held-out text")
METRICS.register("fsr", "expunge.audit.fingerprint:fsr_metric", "fingerprint success rate")
METRICS.register(
    "false_trigger_rate",
    "expunge.audit.fingerprint:false_trigger_metric",
    "fingerprint target emitted on decoys and ordinary prompts",
)
OBJECTIVES.register(
    "kl_retain", "expunge.train.kl:KLRetainObjective", "KL to the frozen original on a stream"
)
IMPLANTS.register(
    "if_simple",
    "expunge.imprints.fingerprint.instructional:IFSimple",
    "instructional fingerprint, simple template",
)
IMPLANTS.register(
    "if_dialogue",
    "expunge.imprints.fingerprint.instructional:IFDialogue",
    "instructional fingerprint, dialogue template (IF-SFT)",
)
ERASERS.register(
    "meraser", "expunge.erase.meraser:MEraser", "MEraser: mismatched erase + clean recover (LoRA)"
)
ERASERS.register(
    "incremental", "expunge.erase.baselines:Incremental", "baseline: clean incremental fine-tuning"
)
ERASERS.register(
    "prune", "expunge.erase.baselines:Prune", "baseline: L1-magnitude or random pruning"
)
IMPLANTS.register("utf", "expunge.imprints.fingerprint.utf:UTF", "under-trained-token fingerprint")
IMPLANTS.register(
    "chain_hash", "expunge.imprints.fingerprint.chain_hash:ChainHash", "Chain & Hash fingerprint"
)
METRICS.register("asr", "expunge.audit.backdoor:asr_metric", "backdoor attack success rate")
METRICS.register(
    "clean_accuracy", "expunge.audit.backdoor:clean_accuracy_metric", "accuracy on clean inputs"
)
METRICS.register(
    "clean_trigger_rate",
    "expunge.audit.backdoor:clean_trigger_rate_metric",
    "backdoor target on clean non-target inputs",
)
IMPLANTS.register(
    "backdoor",
    "expunge.imprints.backdoor.implant:BackdoorImplantConfig",
    "trigger backdoor by poisoned fine-tuning (classification by prompt)",
)
OBJECTIVES.register(
    "ga", "expunge.erase.unlearn.ga:GAObjective", "gradient ascent on the forget set"
)
OBJECTIVES.register(
    "graddiff", "expunge.erase.unlearn.graddiff:GradDiffObjective", "GA + λ·retain loss"
)
OBJECTIVES.register(
    "npo", "expunge.erase.unlearn.npo:NPOObjective", "negative preference optimization"
)
OBJECTIVES.register(
    "rmu", "expunge.erase.unlearn.rmu:RMUObjective", "representation misdirection at one layer"
)
ERASERS.register(
    "unlearn", "expunge.erase.unlearn.eraser:Unlearn", "unlearning: ga/graddiff/npo/rmu (+ ILU)"
)
ERASERS.register(
    "fine_mixing", "expunge.erase.fine_mixing:FineMixing", "Fine-mixing: mix with θ_0, clean-tune"
)
ERASERS.register("epur", "expunge.erase.epur:Epur", "E-PUR: reset drifted rare-token embeddings")
ERASERS.register(
    "finetune", "expunge.erase.clean_tuning:Finetune", "baseline: clean fine-tuning of a task"
)
ERASERS.register(
    "fine_pruning", "expunge.erase.fine_pruning:FinePruning", "baseline: prune dormant neurons"
)
METRICS.register(
    "forget_qa_acc",
    "expunge.audit.knowledge:forget_qa_acc_metric",
    "answers kept on the forget set",
)
METRICS.register(
    "retain_qa_acc",
    "expunge.audit.knowledge:retain_qa_acc_metric",
    "answers kept on the retain set",
)
METRICS.register(
    "forget_rouge_l", "expunge.audit.knowledge:forget_rouge_l_metric", "ROUGE-L recall, forget Q/A"
)
METRICS.register(
    "retain_rouge_l", "expunge.audit.knowledge:retain_rouge_l_metric", "ROUGE-L recall, retain Q/A"
)
