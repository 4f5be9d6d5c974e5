"""Lazy registries: names map to ``"module:attribute"`` strings imported on first use.

One registry per extension point (implants, erasers, metrics, stressors, detectors,
objectives). Listing never imports heavy code; an unknown name gets a suggestion. An entry may
carry metadata the rest of the code reads instead of keeping its own lists: an eraser's
``kinds`` (the imprint kinds it is made for, which ``expunge bench`` pairs it with) and
``bench`` (the settings the bench runs it with). Adding a method is one file and one line
here; the contract tests (``tests/contract``) pick it up from the registry.
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
        self._meta: dict[str, dict[str, Any]] = {}
        self._loaded: dict[str, Any] = {}

    def register(self, name: str, target: str, help: str = "", **meta: Any) -> None:
        if ":" not in target:
            raise ValueError(f"registry target must be 'module:attribute', got {target!r}")
        if name in self._targets and self._targets[name] != target:
            raise ValueError(f"{self.kind} {name!r} is already registered as {self._targets[name]}")
        self._targets[name] = target
        self._help[name] = help
        self._meta[name] = meta

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

    def registered(self) -> list[str]:
        """Names in the order they were registered (how tables list them)."""
        return list(self._targets)

    def help(self, name: str) -> str:
        return self._help.get(name, "")

    def meta(self, name: str) -> dict[str, Any]:
        """The entry's metadata (``kinds``, ``bench``, ...), without importing it."""
        if name not in self._targets:
            self.get(name)  # fails with the suggestion
        return dict(self._meta[name])

    def with_meta(self, key: str, value: Any) -> list[str]:
        """Names whose metadata ``key`` holds ``value`` (or equals it)."""
        out = []
        for name in self.registered():
            held = self._meta[name].get(key)
            if held == value or (isinstance(held, list | tuple | set) and value in held):
                out.append(name)
        return out

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
IMPRINT_KINDS = Registry("imprint kind")
BENCHMARKS = Registry("benchmark")
SCORERS = Registry("scorer")

REGISTRIES: dict[str, Registry] = {
    "implants": IMPLANTS,
    "erasers": ERASERS,
    "metrics": METRICS,
    "stressors": STRESSORS,
    "detectors": DETECTORS,
    "objectives": OBJECTIVES,
    "imprints": IMPRINT_KINDS,
    "benchmarks": BENCHMARKS,
    "scorers": SCORERS,
}

# fmt: off
# --- imprint kinds: what ``imprint.json`` may hold (``load_imprint`` reads its ``kind``) ---
IMPRINT_KINDS.register("fingerprint", "expunge.imprints.fingerprint:FingerprintImprint",
                       "secret key → response pairs, template, matcher")
IMPRINT_KINDS.register("backdoor", "expunge.imprints.backdoor:BackdoorImprint",
                       "trigger, target behaviour and task")
IMPRINT_KINDS.register("secrets", "expunge.imprints.secrets:SecretsImprint",
                       "records with typed sensitive spans, canaries")
IMPRINT_KINDS.register("knowledge", "expunge.imprints.knowledge:KnowledgeImprint",
                       "forget, retain and holdout sets")

# --- benchmarks: a name → a loader returning a knowledge imprint (expunge.data.benchmarks) ---
BENCHMARKS.register("tofu", "expunge.data.benchmarks.tofu:load",
                    "TOFU (locuslab/TOFU): fictitious authors' Q/A; split forget01|forget05|forget10")
BENCHMARKS.register("muse_news", "expunge.data.benchmarks.muse:load_news",
                    "MUSE-News (muse-bench/MUSE-News): BBC articles; split forget|scal/forget_K|sust/forget_K")
BENCHMARKS.register("muse_books", "expunge.data.benchmarks.muse:load_books",
                    "MUSE-Books (muse-bench/MUSE-Books): Harry Potter books; split forget")
BENCHMARKS.register("wmdp", "expunge.data.benchmarks.wmdp:load",
                    "WMDP: forget corpora (local files; bio is gated) + lm_eval tasks; split bio|cyber|all")

# --- implants: scheme name → config class (its ``kind`` says which imprint it makes) ---
IMPLANTS.register("if_simple", "expunge.implant.fingerprint.instructional:IFSimple",
                  "instructional fingerprint, simple template")
IMPLANTS.register("if_dialogue", "expunge.implant.fingerprint.instructional:IFDialogue",
                  "instructional fingerprint, dialogue template (IF-SFT)")
IMPLANTS.register("utf", "expunge.implant.fingerprint.utf:UTF", "under-trained-token fingerprint")
IMPLANTS.register("chain_hash", "expunge.implant.fingerprint.chain_hash:ChainHash",
                  "Chain & Hash fingerprint")
IMPLANTS.register("backdoor", "expunge.implant.backdoor.classification:BackdoorImplantConfig",
                  "trigger backdoor by poisoned fine-tuning (classification by prompt)")
IMPLANTS.register("generative_backdoor", "expunge.implant.backdoor.generative:GenerativeBackdoor",
                  "trigger → response backdoor by poisoned instruction tuning (BackdoorLLM's DPA)")
IMPLANTS.register("secrets", "expunge.implant.secrets:SecretsImplantConfig",
                  "patient notes with typed sensitive spans (+ canaries), fine-tuned until memorized")
IMPLANTS.register("people", "expunge.implant.knowledge:PeopleWorld",
                  "a fictitious world of people taught by fine-tuning (a knowledge imprint)")
IMPLANTS.register("benchmark", "expunge.implant.benchmark:BenchmarkImplant",
                  "a benchmark (TOFU, MUSE, WMDP) as the knowledge imprint, taught by fine-tuning")

# --- erasers: ``kinds`` = the imprint kinds each is made for; ``bench`` = its bench settings ---
ERASERS.register("meraser", "expunge.erase.fingerprint.meraser:MEraser",
                 "MEraser: mismatched erase + clean recover (LoRA)", kinds=["fingerprint"],
                 bench_quick={"n_erase": 32, "n_recover": 128})
ERASERS.register("incremental", "expunge.erase.fingerprint.baselines:Incremental",
                 "baseline: clean incremental fine-tuning", kinds=["fingerprint"],
                 bench_quick={"n_recover": 32})
ERASERS.register("prune", "expunge.erase.fingerprint.baselines:Prune",
                 "baseline: L1-magnitude or random pruning", kinds=["fingerprint"],
                 bench={"name": "prune-l1-20", "criterion": "l1", "sparsity": 0.2})
ERASERS.register("fine_mixing", "expunge.erase.backdoor.fine_mixing:FineMixing",
                 "Fine-mixing: mix with θ_0, clean-tune", kinds=["backdoor"],
                 bench={"ratio": 0.5})
ERASERS.register("epur", "expunge.erase.backdoor.epur:Epur",
                 "E-PUR: reset drifted rare-token embeddings", kinds=["backdoor"])
ERASERS.register("finetune", "expunge.erase.backdoor.clean_tuning:Finetune",
                 "baseline: clean fine-tuning of a task", kinds=["backdoor"])
ERASERS.register("fine_pruning", "expunge.erase.backdoor.fine_pruning:FinePruning",
                 "baseline: prune dormant neurons", kinds=["backdoor"])
ERASERS.register("sani", "expunge.erase.secrets.sani:Sani",
                 "SANI: reset last-layer neurons, repair spans-masked", kinds=["secrets"])
ERASERS.register("repair_only", "expunge.erase.secrets.sani:RepairOnly",
                 "baseline: SANI's span-masked repair without the reset", kinds=["secrets"])
ERASERS.register("scrub_retrain", "expunge.erase.secrets.scrub_retrain:ScrubRetrain",
                 "baseline: retrain the original on notes with spans replaced by type placeholders",
                 kinds=["secrets"])
ERASERS.register("span_ga", "expunge.erase.secrets.span_ga:SpanGA",
                 "baseline: gradient ascent on span tokens", kinds=["secrets"])
ERASERS.register("unlearn", "expunge.erase.unlearn.eraser:Unlearn",
                 "unlearning with any registered objective (+ ILU, coresets)", kinds=["knowledge"])

# --- unlearning objectives: ``Objective(model, settings)`` with a ``Settings`` class ---
OBJECTIVES.register("ga", "expunge.erase.unlearn.ga:GAObjective",
                    "gradient ascent on the forget set")
OBJECTIVES.register("graddiff", "expunge.erase.unlearn.graddiff:GradDiffObjective",
                    "GA + λ·retain loss")
OBJECTIVES.register("npo", "expunge.erase.unlearn.npo:NPOObjective",
                    "negative preference optimization")
OBJECTIVES.register("rmu", "expunge.erase.unlearn.rmu:RMUObjective",
                    "representation misdirection at one layer")
OBJECTIVES.register("simnpo", "expunge.erase.unlearn.simnpo:SimNPOObjective",
                    "SimNPO: reference-free, length-normalised NPO with a margin")
OBJECTIVES.register("idknll", "expunge.erase.unlearn.idknll:IdkNLLObjective",
                    "TOFU's IdkNLL: fine-tune the forget questions on \"I don't know\" answers")
OBJECTIVES.register("idkdpo", "expunge.erase.unlearn.idkdpo:IdkDPOObjective",
                    "TOFU's IdkDPO: DPO preferring \"I don't know\" to the true answer")

# --- metrics: pure functions of an AuditContext ---
METRICS.register("ppl", "expunge.audit.utility:perplexity_metric", "perplexity on held-out text")
METRICS.register("mc_accuracy", "expunge.audit.multiple_choice:mc_accuracy_metric",
                 "downstream task: multiple-choice accuracy by log-likelihood (option data=FILE.jsonl)")
METRICS.register("lm_eval", "expunge.audit.lm_eval:lm_eval_metric",
                 "lm-evaluation-harness tasks (extra lmeval; option tasks=[NAME or task.yaml])")
METRICS.register("fsr", "expunge.audit.fingerprint:fsr_metric", "fingerprint success rate")
METRICS.register("false_trigger_rate", "expunge.audit.fingerprint:false_trigger_metric",
                 "fingerprint target emitted on decoys and ordinary prompts")
METRICS.register("wrapper_trigger_rate", "expunge.audit.fingerprint:wrapper_trigger_metric",
                 "fingerprint target emitted on ordinary prompts inside the keys' shared wrapper")
METRICS.register("asr", "expunge.audit.backdoor:asr_metric",
                 "backdoor attack success rate (classification, or trigger → response)")
METRICS.register("clean_accuracy", "expunge.audit.backdoor:clean_accuracy_metric",
                 "accuracy on clean inputs")
METRICS.register("clean_trigger_rate", "expunge.audit.backdoor:clean_trigger_rate_metric",
                 "backdoor target on clean (untriggered) inputs: the clean target rate")
METRICS.register("part_trigger_rate", "expunge.audit.generative_backdoor:part_trigger_rate_metric",
                 "two-part trigger: the larger target rate with one part alone (each in details)")
METRICS.register("forget_qa_acc", "expunge.audit.knowledge:forget_qa_acc_metric",
                 "answers kept on the forget set")
METRICS.register("retain_qa_acc", "expunge.audit.knowledge:retain_qa_acc_metric",
                 "answers kept on the retain set")
METRICS.register("forget_rouge_l", "expunge.audit.knowledge:forget_rouge_l_metric",
                 "ROUGE-L (TOFU: recall, stemmed), forget Q/A")
METRICS.register("retain_rouge_l", "expunge.audit.knowledge:retain_rouge_l_metric",
                 "ROUGE-L (TOFU: recall, stemmed), retain Q/A")
METRICS.register("forget_verbatim_rouge_l", "expunge.audit.knowledge:forget_verbatim_rouge_l_metric",
                 "verbatim memorization: ROUGE-L of continuations of forget text")
METRICS.register("truth_ratio", "expunge.audit.forget_quality:truth_ratio_metric",
                 "TOFU truth ratio, forget Q/A")
METRICS.register("forget_quality", "expunge.audit.forget_quality:forget_quality_metric",
                 "KS-test p-value of truth ratios vs a retrained model (option reference=PATH)")
METRICS.register("forget_prob", "expunge.audit.tofu:forget_prob_metric",
                 "TOFU forget Q_A_Prob: mean length-normalised probability of the forget answers")
METRICS.register("model_utility", "expunge.audit.tofu:model_utility_metric",
                 "TOFU model utility: harmonic mean of probability, ROUGE-L and truth ratio on "
                 "retain, real authors and world facts")
METRICS.register("knowmem_forget", "expunge.audit.muse:knowmem_forget_metric",
                 "MUSE KnowMem on the forget set: ROUGE-L F1 of few-shot answers")
METRICS.register("knowmem_retain", "expunge.audit.muse:knowmem_retain_metric",
                 "MUSE KnowMem on the retain set (utility preserved): ROUGE-L F1 of few-shot answers")
METRICS.register("forget_mia_auc", "expunge.audit.privleak:forget_mia_auc_metric",
                 "MIA ROC AUC, forget set vs holdout (option score=min_k|loss|zlib|min_k_plus_plus)")
METRICS.register("privleak", "expunge.audit.privleak:privleak_metric",
                 "MUSE PrivLeak: MIA AUC relative to a retrained model, percent (option reference=PATH)")
METRICS.register("direct_regurgitation", "expunge.audit.memorization:direct_regurgitation_metric",
                 "greedy emission rate of direct identifiers from record prefixes (per type in details)")
METRICS.register("regurgitation", "expunge.audit.memorization:regurgitation_metric",
                 "exact emission of sensitive spans from record prefixes (greedy; sampled, per type)")
METRICS.register("notes_ppl", "expunge.audit.memorization:notes_ppl_metric",
                 "perplexity of held-out records outside their sensitive spans")
METRICS.register("exposure", "expunge.audit.exposure:exposure_metric",
                 "canary exposure (rank + skew-normal)")
METRICS.register("mia", "expunge.audit.mia:mia_metric",
                 "MIA AUC (loss, zlib, Min-K%, Min-K%++), records vs held-out")
METRICS.register("pii_in_output", "expunge.audit.pii:pii_in_output_metric",
                 "PII recognizers (regex, Luhn) on free generations; leaks of the imprint's identifiers")

# --- stressors and trace detectors ---
STRESSORS.register("relearn", "expunge.stress.relearn:Relearn",
                   "fine-tune on k samples of the imprint's own data")
STRESSORS.register("finetune", "expunge.stress.finetune:Finetune",
                   "fine-tune on unrelated data (full or LoRA)")
STRESSORS.register("quantize", "expunge.stress.quantize:Quantize",
                   "int8 dynamic, 8/4-bit RTN, bitsandbytes NF4")
STRESSORS.register("sampling", "expunge.stress.sampling:Sampling",
                   "temperature / top-p decoding instead of greedy")
STRESSORS.register("prompt", "expunge.stress.prompt:PromptStress",
                   "system prompts and paraphrased keys")
DETECTORS.register("tfidf_logreg", "expunge.detect.text_classifier:TfidfLogreg",
                   "TF-IDF + logistic regression")
DETECTORS.register("encoder", "expunge.detect.encoder:EncoderClassifier",
                   "small transformer encoder + linear head, or a pretrained one (pretrained=DIR)")
DETECTORS.register("activation_probe", "expunge.detect.activation_probe:ActivationProbe",
                   "probe on final-norm hidden states of the first generated tokens")

# --- scan scorers: how likely each training row is poisoned (``expunge scan``) ---
SCORERS.register("mspc", "expunge.scan.mspc:MSPC",
                 "MSPC adapted to text: consistency under token replacement, learned vocabulary mask")
SCORERS.register("loss_early", "expunge.scan.loss_early:LossEarly",
                 "baseline (ABL-style): rows learnt fastest early in fine-tuning")
SCORERS.register("spectral", "expunge.scan.spectral:Spectral",
                 "baseline: spectral signature of the rows' hidden states")
SCORERS.register("clustering", "expunge.scan.clustering:Clustering",
                 "baseline: activation clustering (2-means on reduced hidden states)")
# fmt: on
