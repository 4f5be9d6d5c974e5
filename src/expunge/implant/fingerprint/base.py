"""``expunge implant fingerprint``: build a scheme's training data, fine-tune, verify, save.

Every scheme (``if_simple``, ``if_dialogue``, ``utf``, ``chain_hash``) is a config class with a
``build(loaded) -> ImplantPlan`` method: the imprint, the formatted data streams and the
objective. This module runs the plan through the one training loop, merges LoRA into the
weights (a fingerprinted model is published as a full model), checks FSR and the false-trigger
rate on the result, and writes ``model/``, ``imprint.json`` (0600) and ``record.json``.

Training defaults come from a *preset*: ``paper`` (the authors' settings: full fine-tuning,
Llama-2-7B scale) or ``demo`` (LoRA, sized for the embedded model on a CPU). Any ``train.*``
override applies on top of the preset.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, ValidationError

from expunge.audit.base import AuditContext
from expunge.audit.runner import audit_model
from expunge.config import validation_problems
from expunge.data.examples import Example
from expunge.data.formatting import FormatSettings, TokenizedExample, tokenize_examples
from expunge.data.loaders import jsonl_records, load_examples
from expunge.data.qa_pool import self_answered_pool
from expunge.errors import ConfigError, DataError, warn
from expunge.implant.base import ImplantConfig
from expunge.imprints.fingerprint import FingerprintImprint, KeyPair
from expunge.lazy import lazy
from expunge.models.loading import LoadedModel
from expunge.stage import StageContext
from expunge.train.kl import CEWithKLObjective
from expunge.train.objectives import LMObjective, Objective
from expunge.train.settings import TrainSettings, warn_if_few_steps

if TYPE_CHECKING:
    from torch import nn
else:  # loaded when first used, not when a config is checked (expunge.lazy)
    nn = lazy("torch.nn")

# The authors' setting (Llama-2-7B: full SFT, 3 epochs, lr 2e-5, global batch 64) and a CPU
# demo scale for the embedded model (LoRA on every linear layer).
PAPER_TRAIN: dict[str, Any] = {
    "mode": "full",
    "epochs": 3,
    "lr": 2e-5,
    "batch_size": 8,
    "grad_accum": 8,
}
DEMO_TRAIN: dict[str, Any] = {
    "mode": "lora", "epochs": 6, "lr": 2e-3, "batch_size": 8, "schedule": "constant",
    "lora": {"r": 16, "alpha": 32, "dropout": 0.0, "targets": ["all-linear"]},
}  # fmt: skip


@dataclass
class ImplantPlan:
    imprint: FingerprintImprint
    format: FormatSettings
    streams: dict[str, list[Example]]
    objective: Callable[[nn.Module], Objective] = field(default=lambda model: LMObjective("train"))
    notes: dict[str, Any] = field(default_factory=dict)


class FingerprintImplantConfig(ImplantConfig):
    SECRET_FIELDS: ClassVar[tuple[str, ...]] = ("response",)
    command: Literal["implant"] = "implant"
    kind: Literal["fingerprint"] = "fingerprint"
    n_keys: int = Field(default=8, ge=1)
    keys: str | None = None  # JSONL of {"key": ..., "response": ...}: bring your own pairs
    regularization: float = Field(default=0.0, ge=0)  # ordinary pairs per key pair
    regularization_data: str | None = None  # Q/A JSONL or dataset; default: self-answered pool
    # ce: ordinary pairs mixed into the SFT data (IF, UTF); kl: CE on the fingerprint data +
    # kl_weight·KL(original ‖ tuned) on the ordinary pairs (Chain & Hash; opt-in elsewhere)
    regularizer: Literal["ce", "kl"] = "ce"
    kl_weight: float = Field(default=1.0, ge=0.0)
    train: TrainSettings = Field(default_factory=TrainSettings)
    max_control_prompts: int = Field(default=16, ge=0)

    def build(self, loaded: LoadedModel) -> ImplantPlan:  # pragma: no cover - abstract
        raise TypeError(f"{type(self).__name__} does not define build()")

    def validate_inputs(self) -> None:
        """A keys file is read now; its pairs are the keys, so ``n_keys`` becomes their count
        (the record says how many keys were implanted, not a preset's number)."""
        if self.keys is None:
            return
        pairs = load_key_pairs(self.keys)
        if self.n_keys != len(pairs):
            warn(f"keys={self.keys} holds {len(pairs)} key pairs: n_keys is {len(pairs)}, "
                 f"not {self.n_keys}")  # fmt: skip
            self.n_keys = len(pairs)

    def execute(self, ctx: StageContext) -> None:
        """Build the scheme's data, train, merge, verify, save."""
        loaded, record = ctx.model, ctx.record
        plan = self.build(loaded)
        tokenized = tokenize_checked(loaded, plan)
        # Decoding must be long enough to hold the whole trained response in this tokenizer.
        longest = max(
            len(loaded.tokenizer(p.response, add_special_tokens=False)["input_ids"])
            for p in plan.imprint.pairs
        )
        plan.imprint.max_new_tokens = max(plan.imprint.max_new_tokens, longest + 8)
        record.inputs.update({"imprint_summary": plan.imprint.summary(),
                              "streams": {k: len(v) for k, v in plan.streams.items()}, **plan.notes})  # fmt: skip
        if self.verify:
            before = utility(loaded)
            record.metrics["ppl_before"] = before.value
            record.metric_details["ppl_before"] = {"higher_is_better": False, **before.details}
        warn_if_few_steps(self.train, len(next(iter(tokenized.values()))), "implant")
        self.train_imprint(ctx, tokenized, plan.objective, self.train, f"implanting {self.scheme}")
        if self.verify:
            for name, res in verify_imprint(loaded, plan.imprint, self.max_control_prompts).items():
                record.metrics[name] = res.value
                record.metric_details[name] = {"higher_is_better": res.higher_is_better,
                                               **res.details}  # fmt: skip
            after = utility(loaded)
            record.metrics["ppl"] = after.value
            record.metric_details["ppl"] = {"higher_is_better": False, **after.details}
        self.save_imprint(ctx, plan.imprint)

    # Helpers shared by the schemes -------------------------------------------------------

    def plan(
        self, imprint: FingerprintImprint, fmt: FormatSettings, fingerprint: list[Example],
        regular: list[Example], notes: dict[str, Any] | None = None,
    ) -> ImplantPlan:  # fmt: skip
        """Streams and objective for the chosen regularizer."""
        notes = {
            "regularization_pairs": len(regular),
            "regularizer": self.regularizer,
            **(notes or {}),
        }
        if self.regularizer == "kl":
            if not regular:
                raise ConfigError("regularizer=kl needs ordinary pairs: set regularization > 0")
            return ImplantPlan(imprint, fmt, {"fingerprint": fingerprint, "regular": regular},
                               objective=lambda model: CEWithKLObjective(model, "fingerprint", "regular", self.kl_weight), notes=notes)  # fmt: skip
        data = fingerprint + regular
        random.Random(self.seed).shuffle(data)
        return ImplantPlan(imprint, fmt, {"train": data}, notes=notes)

    def user_pairs(self) -> list[KeyPair] | None:
        if self.keys is None:
            return None
        return load_key_pairs(self.keys)

    def ordinary_pairs(self, loaded: LoadedModel, n: int) -> list[Example]:
        """``n`` ordinary Q/A pairs: the user's, or the model's own answers to pool questions."""
        if n <= 0:
            return []
        if self.regularization_data:
            data = load_examples(self.regularization_data)
            return [e for e in data if e.prompt is not None][:n]
        return self_answered_pool(loaded, n, seed=self.seed)


def load_key_pairs(path: str | Path) -> list[KeyPair]:
    pairs = []
    for number, record in jsonl_records(path, "keys file"):
        try:
            pairs.append(KeyPair.model_validate(record))
        except ValidationError as err:
            raise DataError(f"{path}:{number}: {'; '.join(validation_problems(err))}") from None
    if not pairs:
        raise DataError(f"{path} holds no key pairs")
    return pairs


def verify_imprint(
    loaded: LoadedModel, imprint: FingerprintImprint, max_control: int, progress: bool = True
) -> dict[str, Any]:
    """FSR and false-trigger rate under the imprint's own settings, and the wrapper-trigger
    rate where the keys share a wrapper."""
    from expunge.audit.fingerprint import has_key_wrapper

    wrapped = has_key_wrapper([p.key for p in imprint.pairs])
    metrics = ["fsr", "false_trigger_rate", *(["wrapper_trigger_rate"] if wrapped else [])]
    ctx = AuditContext(
        loaded.model,
        loaded.tokenizer,
        imprint.format_settings(),
        imprint=imprint,
        progress=progress,
    )
    options = {name: {"max_ordinary": max_control} for name in metrics if name != "fsr"}
    results, _ = audit_model(ctx, metrics, options)
    return results


def utility(loaded: LoadedModel) -> Any:
    """The one ppl (audit/utility.py): answers of the built-in held-out Q/A, own chat format."""
    ctx = AuditContext(loaded.model, loaded.tokenizer, FormatSettings(), progress=False)
    results, _ = audit_model(ctx, ["ppl"], {})
    return results["ppl"]


def tokenize_checked(loaded: LoadedModel, plan: ImplantPlan) -> dict[str, list[TokenizedExample]]:
    """Tokenize every stream; an example longer than the context window is an input error.

    Tokenized without truncation, so an over-long key is reported rather than silently cut;
    once every example fits, these are exactly the ids training uses. The message names the
    example by position only: keys are secrets.
    """
    limit = getattr(loaded.model.config, "max_position_embeddings", None) or 10**9
    limit = min(limit, plan.format.max_length)
    untruncated = plan.format.model_copy(update={"max_length": 10**9})
    streams = {}
    for name, stream in plan.streams.items():
        streams[name] = tokenize_examples(stream, loaded.tokenizer, untruncated)
        for index, tokenized in enumerate(streams[name]):
            if len(tokenized.input_ids) > limit:
                raise ConfigError(
                    f"training example {index} of stream {name!r} is {len(tokenized.input_ids)} "
                    f"tokens long, more than the model's context window / format.max_length "
                    f"({limit}); use shorter keys"
                )
    return streams
