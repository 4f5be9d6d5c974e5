"""Load a model and its tokenizer from a hub id, a local directory or an embedded name.

Causal LMs by default; encoder classifiers (``*ForSequenceClassification``, or a bare BERT-style
encoder to be given a classification head) for the backdoor experiments of Fine-mixing.

Safe by default: safetensors only, ``trust_remote_code`` off unless asked for.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from expunge.config import StrictModel
from expunge.errors import ConfigError, ModelError
from expunge.lazy import lazy
from expunge.models.card import CardInfo, write_model_card
from expunge.models.device import pick_device, pick_dtype
from expunge.models.embedded import EMBEDDED_MODELS, materialize
from expunge.models.lora import load_adapter, merge_lora
from expunge.models.tiny import TINY_MODELS, materialize_tiny

if TYPE_CHECKING:
    import safetensors
    import torch
    import transformers
    from torch import nn
    from transformers import PreTrainedModel, PreTrainedTokenizerBase
else:
    transformers = lazy("transformers")  # loaded with the first model (expunge.lazy)
    safetensors = lazy("safetensors")


class ModelSettings(StrictModel):
    name: str = "smollm2-135m"  # hub id, local directory, run directory or embedded name
    dtype: str = "auto"
    device: str = "auto"
    trust_remote_code: bool = False
    adapter: str | None = None  # a LoRA adapter directory merged into the model after loading
    head: Literal["auto", "causal_lm", "sequence_classification"] = "auto"  # auto: by checkpoint
    num_labels: int | None = Field(default=None, ge=2)  # a new classification head's outputs


@dataclass
class LoadedModel:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    source: str
    path: str
    device: torch.device
    dtype: torch.dtype


def is_builtin_model(name: str | None) -> bool:
    """An embedded or built-in tiny model's name: it loads from expunge's cache, whatever a
    local path of that name holds."""
    return name in EMBEDDED_MODELS or name in TINY_MODELS


def resolve_model_path(spec: str) -> str:
    """An embedded or built-in tiny name becomes its cache directory; a local path must hold
    a model."""
    if spec in EMBEDDED_MODELS:
        return str(materialize(spec))
    if spec in TINY_MODELS:
        return str(materialize_tiny(spec))
    path = Path(spec).expanduser()
    if (path / "model" / "config.json").is_file() and not (path / "config.json").is_file():
        path = path / "model"  # an expunge run directory
    if path.exists():
        if not path.is_dir():
            raise ModelError(f"{spec} is a file, not a model directory (expected config.json)")
        if not (path / "config.json").is_file():
            if (path / "adapter_config.json").is_file():
                raise ModelError(
                    f"{spec} holds a LoRA adapter, not a model; give the base model and the "
                    f"adapter separately"
                )
            raise ModelError(f"{spec} is not a model directory: it has no config.json")
        if not any(path.glob("*.safetensors")):
            if any(path.glob("*.bin")) or any(path.glob("*.pt")):
                raise ModelError(
                    f"{spec} has only pickle weights (*.bin/*.pt); expunge loads safetensors only. "
                    f"Convert them once with a trusted tool, or re-save with save_pretrained."
                )
            raise ModelError(f"{spec} has a config.json but no *.safetensors weights")
        return str(path.resolve())
    near = similar_local_models(path)
    hint = f" (did you mean {' or '.join(near)}?)" if near else ""
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise ModelError(f"model path {spec} does not exist{hint}")
    # Not a local path, so it would be tried as a hub id — slowly, and in vain without a
    # network. A name whose first part is a local folder ("runs/fpp") or close to a local
    # model's folder ("tinyy" beside "tiny") was meant as a path: say so now.
    if "/" in spec and Path(spec.split("/", 1)[0]).expanduser().is_dir():
        raise ModelError(f"model path {spec} does not exist{hint}")
    if near:
        raise ModelError(f"model path {spec} does not exist{hint}; a hub model is named ORG/NAME")
    return spec  # a hub id


def similar_local_models(path: Path) -> list[str]:
    """Model directories beside ``path`` whose names are close to its name."""
    parent = path.parent if str(path.parent) else Path(".")
    try:
        names = [p.name for p in parent.expanduser().iterdir() if _holds_model(p)]
    except OSError:
        return []
    close = difflib.get_close_matches(path.name, names, n=2, cutoff=0.75)
    return [str(parent / name) if str(parent) != "." else name for name in close]


def _holds_model(path: Path) -> bool:
    return (path / "config.json").is_file() or (path / "model" / "config.json").is_file()


def load_tokenizer(spec: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    path = resolve_model_path(spec)
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(
            path, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError) as err:
        raise ModelError(f"cannot load a tokenizer from {spec}: {err}") from None
    return ensure_pad_token(tokenizer)


def ensure_pad_token(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise ModelError("tokenizer has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


ENCODER_TYPES = frozenset({
    "albert", "bert", "camembert", "deberta", "deberta-v2", "distilbert", "electra",
    "modernbert", "mpnet", "roberta", "xlm-roberta",
})  # fmt: skip
HEADS = ("auto", "causal_lm", "sequence_classification")


def resolve_head(config: Any, head: str = "auto") -> str:
    """``auto``: a sequence classifier if the checkpoint is one or is an encoder, else causal LM."""
    if head not in HEADS:
        raise ModelError(f"model head must be one of {HEADS}, got {head!r}")
    if head != "auto":
        return head
    architectures = getattr(config, "architectures", None) or []
    if any(name.endswith("ForSequenceClassification") for name in architectures):
        return "sequence_classification"
    if getattr(config, "model_type", None) in ENCODER_TYPES:
        return "sequence_classification"
    return "causal_lm"


def load_model(
    spec: str,
    dtype: str = "auto",
    device: str = "auto",
    trust_remote_code: bool = False,
    attn_implementation: str = "sdpa",
    head: str = "auto",
    num_labels: int | None = None,
    **kwargs: Any,
) -> LoadedModel:
    """Load ``spec`` (hub id, local directory or embedded name) ready for training or scoring.

    ``num_labels`` sizes a new classification head (an encoder loaded as a classifier).
    """
    path = resolve_model_path(spec)
    target_device = pick_device(device)
    torch_dtype = pick_dtype(dtype, target_device)
    try:
        config = transformers.AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise ModelError(f"{spec} is not a loadable model: {err}") from None
    head = resolve_head(config, head)
    if num_labels is not None and num_labels != getattr(config, "num_labels", None):
        config.num_labels = num_labels
        kwargs.setdefault("ignore_mismatched_sizes", True)  # a new head of the asked size
    auto_class = (
        transformers.AutoModelForSequenceClassification if head == "sequence_classification"
        else transformers.AutoModelForCausalLM
    )  # fmt: skip
    try:
        model = auto_class.from_pretrained(
            path,
            config=config,
            dtype=torch_dtype,
            use_safetensors=True,
            trust_remote_code=trust_remote_code,
            attn_implementation=attn_implementation,
            **kwargs,
        )
    except (OSError, ValueError) as err:
        raise ModelError(f"cannot load {spec} as a {head.replace('_', ' ')} model: {err}") from None
    except safetensors.SafetensorError as err:  # a truncated or corrupt weights file
        raise ModelError(f"{unreadable_weights(path)}: not a readable safetensors file ({err}); "
                         "the copy is incomplete or damaged: copy or save it again") from None  # fmt: skip
    tokenizer = load_tokenizer(spec, trust_remote_code=trust_remote_code)
    model.to(target_device)
    sync_special_tokens(model, tokenizer)
    return LoadedModel(model, tokenizer, spec, path, target_device, torch_dtype)


def unreadable_weights(path: str) -> str:
    """The first ``*.safetensors`` file of the local directory ``path`` that safetensors cannot
    open (the one to name in the error), else ``path`` itself (a hub id, a shard set whose
    headers all read)."""
    directory = Path(path)
    for weights in sorted(directory.glob("*.safetensors")) if directory.is_dir() else []:
        try:
            with safetensors.safe_open(str(weights), framework="pt"):
                pass
        except (safetensors.SafetensorError, OSError):
            return str(weights)
    return path


def sync_special_tokens(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Make generation stop and pad with the tokenizer's tokens, whatever the checkpoint says."""
    if getattr(model, "generation_config", None) is not None:  # encoders have none
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        if model.generation_config.eos_token_id is None:
            model.generation_config.eos_token_id = tokenizer.eos_token_id
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id


def save_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    path: str | Path,
    card: CardInfo | None = None,
) -> None:
    """Save a full model as safetensors with its tokenizer (a plain Hugging Face directory) and
    a model card (``README.md``): base model and lineage always, and what was implanted or
    erased with a redacted record summary when ``card`` says so (``expunge.models.card``)."""
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    write_model_card(path, model, card)


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


def check_compatible(model: nn.Module, reference: nn.Module, name: str) -> None:
    """Same parameter names and shapes, else a clear error naming both shapes."""
    ours = dict(model.named_parameters())
    theirs = dict(reference.named_parameters())
    ours_type = getattr(model.config, "model_type", "?")
    theirs_type = getattr(reference.config, "model_type", "?")
    missing = sorted(set(ours) - set(theirs))
    if missing or set(theirs) - set(ours):
        raise ConfigError(
            f"reference {name} ({theirs_type}, {len(theirs)} tensors) does not have the "
            f"architecture of the model ({ours_type}, {len(ours)} tensors); e.g. "
            f"{(missing or sorted(set(theirs) - set(ours)))[0]!r} is in one only"
        )
    for key, param in ours.items():
        if param.shape != theirs[key].shape:
            raise ConfigError(
                f"reference {name}: {key} has shape {tuple(theirs[key].shape)}, the model's "
                f"has {tuple(param.shape)} (different architecture or vocabulary)"
            )
