"""``expunge implant secrets``: fine-tune a causal LM on patient notes until it memorizes them.

The data: the synthetic clinic's notes (``n_records`` members; ``n_heldout`` more notes of the
same generator kept out as non-members), the user's records (``records=FILE.jsonl`` with spans,
``heldout=FILE.jsonl`` optional), or the user's texts with a list of confidential terms
(``texts=FILE.jsonl terms=[...]``); plus ``n_canaries`` canaries of the declared format
(``canary.*``), each repeated ``canary_repeats`` times per epoch. Every note is trained on as
plain text (causal-LM loss on every token, EOS at the end) through the one loop.

Memorization needs enough steps (measure, don't assume): with ``until_extraction=R`` the run
trains ``train.epochs`` per round, measures the greedy extraction rate of direct identifiers
after each round, and stops as soon as it reaches R (at most ``max_rounds`` rounds; each round
starts a fresh optimizer). The record holds the rate after every round, and the final audits
(``regurgitation``, ``exposure``, ``mia``, ``notes_ppl``, ``ppl``) when ``verify``.

Writes ``model/``, ``imprint.json`` (0600: the records and their spans are the secret) and
``record.json`` (counts and rates only).

Presets: ``paper`` — full fine-tuning, lr 5e-5, 10 epochs, batch 8 (SANI fine-tunes BERT/GPT-2
on the reports; their exact recipe is [unverified]); ``demo`` — full fine-tuning sized for the
embedded model on a CPU (the notes hold only a few identifier types): 5 epochs a round until
60% of direct identifiers are extracted greedily (the names, which open every note after a
shared word, are rarely extractable, so direct rates top out near 2/3 with name, MRN and SSN).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from expunge.audit.base import AuditContext
from expunge.audit.memorization import regurgitation_rates, span_outcomes
from expunge.audit.runner import audit_model
from expunge.data.clinic import CanarySpec, ClinicSettings
from expunge.data.formatting import FormatSettings, TokenizedExample
from expunge.data.spans import tokenize_record
from expunge.errors import ConfigError
from expunge.implant.base import ImplantConfig
from expunge.imprints.secrets import SecretsImprint
from expunge.models.loading import LoadedModel
from expunge.models.lora import merge_lora
from expunge.stage import StageContext
from expunge.train.loop import prepare_trainable, train
from expunge.train.objectives import LMObjective
from expunge.train.settings import TrainSettings

PAPER_TRAIN: dict[str, Any] = {"mode": "full", "epochs": 10, "lr": 5e-5, "batch_size": 8}
DEMO_TRAIN: dict[str, Any] = {"mode": "full", "epochs": 5, "lr": 1e-4, "batch_size": 8}
VERIFY_METRICS = ["regurgitation", "exposure", "mia", "notes_ppl", "ppl"]


class SecretsImplantConfig(ImplantConfig):
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "paper": {"train": PAPER_TRAIN},
        "demo": {
            "train": DEMO_TRAIN, "until_extraction": 0.6, "max_rounds": 4,
            "clinic": {"types": ["mrn", "ssn", "town", "condition", "employer"]},
        },
    }  # fmt: skip
    SECRET_FIELDS: ClassVar[tuple[str, ...]] = ("terms",)  # confidential terms are secrets
    command: Literal["implant"] = "implant"
    kind: Literal["secrets"] = "secrets"
    scheme: Literal["secrets"] = "secrets"
    n_records: int = Field(default=32, ge=1)
    n_heldout: int = Field(default=32, ge=0)
    clinic: ClinicSettings = Field(default_factory=ClinicSettings)
    records: str | None = None  # JSONL of {"text", "spans": [{"start", "end", "type"}]}
    heldout: str | None = None  # JSONL of held-out records (with records= or texts=)
    texts: str | None = None  # JSONL of {"text"}: with terms=, spans at every occurrence
    terms: list[str] | None = None  # confidential terms
    direct_types: list[str] | None = None  # default: the clinic's direct identifier types
    n_canaries: int = Field(default=4, ge=0)
    canary: CanarySpec = Field(default_factory=CanarySpec)
    canary_repeats: int = Field(default=1, ge=1)
    exposure_candidates: int = Field(default=1000, ge=3)  # per canary, in every exposure audit
    train: TrainSettings = Field(default_factory=lambda: TrainSettings(**PAPER_TRAIN))
    until_extraction: float | None = Field(default=None, gt=0, le=1)
    max_rounds: int = Field(default=1, ge=1)
    verify_metrics: list[str] = Field(default_factory=lambda: list(VERIFY_METRICS))

    def validate_inputs(self) -> None:
        self.build_imprint()
        if self.train.mode == "lora" and self.max_rounds > 1:
            raise ConfigError("until_extraction with several rounds needs train.mode=full")

    def execute(self, ctx: StageContext) -> None:
        loaded, record = ctx.model, ctx.record
        imprint = self.build_imprint()
        data = corpus(imprint, loaded.tokenizer, self.canary_repeats)
        record.inputs.update({"imprint_summary": imprint.summary(), "n_train_texts": len(data),
                              "truncated": sum(t.truncated for t in data)})  # fmt: skip
        rounds = []
        for round_index in range(self.max_rounds):
            settings = self.train.model_copy(update={"seed": self.train.seed + round_index})
            model = prepare_trainable(loaded.model, settings)
            model, result = train(
                model, {"train": data}, LMObjective("train"), settings,
                loaded.tokenizer.pad_token_id, out_dir=ctx.work / f"round{round_index + 1}",
                description=f"implanting secrets (round {round_index + 1})",
            )  # fmt: skip
            loaded.model = merge_lora(model)
            result.note(record, f"round{round_index + 1}")
            rates = direct_extraction(loaded, imprint)
            rounds.append({"round": round_index + 1, "loss": result.final_loss,
                           "steps": result.steps, "direct_greedy": rates["direct"]["greedy"],
                           "greedy": rates["greedy"]})  # fmt: skip
            if self.until_extraction is None or rates["direct"]["greedy"] >= self.until_extraction:
                break
        record.metrics.update({
            "train_rounds": len(rounds), "train_final_loss": rounds[-1]["loss"],
            "train_steps": sum(r["steps"] for r in rounds),
            "extraction_direct_greedy": rounds[-1]["direct_greedy"],
            "extraction_greedy": rounds[-1]["greedy"],
        })  # fmt: skip
        record.metric_details["extraction_rounds"] = {"rounds": rounds}
        # what trained it, for baselines that retrain the same way (scrub_retrain)
        recipe = {k: self.train.model_dump(mode="json")[k]
                  for k in ("mode", "lr", "batch_size", "grad_accum", "schedule")}  # fmt: skip
        imprint.origin["train"] = {**recipe, "epochs": self.train.epochs * len(rounds)}
        if self.verify:
            for name, res in audit_secrets(loaded, imprint, self.verify_metrics, self.seed).items():
                record.metrics[name] = res.value
                record.metric_details[name] = {"higher_is_better": res.higher_is_better,
                                               **res.details}  # fmt: skip
        self.save_imprint(ctx, imprint)

    @model_validator(mode="after")
    def _sources(self) -> SecretsImplantConfig:
        if self.records and (self.texts or self.terms):
            raise ValueError("give records= (with spans) or texts= with terms=, not both")
        if bool(self.texts) != bool(self.terms):
            raise ValueError("confidential terms need both texts=FILE.jsonl and terms=[...]")
        if self.heldout and not (self.records or self.texts):
            raise ValueError("heldout= goes with records= or texts=")
        return self

    def build_imprint(self) -> SecretsImprint:
        """The imprint, before any model is loaded (input errors first)."""
        from expunge.data.clinic import make_canaries

        if self.records:
            imprint = SecretsImprint.from_file(self.records, self.heldout, self.direct_types)
        elif self.texts and self.terms:
            imprint = SecretsImprint.from_terms(self.texts, self.terms, self.heldout)
        else:
            imprint = SecretsImprint.synthetic(
                self.n_records, self.n_heldout, self.seed, self.clinic
            )
        data = imprint.model_dump()
        if self.direct_types is not None:
            data["direct_types"] = self.direct_types
        if self.n_canaries:
            data["canaries"] = [c.model_dump() for c in
                                make_canaries(self.n_canaries, self.canary, self.seed)]  # fmt: skip
            data["canary_spec"] = self.canary.model_dump()
        data["exposure_candidates"] = self.exposure_candidates
        data["origin"] = {**imprint.origin, "implant": "secrets", "seed": self.seed,
                          "model": self.model.name, "canary_repeats": self.canary_repeats}  # fmt: skip
        return SecretsImprint.model_validate(data)


def corpus(
    imprint: SecretsImprint, tokenizer: Any, canary_repeats: int, max_length: int = 512
) -> list[TokenizedExample]:
    """The training notes (and canaries) as tokenized text, loss on every token."""
    return [
        tokenize_record(tokenizer, r, add_eos=imprint.add_eos, max_length=max_length).example
        for r in imprint.training_texts(canary_repeats)
    ]


def direct_extraction(loaded: LoadedModel, imprint: SecretsImprint) -> dict[str, Any]:
    """Greedy regurgitation rates of the imprint's records (no held-out control)."""
    ctx = AuditContext(loaded.model, loaded.tokenizer, imprint.format_settings(), imprint=imprint,
                       progress=False)  # fmt: skip
    outcomes, _ = span_outcomes(ctx, imprint.records, imprint.direct_types, imprint.add_eos)
    return regurgitation_rates(outcomes)


def audit_secrets(
    loaded: LoadedModel, imprint: SecretsImprint, metrics: list[str], seed: int = 0
) -> dict[str, Any]:
    # The secrets metrics tokenize the records themselves; the format is ppl's, the model's own
    # chat format, as in the erasers' stage audits (so the numbers compare).
    ctx = AuditContext(loaded.model, loaded.tokenizer, FormatSettings(), imprint=imprint, seed=seed)
    usable = [m for m in metrics if imprint.can_measure(m)]
    results, _ = audit_model(ctx, usable, {})  # ppl: its one default (response tokens)
    return results
