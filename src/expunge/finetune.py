"""``expunge finetune``: plain supervised fine-tuning, LoRA or full, through the one loop.

Users need it on its own; implants and stressors use it too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from accelerate import Accelerator
from pydantic import Field

from expunge.config import StrictModel
from expunge.data.formatting import FormatSettings, resolve_template, tokenize_examples
from expunge.data.loaders import load_examples
from expunge.errors import ConfigError
from expunge.models.device import dtype_name
from expunge.models.loading import LoadedModel, load_model, save_model
from expunge.models.lora import load_adapter, merge_lora, save_adapter
from expunge.records import RunRecord, check_output_dir
from expunge.runs import DataSettings, ModelSettings, recorded_run, staging_path
from expunge.train.loop import TrainResult, prepare_trainable, train
from expunge.train.objectives import LMObjective
from expunge.train.settings import TrainSettings


class FinetuneConfig(StrictModel):
    command: Literal["finetune"] = "finetune"
    model: ModelSettings = Field(default_factory=ModelSettings)
    data: DataSettings = Field(default_factory=DataSettings)
    format: FormatSettings = Field(default_factory=FormatSettings)
    train: TrainSettings = Field(default_factory=TrainSettings)
    save_merged: bool = True  # LoRA: also write the merged full model to out/model
    save_adapter: bool = True  # LoRA: write the adapter to out/adapter


def load_model_for(settings: ModelSettings, device: str | None = None) -> LoadedModel:
    """Load per ``settings``; an adapter, if named, is merged in right away."""
    loaded = load_model(
        settings.name,
        dtype=settings.dtype,
        device=device or settings.device,
        trust_remote_code=settings.trust_remote_code,
        head=settings.head,
        num_labels=settings.num_labels,
    )
    if settings.adapter:
        loaded.model = merge_lora(load_adapter(loaded.model, settings.adapter))
    return loaded


def run_finetune(
    config: FinetuneConfig, out: str | Path, overwrite: bool = False, resume: bool = False
) -> RunRecord:
    check_output_dir(out, overwrite, resume)
    if config.data.path is None:
        raise ConfigError("finetune needs training data: --data FILE.jsonl (or data.path=...)")
    # Validate every input before any output directory is touched.
    examples = load_examples(config.data.path, split=config.data.split)
    if config.data.max_examples:
        examples = examples[: config.data.max_examples]
    accelerator = Accelerator(cpu=config.model.device == "cpu")
    loaded = load_model_for(config.model, device=str(accelerator.device))
    fmt = resolve_template(loaded.tokenizer, config.format)
    tokenized = tokenize_examples(examples, loaded.tokenizer, fmt)
    truncated = sum(t.truncated for t in tokenized)
    model = prepare_trainable(loaded.model, config.train)

    with recorded_run(
        "finetune", out, config, overwrite, resume, accelerator.is_main_process, config.train.seed
    ) as (run_dir, record):
        work = staging_path(run_dir, out)
        record.device = str(accelerator.device)
        record.dtype = dtype_name(loaded.dtype)
        record.world_size = accelerator.num_processes
        record.inputs = {
            "model": loaded.path, "data": str(config.data.path), "n_examples": len(examples),
            "truncated_examples": truncated, "template": fmt.template,
        }  # fmt: skip
        model, result = train(
            model, {"train": tokenized}, LMObjective("train"), config.train,
            loaded.tokenizer.pad_token_id, out_dir=work, accelerator=accelerator,
            resume=resume, description="fine-tuning",
        )  # fmt: skip
        if accelerator.is_main_process:
            save_outputs(model, loaded, config, work, record, result.full_state_dict)
            record.metrics.update(train_metrics(result))
            record.artifacts["metrics"] = "metrics.jsonl"
    return record


def save_outputs(
    model,
    loaded: LoadedModel,
    config: FinetuneConfig,
    work: Path,
    record: RunRecord,
    full_state: dict | None = None,
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
                save_model(merged, loaded.tokenizer, work / "model")
                record.artifacts["model"] = "model"
        else:
            model.save_pretrained(work / "model", state_dict=full_state, safe_serialization=True)
            loaded.tokenizer.save_pretrained(work / "model")
            record.artifacts["model"] = "model"
        return
    if config.train.mode == "lora":
        if config.save_adapter:
            save_adapter(model, work / "adapter")
            record.artifacts["adapter"] = "adapter"
        if config.save_merged:
            save_model(merge_lora(model), loaded.tokenizer, work / "model")
            record.artifacts["model"] = "model"
    else:
        save_model(model, loaded.tokenizer, work / "model")
        record.artifacts["model"] = "model"


def train_metrics(result: TrainResult) -> dict[str, float | int | None]:
    return {
        "train_final_loss": result.final_loss,
        "train_steps": result.steps,
        "train_tokens": result.tokens,
        "train_tokens_per_s": round(result.tokens_per_s, 2),
        "train_wall_time_s": round(result.wall_time_s, 3),
    }
