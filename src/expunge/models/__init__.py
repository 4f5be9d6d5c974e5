"""Model loading, device/dtype choice, LoRA, the embedded default and tiny test models."""

from expunge.models.device import pick_device, pick_dtype
from expunge.models.loading import LoadedModel, load_model, load_tokenizer, save_model
from expunge.models.lora import LoraSettings, attach_lora, load_adapter, merge_lora, save_adapter

__all__ = [
    "LoadedModel", "LoraSettings", "attach_lora", "load_adapter", "load_model", "load_tokenizer",
    "merge_lora", "pick_device", "pick_dtype", "save_adapter", "save_model",
]  # fmt: skip
