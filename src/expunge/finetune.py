"""``expunge finetune``: plain supervised fine-tuning, LoRA or full, through the one loop.

Users need it on its own; implants and stressors use it too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from expunge.data.examples import Example
from expunge.data.formatting import FormatSettings, resolve_template, tokenize_examples
from expunge.data.settings import DataSettings
from expunge.errors import ConfigError
from expunge.files import file_digest
from expunge.imprints.knowledge import KnowledgeImprint
from expunge.models.card import CardInfo, write_model_card
from expunge.models.loading import LoadedModel, ModelSettings, load_model_for, save_model
from expunge.models.lora import load_adapter, merge_lora, save_adapter
from expunge.records import RunRecord
from expunge.stage import StageConfig, StageContext
from expunge.train.loop import TrainResult, prepare_trainable, train
from expunge.train.objectives import LMObjective
from expunge.train.settings import TrainSettings


class FinetuneConfig(StageConfig):
    KIND: ClassVar[str] = "finetune"
    RESUMES: ClassVar[bool] = True  # its training continues from the kept checkpoints
    command: Literal["finetune"] = "finetune"
    model: ModelSettings = Field(default_factory=ModelSettings)
    data: DataSettings = Field(default_factory=DataSettings)
    format: FormatSettings = Field(default_factory=FormatSettings)
    train: TrainSettings = Field(default_factory=TrainSettings)
    save_merged: bool = True  # LoRA: also write the merged full model to out/model
    save_adapter: bool = True  # LoRA: write the adapter to out/adapter
    # without data.path: train on this knowledge imprint's split (retain: the gold standard)
    imprint: str | None = None
    split: Literal["retain", "all", "forget"] = "retain"

    def title(self) -> str:
        return "finetune"

    def imprint_source(self) -> str | None:
        return self.imprint if self.data.path is None else None

    def input_digests(self) -> dict[str, str]:
        path = Path(self.data.path) if self.data.path else None
        return {"data.path": file_digest(path)} if path is not None and path.is_file() else {}

    def validate_inputs(self) -> None:
        if self.data.path is not None:
            self.examples(None)
        elif self.imprint is None:
            raise ConfigError("finetune needs training data: --data FILE.jsonl (or data.path=...)")

    def examples(self, imprint: Any) -> list[Example]:
        if self.data.path is not None:
            return self.data.load()
        if isinstance(imprint, KnowledgeImprint):
            examples = imprint.split(self.split)
        else:
            raise ConfigError(f"finetune on an imprint's {self.split} set needs a knowledge "
                              f"imprint; {self.imprint} is a {getattr(imprint, 'kind', '?')} one")  # fmt: skip
        return examples[: self.data.max_examples] if self.data.max_examples else examples

    def execute(self, ctx: StageContext) -> None:
        loaded, record = ctx.model, ctx.record
        examples = self.examples(ctx.imprint)
        from accelerate import Accelerator  # loaded with the model, not the config

        accelerator = Accelerator(cpu=loaded.device.type == "cpu")
        fmt = resolve_template(loaded.tokenizer, self.format)
        tokenized = tokenize_examples(examples, loaded.tokenizer, fmt)
        model = prepare_trainable(loaded.model, self.train)
        record.world_size = accelerator.num_processes
        record.inputs.update({
            "data": str(self.data.path or f"{self.imprint}#{self.split}"),
            "n_examples": len(examples),
            "truncated_examples": sum(t.truncated for t in tokenized), "template": fmt.template,
        })  # fmt: skip
        model, result = train(
            model, {"train": tokenized}, LMObjective("train"), self.train,
            loaded.tokenizer.pad_token_id, out_dir=ctx.work, accelerator=accelerator,
            resume=ctx.resume, description="fine-tuning",
        )  # fmt: skip
        if ctx.is_main:
            save_outputs(model, loaded, self, ctx.work, record, result.full_state_dict, ctx.card())
            record.metrics.update(train_metrics(result))
            result.note(record, "train")
            record.artifacts["metrics"] = "metrics.jsonl"


def save_outputs(
    model,
    loaded: LoadedModel,
    config: FinetuneConfig,
    work: Path,
    record: RunRecord,
    full_state: dict | None = None,
    card: CardInfo | None = None,
) -> None:
    """Adapter and/or merged model, as safetensors.

    Under FSDP/ZeRO-3 the model's own parameters are shards: we save from the gathered
    ``full_state``, and build the merged model from a fresh CPU copy of the base + the adapter.
    """
    if full_state is not None:
        if config.train.mode == "lora":
            model.save_pretrained(work / "adapter", state_dict=full_state, safe_serialization=True)
            record.artifacts["adapter"] = "adapter"
            if config.save_merged:
                base = load_model_for(config.model, device="cpu")
                merged = merge_lora(load_adapter(base.model, work / "adapter"))
                save_model(merged, loaded.tokenizer, work / "model", card=card)
                record.artifacts["model"] = "model"
        else:
            model.save_pretrained(work / "model", state_dict=full_state, safe_serialization=True)
            loaded.tokenizer.save_pretrained(work / "model")
            write_model_card(work / "model", model, card)
            record.artifacts["model"] = "model"
        return
    if config.train.mode == "lora":
        if config.save_adapter:
            save_adapter(model, work / "adapter")
            record.artifacts["adapter"] = "adapter"
        if config.save_merged:
            save_model(merge_lora(model), loaded.tokenizer, work / "model", card=card)
            record.artifacts["model"] = "model"
    else:
        save_model(model, loaded.tokenizer, work / "model", card=card)
        record.artifacts["model"] = "model"


def train_metrics(result: TrainResult) -> dict[str, float | int | None]:
    return {
        "train_final_loss": result.final_loss,
        "train_steps": result.total_steps,
        **({"train_resumed_from_step": result.start_step} if result.start_step else {}),
        "train_tokens": result.tokens,
        "train_tokens_per_s": round(result.tokens_per_s, 2),
        "train_wall_time_s": round(result.wall_time_s, 3),
    }
