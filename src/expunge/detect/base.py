"""``expunge detect``: can anyone tell the erased model from the original?

Unlearning trace detection (METHODS.md §5.4, seed ``003_…``), applied to every eraser:

1. two prompt sets — **relevant** (the imprint's own data, ``imprint.relearn_examples()``: the
   fingerprint keys, backdoor-triggered inputs, secret records, the forget set — or a JSONL)
   and **unrelated** (the built-in held-out questions, never used for training, then questions
   from the end of the Q/A pool) — are asked of both models, ``samples`` sampled responses
   per prompt (the original with seed s, the other model with seed s');
2. for each set and detector, a grouped ``folds``-fold cross-validation over prompts (no prompt
   on both sides of a split) gives every response one out-of-fold prediction: which model
   wrote it; the record holds the accuracy, a 95% cluster-bootstrap interval over prompts, the
   Wilson interval over responses and, with ``permutations``, the p-value of a permutation test
   against chance (``stats``): the intervals leave out the detectors' own variance, the test
   does not, so "above chance" is read from the p-value;
3. the same procedure with the original against a **clearly altered** copy (Gaussian noise on
   every linear layer, or ``positive_model``) must reach ≈ 100% — the *positive control* —
   and against **itself** sampled with seed s' must stay ≈ 50% — the *negative control* —
   so the erased model's number means something.

Metrics: ``COMPARISON/SET/DETECTOR/accuracy`` (``ci_low``, ``ci_high``, ``p_value``) with
COMPARISON one of ``erased``, ``positive_control``, ``negative_control``. Prompts and responses
are secrets when the imprint is (fingerprint keys, PII): the record holds counts only, and
``responses.jsonl`` is written (mode 0600) only with ``save_responses=true``.
"""

from __future__ import annotations

import random
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, model_validator

from expunge.config import build_config
from expunge.data.formatting import FormatSettings, resolve_template
from expunge.data.loaders import load_examples
from expunge.data.qa_pool import pool_questions
from expunge.detect.responses import (
    DetectData,
    Responses,
    check_same_tokenizer,
    classifier_responses,
    example_prompt,
    pair,
    perturbed_copy,
    prompt_ids,
    sample_responses,
)
from expunge.detect.splits import check_prompt_count, grouped_folds
from expunge.detect.stats import (
    cluster_bootstrap_interval,
    permutation_p_value,
    wilson_interval,
    within_group_permutation,
)
from expunge.errors import ConfigError, DataError, ModelError
from expunge.files import PRIVATE_FILE, atomic_write_json, atomic_write_text
from expunge.imprints.backdoor import BackdoorImprint
from expunge.imprints.base import Imprint, load_imprint
from expunge.lazy import lazy
from expunge.models.classifier import classification_examples, is_sequence_classifier
from expunge.models.device import autocast
from expunge.models.loading import ModelSettings
from expunge.records import RunRecord
from expunge.registry import DETECTORS
from expunge.stage import StageConfig, StageContext

if TYPE_CHECKING:
    import numpy as np
else:  # loaded when first used, not when a config is checked (expunge.lazy)
    np = lazy("numpy")

COMPARISONS = ("erased", "positive_control", "negative_control")


class DetectConfig(StageConfig):
    KIND: ClassVar[str] = "detect"
    command: Literal["detect"] = "detect"
    original: ModelSettings = Field(default_factory=ModelSettings)
    erased: ModelSettings = Field(default_factory=lambda: ModelSettings(name=""))
    imprint: str | None = None  # its relearn_examples() are the relevant prompts
    relevant: str | None = None  # JSONL/dataset of relevant prompts (instead of the imprint's)
    unrelated: str | None = None  # JSONL/dataset of unrelated prompts (default: built-in)
    # how both sets are asked: the format the models were fine-tuned in (a knowledge imprint
    # records none: audit_format.template=raw for the unlearning demo's models); None = the
    # imprint's own template for its prompts and the tokenizer's chat format for the rest
    audit_format: FormatSettings | None = None
    max_relevant: int | None = Field(default=64, ge=1)
    n_unrelated: int = Field(default=32, ge=1)
    samples: int = Field(default=4, ge=1)  # sampled responses per prompt and model
    max_new_tokens: int = Field(default=32, ge=1)
    temperature: float = Field(default=1.0, gt=0)
    top_p: float = Field(default=0.95, gt=0, le=1)
    probe_tokens: int = Field(default=8, ge=1)  # first generated tokens the probe averages
    detectors: list[str] = Field(
        default_factory=lambda: ["tfidf_logreg", "encoder", "activation_probe"]
    )
    options: dict[str, dict[str, Any]] = Field(default_factory=dict)  # per detector
    folds: int = Field(default=4, ge=2)
    min_prompts: int = Field(default=8, ge=2)  # per prompt set
    controls: bool = True
    positive_noise: float = Field(default=0.5, gt=0)  # × each layer's weight std
    positive_model: str | None = None  # a clearly different model instead of the noisy copy
    bootstrap: int = Field(default=2000, ge=100)
    # the permutation test against chance: each permutation refits every fold's detector
    # (0 = no test). A detector that trains a network per fold (``cheap_refit`` false: the
    # encoder, unless a frozen pretrained reader) is tested only with permute_costly=true
    permutations: int = Field(default=100, ge=0)
    permute_costly: bool = False
    save_responses: bool = False
    batch_size: int = Field(default=16, ge=1)
    # compute precision of the sampling and of the probe's hidden states (auto | fp32 | bf16);
    # a pipeline's precision sets it
    precision: Literal["auto", "fp32", "bf16"] = "fp32"
    seed: int = 0
    progress: bool = True

    @model_validator(mode="after")
    def _check(self) -> DetectConfig:
        unknown = set(self.options) - set(self.detectors)
        if unknown:
            raise ValueError(f"options given for detectors not requested: {sorted(unknown)}")
        return self

    def detector(self, name: str) -> Any:
        return build_config(
            DETECTORS.get(name), self.options.get(name, {}), source=f"options.{name}"
        )

    def validate_inputs(self) -> None:
        if not self.erased.name:
            raise ConfigError("detect needs the erased model: --erased DIR")
        if not self.detectors:
            raise ConfigError("no detectors requested")
        for name in self.detectors:
            self.detector(name)
        imprint = load_imprint(self.imprint) if self.imprint else None
        prompt_sets(self, imprint)  # prompt-count errors before any model loads

    def models_to_load(self) -> dict[str, ModelSettings]:
        models = {"original": self.original, "erased": self.erased}
        if self.controls and self.positive_model is not None:
            models["positive"] = ModelSettings(name=self.positive_model,
                                               device=self.original.device)  # fmt: skip
        return models

    def execute(self, ctx: StageContext) -> None:
        """Sample both models (and the controls), train the detectors, fill the record."""
        config, record, imprint = self, ctx.record, ctx.imprint
        original, erased = ctx.models["original"], ctx.models["erased"]
        positive = ctx.models.get("positive")
        check_same_tokenizer(original.tokenizer, erased.tokenizer, f"original ({original.path})",
                             f"erased ({erased.path})")  # fmt: skip
        if positive is not None:
            check_same_tokenizer(original.tokenizer, positive.tokenizer, "original",
                                 f"positive_model ({positive.path})")  # fmt: skip
        detectors = {name: config.detector(name) for name in config.detectors}
        # hidden states cost one more forward pass per response; only a probe reads them
        states = any(getattr(d, "USES", None) == "features" for d in detectors.values())
        sets = prompt_sets(config, imprint)
        record.inputs.update({
            "prompt_sets": {name: len(prompts) for name, (prompts, _) in sets.items()},
            "positive_control": config.positive_model or f"noise {config.positive_noise}×std",
        })  # fmt: skip
        tokenizer = original.tokenizer
        seed_a, seed_b = config.seed, config.seed + 1_000_003
        classify = is_sequence_classifier(original.model)
        if classify != is_sequence_classifier(erased.model):
            raise ModelError(f"{original.path} and {erased.path}: one is a sequence classifier and "
                             "the other is not; detection compares a model with its erased copy")  # fmt: skip
        if classify:
            inputs = classifier_inputs(sets, imprint, tokenizer, config.relevant is None)
            record.inputs["responses"] = "labels drawn from the classifier's softmax"

        def sample(model, set_name: str, seed: int, label: str) -> Responses:
            with autocast(config.precision, next(model.parameters()).device):
                if classify:  # an encoder classifier answers with a label, not text
                    return classifier_responses(model, tokenizer, inputs[set_name],
                                                config.samples, config.temperature, seed,
                                                config.batch_size)  # fmt: skip
                prompts, fmt = sets[set_name]
                ids = prompt_ids(prompts, tokenizer, resolve_template(tokenizer, fmt))
                return sample_responses(
                    model, tokenizer, ids, config.samples, config.max_new_tokens,
                    config.temperature, config.top_p, seed, k=config.probe_tokens,
                    batch_size=config.batch_size, progress=config.progress,
                    description=f"{label}/{set_name}", states=states,
                )  # fmt: skip

        started = time.perf_counter()
        responses: dict[str, dict[str, Responses]] = {}
        for set_name in sets:
            responses[set_name] = {
                "original": sample(original.model, set_name, seed_a, "original"),
                "erased": sample(erased.model, set_name, seed_b, "erased"),
            }
            if config.controls:
                responses[set_name]["negative_control"] = sample(
                    original.model, set_name, seed_b, "original, another seed"
                )
        if config.controls:
            altered = (positive.model if positive is not None
                       else perturbed_copy(original.model, config.positive_noise, config.seed))  # fmt: skip
            for set_name in sets:
                responses[set_name]["positive_control"] = sample(
                    altered, set_name, seed_b, "altered copy"
                )
            del altered
        # seconds: the sampling, then each detector's cross-validations and permutations
        record.timings["sampling"] = round(time.perf_counter() - started, 3)

        comparisons = [c for c in COMPARISONS if c == "erased" or config.controls]
        for comparison in comparisons:
            for set_name in sets:
                data = pair(responses[set_name]["original"], responses[set_name][comparison])
                for name, detector in detectors.items():
                    tested = config.permute_costly or getattr(detector, "cheap_refit", True)
                    started = time.perf_counter()
                    result = evaluate(data, detector, config.folds, config.seed,
                                      config.bootstrap, config.permutations if tested else 0)  # fmt: skip
                    spent = record.timings.get(name, 0.0) + time.perf_counter() - started
                    record.timings[name] = round(spent, 3)
                    key = f"{comparison}/{set_name}/{name}"
                    for field in ("accuracy", "ci_low", "ci_high", "p_value"):
                        if field in result:
                            record.metrics[f"{key}/{field}"] = result[field]
                    record.metric_details[f"{key}/accuracy"] = {"higher_is_better": False,
                                                                **result}  # fmt: skip
        record.metric_details["responses"] = {
            set_name: {who: {"empty": int(sum(not t.strip() for t in r.texts)),
                             "mean_tokens": float(np.mean([len(i) for i in r.token_ids]))}
                       for who, r in by_model.items()}
            for set_name, by_model in responses.items()
        }  # fmt: skip
        if config.save_responses:
            rows = [{"set": s, "model": who, "prompt": sets[s][0][int(g)], "response": text}
                    for s, by_model in responses.items() for who, r in by_model.items()
                    for g, text in zip(r.groups, r.texts, strict=True)]  # fmt: skip
            atomic_write_json(ctx.work / "responses.json", rows, mode=PRIVATE_FILE)
            record.artifacts["responses"] = "responses.json"
        atomic_write_text(ctx.work / "trace.md", trace_markdown(record, list(sets), comparisons,
                                                            list(detectors)))  # fmt: skip
        record.artifacts["report"] = "trace.md"


def classifier_inputs(
    sets: dict[str, tuple[list[str], FormatSettings]], imprint: Imprint | None, tokenizer: Any,
    from_imprint: bool,
) -> dict[str, list[list[int]]]:  # fmt: skip
    """Each prompt as an encoder classifier reads it: a backdoor imprint's relevant prompts are
    its poisoned task items (the item's text, and text_b, in the tokenizer's own encoding, as
    they were trained), every other prompt is one plain text."""
    items: dict[str, Any] = {}
    task = None
    if from_imprint and isinstance(imprint, BackdoorImprint):
        task, poisoned = imprint.poisoned_items()
        items = {task.render(item): item for item in poisoned}
    out: dict[str, list[list[int]]] = {}
    for name, (prompts, _) in sets.items():
        ids = []
        for prompt in prompts:
            item = items.get(prompt) if name == "relevant" else None
            if item is not None and task is not None:
                ids.append(classification_examples(task, [item], tokenizer)[0].input_ids)
            else:
                ids.append(tokenizer(prompt, truncation=True, max_length=512)["input_ids"])
        out[name] = ids
    return out


def prompt_sets(
    config: DetectConfig, imprint: Imprint | None
) -> dict[str, tuple[list[str], FormatSettings]]:
    """The relevant and unrelated prompts (deduplicated) and how each set is formatted."""
    sets: dict[str, tuple[list[str], FormatSettings]] = {}
    chosen = config.audit_format
    if config.relevant is not None:
        relevant = [example_prompt(e) for e in load_examples(config.relevant)]
        sets["relevant"] = (relevant, chosen or FormatSettings())
    elif imprint is not None:
        examples = imprint.relearn_examples()
        relevant = [example_prompt(e) for e in examples]
        fmt = chosen or (imprint.format_settings() if hasattr(imprint, "format_settings")
                         else FormatSettings())  # fmt: skip
        if all(e.kind == "text" for e in examples):  # a text's first half, continued as is
            fmt = fmt.model_copy(update={"raw_prompt_format": "{prompt}"})
        sets["relevant"] = (relevant, fmt)
    if config.unrelated is not None:
        unrelated = [example_prompt(e) for e in load_examples(config.unrelated)]
    else:
        from expunge.audit.utility import builtin_heldout

        unrelated = [e.prompt for e in builtin_heldout() if e.prompt]
        # then pool questions from the end of the shuffled pool: erasers draw from its start
        unrelated += [q for q, _ in reversed(pool_questions(seed=0))]
    sets["unrelated"] = (unrelated, chosen or FormatSettings())
    out = {}
    for name, (prompts, fmt) in sets.items():
        unique = list(dict.fromkeys(p for p in prompts if p.strip()))
        if name == "relevant" and config.max_relevant and len(unique) > config.max_relevant:
            unique = random.Random(config.seed).sample(unique, config.max_relevant)
        if name == "unrelated":
            unique = unique[: config.n_unrelated]
        check_prompt_count(name, len(unique), config.folds, config.min_prompts)
        out[name] = (unique, fmt)
    return out


Split = tuple[np.ndarray, np.ndarray, DetectData, DetectData]


def fold_subsets(data: DetectData, folds: int, seed: int) -> list[Split]:
    """(training indices, test indices, training set, test set) of each grouped fold, split
    once: the split depends on the prompts only, so every permutation of the labels reuses it."""
    out = []
    for train_index, test_index in grouped_folds(data.groups, folds, seed):
        train, test = data.subset(train_index), data.subset(test_index)
        if set(np.unique(train.groups)) & set(np.unique(test.groups)):
            raise AssertionError("a prompt on both sides of the split")  # splits.py guarantees
        out.append((train_index, test_index, train, test))
    return out


def out_of_fold(data: DetectData, splits: list[Split], detector: Any, seed: int) -> np.ndarray:
    """Each response's prediction (0 or 1) by a detector fitted on the other folds' prompts,
    with ``data``'s labels (the splits' own labels are replaced by them)."""
    predicted = np.full(len(data.labels), -1, dtype=np.int64)
    for train_index, test_index, train, test in splits:
        scores = detector.fit_predict(replace(train, labels=data.labels[train_index]),
                                      replace(test, labels=data.labels[test_index]), seed=seed)  # fmt: skip
        predicted[test_index] = (np.asarray(scores) >= 0.5).astype(np.int64)
    return predicted


def evaluate(data: DetectData, detector: Any, folds: int, seed: int, n_boot: int,
             permutations: int = 0) -> dict[str, Any]:  # fmt: skip
    """Grouped cross-validation: out-of-fold predictions, accuracy and its intervals, and with
    ``permutations`` the p-value of the accuracy against chance (``stats``: the same folds and
    detector, refitted on labels shuffled within each prompt)."""
    splits = fold_subsets(data, folds, seed)
    predicted = out_of_fold(data, splits, detector, seed)
    correct = predicted == data.labels
    n, hits = len(correct), int(correct.sum())
    fold_accuracy = [float(np.mean(correct[test])) for _, test, _, _ in splits]
    low, high = cluster_bootstrap_interval(correct, data.groups, n_boot, seed)
    result = {
        "accuracy": hits / n, "ci_low": low, "ci_high": high,
        "wilson": list(wilson_interval(hits, n)), "n_responses": n,
        "n_prompts": len(np.unique(data.groups)), "folds": folds, "fold_accuracy": fold_accuracy,
        "ci": "95% bootstrap over prompts", "chance": 0.5,
    }  # fmt: skip
    if permutations:
        rng = np.random.default_rng([seed, 1])  # apart from the folds' and the bootstrap's draws
        null = np.empty(permutations)
        for i in range(permutations):
            shuffled = replace(data, labels=within_group_permutation(data.labels, data.groups, rng))
            null[i] = np.mean(out_of_fold(shuffled, splits, detector, seed) == shuffled.labels)
        result.update({
            "p_value": permutation_p_value(hits / n, null), "permutations": permutations,
            "null_mean": float(null.mean()), "null_q95": float(np.quantile(null, 0.95)),
            "test": "permutation, labels shuffled within each prompt, one-sided (above chance)",
        })  # fmt: skip
    return result


def trace_markdown(record: RunRecord, sets: list[str], comparisons: list[str],
                   detectors: list[str]) -> str:  # fmt: skip
    """One table: accuracy [95% CI] per comparison, prompt set and detector."""
    header = "| comparison | prompts | " + " | ".join(detectors) + " |"
    lines = [header, "|---|---|" + "---:|" * len(detectors)]
    for comparison in comparisons:
        for set_name in sets:
            cells = []
            for name in detectors:
                key = f"{comparison}/{set_name}/{name}"
                if f"{key}/accuracy" not in record.metrics:
                    raise DataError(f"no result for {key}")
                p_value = record.metrics.get(f"{key}/p_value")
                cells.append(f"{100 * record.metrics[f'{key}/accuracy']:.1f}% "
                             f"[{100 * record.metrics[f'{key}/ci_low']:.0f}–"
                             f"{100 * record.metrics[f'{key}/ci_high']:.0f}]"
                             + (f", p {p_value:.3g}" if p_value is not None else ""))  # fmt: skip
            lines.append(f"| {comparison} | {set_name} | " + " | ".join(cells) + " |")
    return (
        "# Trace detection\n\nHeld-out accuracy of telling the original's responses from the "
        "other model's (chance 50%), out-of-fold over a split grouped by prompt; 95% bootstrap "
        "interval over prompts, which leaves out the detector's own variance; p: a permutation "
        "test of the accuracy against chance (labels shuffled within each prompt, every fold "
        'refitted), the figure to read for "above chance". Positive control: a clearly altered '
        "copy (≈100% expected); negative control: the original with another sampling seed "
        "(≈50% expected).\n\n" + "\n".join(lines) + "\n"
    )
