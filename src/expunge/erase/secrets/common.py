"""What the secrets erasers share: the imprint's records as the defender's corpus.

Threat model (SANI, Boutet & Magnana 2025): the defender holds the fine-tuning corpus and knows
where its sensitive spans are (an annotator or a PII detector marked them), so these erasers
*read the imprint's records* — unlike MEraser or the backdoor erasers, which never see the
secret. ``--imprint`` is therefore required. The canaries are the auditor's probes, not part of
the defender's corpus: no eraser here trains on them (exposure then measures what the erasers do
to secrets they were never shown).

Repair = the one loop on the records with the span tokens' labels set to ignore
(``expunge.data.spans.span_labels_excluded``): every other token is trained on as in the
fine-tune, the identifiers never are.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field, PrivateAttr

from expunge.audit.defaults import DEFAULT_AUDITS
from expunge.data.formatting import TokenizedExample
from expunge.data.spans import SpanTokens, span_labels_excluded, tokenize_record
from expunge.erase.base import EraserConfig
from expunge.erase.secrets.repair import GeneralSet, StopRule, utility_objective
from expunge.errors import ConfigError
from expunge.imprints.base import load_imprint
from expunge.imprints.secrets import SecretsImprint
from expunge.models.loading import LoadedModel
from expunge.models.lora import merge_lora
from expunge.records import RunRecord
from expunge.train.loop import prepare_trainable, train
from expunge.train.objectives import LMObjective, SumObjective
from expunge.train.settings import TrainSettings

# SANI repairs for 1–2 epochs [paper]; the optimizer settings are the fine-tune's [unverified].
REPAIR_PAPER: dict[str, Any] = {"mode": "full", "epochs": 2, "lr": 5e-5, "batch_size": 8}
REPAIR_DEMO: dict[str, Any] = {"mode": "full", "epochs": 2, "lr": 1e-4, "batch_size": 8}


class SecretsEraser(EraserConfig):
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "paper": {"train": REPAIR_PAPER},
        "demo": {"train": REPAIR_DEMO},
    }
    train: TrainSettings = Field(default_factory=lambda: TrainSettings(**REPAIR_PAPER))
    # the repair's stop rule (erase/secrets/repair.py): evaluate held-out notes and general
    # answers every eval_every steps; stop after stop_patience evaluations without a gain
    # (None: train.max_steps or train.epochs decide)
    eval_every: int = Field(default=10, ge=1)
    stop_patience: int | None = Field(default=None, ge=1)
    # + weight·KL(input model ‖ θ) on the input model's answers to ordinary questions
    utility_weight: float = Field(default=0.0, ge=0.0)
    utility_pairs: int = Field(default=64, ge=4)  # ordinary questions (a quarter held out)
    _secrets: SecretsImprint | None = PrivateAttr(default=None)

    def secrets(self) -> SecretsImprint:
        if self._secrets is None:
            if self.imprint is None:
                raise ConfigError(
                    f"{self.method} reads the records and their sensitive spans: "
                    f"--imprint DIR/imprint.json (a secrets imprint)"
                )
            imprint = load_imprint(self.imprint)
            if not isinstance(imprint, SecretsImprint):
                raise ConfigError(
                    f"{self.method} needs a secrets imprint; {self.imprint} is a {imprint.kind} one"
                )
            self._secrets = imprint
        return self._secrets

    def validate_inputs(self) -> None:
        imprint = self.secrets()
        if not self.audit_metrics:
            self.audit_metrics = [m for m in DEFAULT_AUDITS["secrets"] if imprint.can_measure(m)]

    def span_tokens(self, tokenizer: Any) -> list[SpanTokens]:
        imprint = self.secrets()
        return [tokenize_record(tokenizer, r, add_eos=imprint.add_eos) for r in imprint.records]

    def train_phase(
        self,
        model: Any,
        streams: dict[str, list[Any]],
        make_objective: Callable[[Any], Any],
        pad_token_id: int,
        work: Path,
        stage: str,
        record: RunRecord,
        description: str,
        primary_stream: str | None = None,
        settings: TrainSettings | None = None,
        on_step: Any = None,
    ) -> Any:
        """Prepare, train and merge ``model``; the phase's final loss and steps go into the
        record under ``stage``. The objective is made from the prepared model (a reference
        model under LoRA is the base with the adapter disabled). Every secrets eraser's training
        phase runs through here."""
        settings = settings or self.train
        trainable = prepare_trainable(model, settings)
        objective = make_objective(trainable)
        trained, result = train(
            trainable, {name: streams[name] for name in objective.streams}, objective,
            settings, pad_token_id, out_dir=work / stage, primary_stream=primary_stream,
            description=description,
            on_step=(lambda step, _log: on_step(trainable, step)) if on_step else None,
        )  # fmt: skip
        record.metrics.update(
            {f"{stage}/train_final_loss": result.final_loss, f"{stage}/train_steps": result.steps}
        )
        result.note(record, stage)
        return merge_lora(trained)

    def general_set(self, loaded: LoadedModel) -> GeneralSet | None:
        """The input model's answers to ordinary questions, if the repair or its stop rule
        uses them (taken before anything changes the model)."""
        if self.utility_weight <= 0 and self.stop_patience is None:
            return None
        return GeneralSet.build(loaded, self.utility_pairs, self.seed)

    def repair(
        self, loaded: LoadedModel, work: Path, record: RunRecord, stage: str,
        general: GeneralSet | None = None, teacher: Any = None,
    ) -> None:  # fmt: skip
        """Train on the records with the span tokens excluded from the loss (plus the utility
        term on ``general`` against ``teacher``), until the stop rule or the step budget."""
        pad = loaded.tokenizer.pad_token_id
        streams = {"train": [span_labels_excluded(t) for t in self.span_tokens(loaded.tokenizer)]}
        held: dict[str, list[TokenizedExample]] = {}
        heldout = self.secrets().heldout
        if heldout:
            held["notes"] = [span_labels_excluded(tokenize_record(loaded.tokenizer, r,
                             add_eos=self.secrets().add_eos)) for r in heldout]  # fmt: skip
        if general is not None:
            streams["general"] = general.train
            held["general"] = general.heldout
        use_utility = self.utility_weight > 0 and general is not None and teacher is not None

        def objective(model: Any) -> Any:
            lm = LMObjective("train")
            if not use_utility:
                return lm
            return SumObjective((1.0, lm), utility_objective(model, teacher, self.utility_weight))

        rule = StopRule(held, pad, self.eval_every, self.stop_patience)
        if held and self.stop_patience is not None:
            rule.evaluate(loaded.model, 0)
        loaded.model = self.train_phase(
            loaded.model, streams, objective, pad, work, stage, record,
            description=f"{self.method}: {stage} (span tokens masked)", on_step=rule,
        )  # fmt: skip
        if rule.history:
            record.metric_details[f"{stage}/stop_rule"] = {
                "every": self.eval_every, "patience": self.stop_patience,
                "evaluations": rule.history,
            }  # fmt: skip
