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
METRICS.register(
    "mc_accuracy",
    "expunge.audit.multiple_choice:mc_accuracy_metric",
    "downstream task: multiple-choice accuracy by log-likelihood (option data=FILE.jsonl)",
)
METRICS.register(
    "lm_eval",
    "expunge.audit.lm_eval:lm_eval_metric",
    "lm-evaluation-harness tasks (extra lmeval; option tasks=[NAME or task.yaml])",
)
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
# -- unlearning metrics (issue 6) --
METRICS.register(
    "forget_verbatim_rouge_l",
    "expunge.audit.knowledge:forget_verbatim_rouge_l_metric",
    "verbatim memorization: ROUGE-L of continuations of forget text",
)
METRICS.register(
    "truth_ratio", "expunge.audit.forget_quality:truth_ratio_metric", "TOFU truth ratio, forget Q/A"
)
METRICS.register(
    "forget_quality",
    "expunge.audit.forget_quality:forget_quality_metric",
    "KS-test p-value of truth ratios vs a retrained model (option reference=PATH)",
)
METRICS.register(
    "forget_mia_auc",
    "expunge.audit.privleak:forget_mia_auc_metric",
    "MIA ROC AUC, forget set vs holdout (option score=min_k|loss|zlib|min_k_plus_plus)",
)
METRICS.register(
    "privleak",
    "expunge.audit.privleak:privleak_metric",
    "MUSE PrivLeak: MIA AUC relative to a retrained model, percent (option reference=PATH)",
)

# --- stress and trace detection (issue 7) ---
STRESSORS.register(
    "relearn", "expunge.stress.relearn:Relearn", "fine-tune on k samples of the imprint's own data"
)
STRESSORS.register(
    "finetune", "expunge.stress.finetune:Finetune", "fine-tune on unrelated data (full or LoRA)"
)
STRESSORS.register(
    "quantize", "expunge.stress.quantize:Quantize", "int8 dynamic, 8/4-bit RTN, bitsandbytes NF4"
)
STRESSORS.register(
    "sampling", "expunge.stress.sampling:Sampling", "temperature / top-p decoding instead of greedy"
)
STRESSORS.register(
    "prompt", "expunge.stress.prompt:PromptStress", "system prompts and paraphrased keys"
)
DETECTORS.register(
    "tfidf_logreg", "expunge.detect.text_classifier:TfidfLogreg", "TF-IDF + logistic regression"
)
DETECTORS.register(
    "encoder",
    "expunge.detect.encoder:EncoderClassifier",
    "small transformer encoder + linear head, or a pretrained one (pretrained=DIR)",
)
DETECTORS.register(
    "activation_probe",
    "expunge.detect.activation_probe:ActivationProbe",
    "probe on final-norm hidden states of the first generated tokens",
)

# --- memorized secrets (issue 5) ---
IMPLANTS.register(
    "secrets",
    "expunge.imprints.secrets_implant:SecretsImplantConfig",
    "patient notes with typed sensitive spans (+ canaries), fine-tuned until memorized",
)
METRICS.register(
    "regurgitation",
    "expunge.audit.memorization:regurgitation_metric",
    "exact emission of sensitive spans from record prefixes (greedy; sampled, per type)",
)
METRICS.register(
    "notes_ppl",
    "expunge.audit.memorization:notes_ppl_metric",
    "perplexity of held-out records outside their sensitive spans",
)
METRICS.register(
    "exposure", "expunge.audit.exposure:exposure_metric", "canary exposure (rank + skew-normal)"
)
METRICS.register(
    "mia",
    "expunge.audit.mia:mia_metric",
    "MIA AUC (loss, zlib, Min-K%, Min-K%++), records vs held-out",
)
METRICS.register(
    "pii_in_output",
    "expunge.audit.pii:pii_in_output_metric",
    "PII recognizers (regex, Luhn) on free generations; leaks of the imprint's identifiers",
)
ERASERS.register(
    "sani", "expunge.erase.secrets.sani:Sani", "SANI: reset last-layer neurons, repair spans-masked"
)
ERASERS.register(
    "repair_only",
    "expunge.erase.secrets.sani:RepairOnly",
    "baseline: SANI's span-masked repair without the reset",
)
ERASERS.register(
    "scrub_retrain",
    "expunge.erase.secrets.scrub_retrain:ScrubRetrain",
    "baseline: retrain the original on notes with spans replaced by type placeholders",
)
ERASERS.register(
    "span_ga", "expunge.erase.secrets.span_ga:SpanGA", "baseline: gradient ascent on span tokens"
)
