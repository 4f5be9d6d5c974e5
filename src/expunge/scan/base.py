"""``expunge scan``: how likely is each row of a training set to be poisoned? No clean data given.

    expunge scan --model runs/bd --data runs/bd/train.jsonl --imprint runs/bd --out runs/scan

The model is the one trained on the data (``--model``); ``reference`` is the model before that
training (the ``loss_early`` scorer fine-tunes it). Every registered scorer (``expunge ls
scorers``; one file each in ``expunge/scan/``) gives every row a score, higher meaning more
likely poisoned, and flags rows by its own natural rule. With an imprint that holds the
per-row poison labels of this very file (``generative_backdoor`` implants write both; its
``train_sha256`` is checked), the record holds each scorer's AUROC and TPR at 5% FPR
(``SCORER/auroc``, ``SCORER/tpr_at_5fpr``) and the precision and recall of its flags.

Written: ``flagged.jsonl`` (the rows ``flag_with`` flags) and ``retain.jsonl`` (the others),
both 0600 since poisoned rows carry the trigger, so a pipeline can unlearn the flagged rows
(``erase unlearn forget=${scan}/flagged.jsonl retain=${scan}/retain.jsonl``) or retrain
without them; ``scores.json`` (per row and scorer; no text). Rows are ``{"prompt",
"response"}`` (or ``messages``); a file without them is an error naming the line.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from expunge.config import build_config
from expunge.data.examples import Example
from expunge.data.formatting import FormatSettings, TokenizedExample, tokenize_examples
from expunge.data.loaders import jsonl_records
from expunge.errors import ConfigError, DataError
from expunge.files import atomic_write_json, atomic_write_text
from expunge.imprints.base import Imprint, load_imprint
from expunge.models.loading import LoadedModel, ModelSettings
from expunge.registry import SCORERS
from expunge.scan.metrics import auroc, flag_quality, tpr_at_fpr
from expunge.stage import StageConfig, StageContext


@dataclass
class ScorerResult:
    scores: np.ndarray  # (n_rows,), higher = more likely poisoned
    flagged: np.ndarray  # (n_rows,) bool: the scorer's own decision
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class ScanContext:
    """What a scorer sees: the model trained on the rows, the rows, and where to write."""

    loaded: LoadedModel
    examples: list[Example]
    tokenized: list[TokenizedExample]  # in ``fmt``, loss on the response
    fmt: FormatSettings
    reference: str | None
    work: Path
    seed: int = 0
    batch_size: int = 8
    progress: bool = True
    cache: dict[Any, Any] = field(default_factory=dict)  # features scorers share

    def states(self, layer: int, position: Literal["prompt_end", "response_mean"]) -> np.ndarray:
        """``hidden_states`` of the trained model, computed once per (layer, position)."""
        key = ("states", layer, position)
        if key not in self.cache:
            self.cache[key] = hidden_states(self.loaded.model, self.tokenized,
                                            self.loaded.tokenizer.pad_token_id, layer, position,
                                            self.batch_size)  # fmt: skip
        return self.cache[key]


def load_rows(path: str) -> list[Example]:
    """Instruction → response rows of a JSONL; anything else is an error naming its line."""
    rows = []
    for number, record in jsonl_records(path, "scan data"):
        if not ({"prompt", "response"} <= set(record) or "messages" in record):
            raise DataError(f"{path}:{number}: a scan needs instruction → response rows "
                            f"({{\"prompt\", \"response\"}} or {{\"messages\"}}); this row has "
                            f"{sorted(record) or 'no fields'}")  # fmt: skip
        try:
            example = Example.from_record(record)
        except ValueError as err:
            problem = str(err).splitlines()[-1] if str(err) else "invalid row"
            raise DataError(f"{path}:{number}: {problem}") from None
        if example.prompt is not None and not (example.prompt.strip()
                                               and str(example.response).strip()):  # fmt: skip
            raise DataError(f"{path}:{number}: empty prompt or response")
        rows.append(example)
    if not rows:
        raise DataError(f"{path} holds no rows")
    return rows


@torch.no_grad()
def hidden_states(
    model: Any, tokenized: list[TokenizedExample], pad_token_id: int, layer: int,
    position: Literal["prompt_end", "response_mean"], batch_size: int = 8,
) -> np.ndarray:  # fmt: skip
    """(n_rows, hidden) states of ``layer`` (an index into ``hidden_states``): at the last
    prompt token, or averaged over the response tokens."""
    from expunge.data.collator import collate

    device = next(model.parameters()).device
    out = []
    for start in range(0, len(tokenized), batch_size):
        chunk = tokenized[start : start + batch_size]
        batch = collate(chunk, pad_token_id)
        result = model(input_ids=batch["input_ids"].to(device),
                       attention_mask=batch["attention_mask"].to(device),
                       output_hidden_states=True)  # fmt: skip
        states = result.hidden_states[layer].float().cpu()
        for row, example in enumerate(chunk):
            if position == "prompt_end":
                out.append(states[row, max(example.prompt_length - 1, 0)])
            else:
                stop = len(example.input_ids)
                out.append(states[row, example.prompt_length : stop].mean(0))
    return torch.stack(out).numpy()


class ScanConfig(StageConfig):
    KIND: ClassVar[str] = "scan"
    command: Literal["scan"] = "scan"
    model: ModelSettings = Field(default_factory=ModelSettings)  # trained on the data
    reference: str | None = None  # the model before training on the data (loss_early)
    data: str | None = None  # training JSONL; default: the imprint's train_file
    imprint: str | None = None  # poison labels of the data, for AUROC (optional)
    scorers: list[str] = Field(default_factory=lambda: ["mspc", "loss_early", "spectral",
                                                        "clustering"])  # fmt: skip
    options: dict[str, dict[str, Any]] = Field(default_factory=dict)  # per scorer
    flag_with: str = "mspc"  # whose flags become flagged.jsonl
    format: FormatSettings | None = None  # default: the imprint's format, else chat
    max_rows: int | None = Field(default=None, ge=2)
    batch_size: int = Field(default=8, ge=1)
    seed: int = 0
    progress: bool = True

    @model_validator(mode="after")
    def _check(self) -> ScanConfig:
        if not self.scorers:
            raise ValueError("no scorers requested")
        for name in self.scorers:
            SCORERS.get(name)
        unknown = set(self.options) - set(self.scorers)
        if unknown:
            raise ValueError(f"options given for scorers not requested: {sorted(unknown)}")
        if self.flag_with not in self.scorers:
            raise ValueError(f"flag_with={self.flag_with!r} is not one of scorers {self.scorers}")
        return self

    def title(self) -> str:
        return "scan"

    def scorer(self, name: str) -> Any:
        return build_config(SCORERS.get(name), self.options.get(name, {}),
                            source=f"options.{name}")  # fmt: skip

    def data_path(self) -> str:
        if self.data is not None:
            return self.data
        imprint = self.labels_imprint()
        if imprint is None or not getattr(imprint, "train_file", None):
            raise ConfigError("scan needs the training data: --data FILE.jsonl (or an imprint "
                              "whose implant wrote its train.jsonl)")  # fmt: skip
        return str(self.imprint_dir() / imprint.train_file)

    def imprint_dir(self) -> Path:
        path = Path(str(self.imprint))
        return path if path.is_dir() else path.parent

    def labels_imprint(self) -> Imprint | None:
        return load_imprint(self.imprint) if self.imprint is not None else None

    def rows(self) -> list[Example]:
        rows = load_rows(self.data_path())
        return rows[: self.max_rows] if self.max_rows else rows

    def labels(self, rows: list[Example]) -> list[int] | None:
        """The poison labels of these rows (checked against the file's hash), or None."""
        imprint = self.labels_imprint()
        if imprint is None:
            return None
        labels = getattr(imprint, "poison_labels", None)
        if not labels:
            raise ConfigError(f"{self.imprint} holds no per-row poison labels; scan without "
                              "--imprint to score only")  # fmt: skip
        digest = hashlib.sha256(Path(self.data_path()).read_bytes()).hexdigest()
        expected = getattr(imprint, "train_sha256", None)
        if expected is not None and digest != expected:
            raise ConfigError(f"{self.data_path()} is not the training file whose labels "
                              f"{self.imprint} holds (content differs); scan without --imprint "
                              "to score only")  # fmt: skip
        total = len(load_rows(self.data_path()))
        if len(labels) != total:
            raise ConfigError(f"{self.imprint} labels {len(labels)} rows, {self.data_path()} "
                              f"has {total}")  # fmt: skip
        return labels[: len(rows)]

    def validate_inputs(self) -> None:
        for name in self.scorers:
            self.scorer(name)
        rows = self.rows()
        self.labels(rows)
        if len(rows) < 4:
            raise DataError(f"scan needs at least 4 rows, {self.data_path()} has {len(rows)}")
        if "loss_early" in self.scorers and self.reference is None:
            raise ConfigError("the loss_early scorer fine-tunes the model from before the data: "
                              "reference=MODEL (or leave loss_early out of scorers)")  # fmt: skip

    def imprint_source(self) -> str | None:
        return None  # read here for labels only, not as the stage's imprint

    def execute(self, ctx: StageContext) -> None:
        loaded, record = ctx.model, ctx.record
        rows = self.rows()
        labels = self.labels(rows)
        imprint = self.labels_imprint()
        fmt = self.format or (imprint.format_settings() if hasattr(imprint, "format_settings")
                              else FormatSettings())  # fmt: skip
        fmt = fmt.model_copy(update={"loss_on": "response"})
        tokenized = tokenize_examples(rows, loaded.tokenizer, fmt)
        record.inputs.update({
            "data": self.data_path(), "n_rows": len(rows), "labels": labels is not None,
            "template": fmt.template, "imprint": self.imprint,
        })  # fmt: skip
        if labels is not None:
            record.metrics["n_poisoned"] = int(sum(labels))
        record.metrics["n_rows"] = len(rows)
        scan = ScanContext(loaded, rows, tokenized, fmt, self.reference, ctx.work, self.seed,
                           self.batch_size, self.progress)  # fmt: skip
        scores: dict[str, list[float]] = {}
        flags: dict[str, np.ndarray] = {}
        notes: list[str] = []
        for name in self.scorers:
            torch.manual_seed(self.seed)
            result = self.scorer(name).score(scan)
            scores[name] = [float(s) for s in result.scores]
            flags[name] = np.asarray(result.flagged, dtype=bool)
            record.metrics[f"{name}/n_flagged"] = int(flags[name].sum())
            details: dict[str, Any] = {**result.details}
            warm = details.pop("warm_start_scores", None)  # MSPC's unmasked SPC, for comparison
            if labels is not None and warm is not None:
                record.metrics[f"{name}/warm_start_auroc"] = auroc(labels, warm)
            if labels is not None:
                record.metrics[f"{name}/auroc"] = auroc(labels, result.scores)
                record.metrics[f"{name}/tpr_at_5fpr"] = tpr_at_fpr(labels, result.scores, 0.05)
                quality = flag_quality(labels, flags[name])
                record.metrics[f"{name}/flag_precision"] = quality["precision"]
                record.metrics[f"{name}/flag_recall"] = quality["recall"]
                if len(set(labels)) < 2:
                    details["note"] = "one class only (no poisoned or no clean row): no ROC"
            record.metric_details[f"{name}/auroc"] = {"higher_is_better": True, **details}
        chosen = flags[self.flag_with]
        if not chosen.any():
            notes.append(f"{self.flag_with} flagged no row: flagged.jsonl is empty")
            warnings.warn(notes[-1], UserWarning, stacklevel=2)
        for name, subset in (("flagged", chosen), ("retain", ~chosen)):
            text = "".join(json.dumps(e.to_record(), ensure_ascii=False) + "\n"
                           for e, keep in zip(rows, subset, strict=True) if keep)  # fmt: skip
            atomic_write_text(ctx.work / f"{name}.jsonl", text, mode=0o600)
            record.artifacts[name] = f"{name}.jsonl"
        atomic_write_json(ctx.work / "scores.json", {"flag_with": self.flag_with,
                                                     "scores": scores,
                                                     "flagged": {k: v.tolist()
                                                                 for k, v in flags.items()}})  # fmt: skip
        record.artifacts["scores"] = "scores.json"
        record.inputs["warnings"] = notes
