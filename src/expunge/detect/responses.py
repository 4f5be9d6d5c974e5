"""Responses of a model to a prompt set, with the hidden states of its first generated tokens.

Each prompt is sampled ``samples`` times (temperature / top-p, seeded). For the activation probe
the generating model is run once more over prompt + response: the states after its final norm
at the last prompt position and at the first ``k`` generated tokens are averaged into one
feature vector per response (the representation the model decodes its first words from).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from expunge.audit.scoring import generate
from expunge.data.collator import collate
from expunge.data.examples import Example
from expunge.data.formatting import FormatSettings, TokenizedExample, tokenize_example
from expunge.errors import ModelError
from expunge.lazy import lazy, no_grad
from expunge.models.loading import ENCODER_TYPES
from expunge.train.progress import track

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn
    from transformers import PreTrainedTokenizerBase
else:  # loaded when first used, not when a config is checked (expunge.lazy)
    nn = lazy("torch.nn")
    np = lazy("numpy")
    torch = lazy("torch")
pytorch_utils = lazy("transformers.pytorch_utils")


@dataclass
class Responses:
    """``n_prompts × samples`` responses; ``groups[i]`` is the prompt index of response ``i``."""

    groups: np.ndarray
    token_ids: list[list[int]]
    texts: list[str]
    features: np.ndarray  # (n, hidden): mean final-norm state over the first generated tokens


@dataclass
class DetectData:
    """A labelled set for the detectors: label 0 = original, 1 = the other model."""

    texts: list[str]
    token_ids: list[list[int]]
    features: np.ndarray
    labels: np.ndarray
    groups: np.ndarray

    def subset(self, index: np.ndarray) -> DetectData:
        return DetectData(
            [self.texts[i] for i in index], [self.token_ids[i] for i in index],
            self.features[index], self.labels[index], self.groups[index],
        )  # fmt: skip


def pair(original: Responses, other: Responses) -> DetectData:
    """Both models' responses to the same prompts as one labelled set, grouped by prompt."""
    if not np.array_equal(original.groups, other.groups):
        raise ValueError("the two response sets are not over the same prompts")
    n = len(original.texts)
    return DetectData(
        original.texts + other.texts, original.token_ids + other.token_ids,
        np.concatenate([original.features, other.features]),
        np.concatenate([np.zeros(n, dtype=np.int64), np.ones(n, dtype=np.int64)]),
        np.concatenate([original.groups, other.groups]),
    )  # fmt: skip


def example_prompt(example: Example) -> str:
    """The query of an example: its prompt, the last user turn, or the first half of a text."""
    if example.prompt is not None:
        return example.prompt
    if example.messages is not None:
        users = [m.content for m in example.messages if m.role == "user"]
        if users:
            return users[-1]
        return example.messages[0].content
    words = (example.text or "").split()
    return " ".join(words[: max(1, len(words) // 2)])


def prompt_ids(
    prompts: Sequence[str], tokenizer: PreTrainedTokenizerBase, fmt: FormatSettings
) -> list[list[int]]:
    """Token ids of each prompt as the model is queried (template, system prompt, generation cue)."""
    ids = []
    for prompt in prompts:
        tokenized = tokenize_example(Example(prompt=prompt, response="-"), tokenizer, fmt)
        ids.append(tokenized.input_ids[: tokenized.prompt_length])
    return ids


def check_same_tokenizer(
    a: PreTrainedTokenizerBase, b: PreTrainedTokenizerBase, name_a: str, name_b: str
) -> None:
    """Two models compared on the same prompts must read them as the same tokens."""
    vocab_a, vocab_b = a.get_vocab(), b.get_vocab()
    if vocab_a != vocab_b:
        only_a = len(set(vocab_a) - set(vocab_b))
        raise ModelError(
            f"{name_a} and {name_b} have different tokenizers: vocabularies of {len(vocab_a)} "
            f"and {len(vocab_b)} tokens ({only_a} tokens of the first are missing from the "
            f"second); trace detection compares a model with its own erased copy"
        )
    for attribute in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if getattr(a, attribute) != getattr(b, attribute):
            raise ModelError(
                f"{name_a} and {name_b} have different tokenizers: {attribute} "
                f"{getattr(a, attribute)} vs {getattr(b, attribute)}"
            )
    if getattr(a, "chat_template", None) != getattr(b, "chat_template", None):
        raise ModelError(f"{name_a} and {name_b} have different chat templates")


def final_norm(model: nn.Module) -> nn.Module:
    """The normalization applied after the last block (Llama/Qwen ``norm``, GPT-2 ``ln_f``)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    owners = [getattr(base, "model", None), getattr(base, "transformer", None)]
    for owner in owners:
        for name in ("norm", "ln_f", "final_layernorm", "final_layer_norm"):
            module = getattr(owner, name, None) if owner is not None else None
            if isinstance(module, nn.Module):
                return module
    raise ModelError(f"cannot find the final norm of {type(base).__name__} for the probe")


@no_grad
def first_token_states(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    pad_token_id: int,
    k: int = 8,
    batch_size: int = 16,
) -> np.ndarray:
    """Mean final-norm state at the last prompt position and the first ``k`` response tokens."""
    captured: list[torch.Tensor] = []
    handle = final_norm(model).register_forward_hook(lambda _m, _i, out: captured.append(out))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    features: list[np.ndarray] = []
    try:
        for start in range(0, len(prompts), batch_size):
            chunk = range(start, min(start + batch_size, len(prompts)))
            items, spans = [], []
            for i in chunk:
                taken = list(responses[i][:k])
                ids = list(prompts[i]) + taken
                items.append(TokenizedExample(ids, ids, len(prompts[i])))
                spans.append((len(prompts[i]) - 1, len(prompts[i]) + len(taken)))
            batch = collate(items, pad_token_id)
            captured.clear()
            model(input_ids=batch["input_ids"].to(device),
                  attention_mask=batch["attention_mask"].to(device))  # fmt: skip
            states = captured[-1]
            states = states[0] if isinstance(states, tuple) else states
            for row, (lo, hi) in enumerate(spans):
                features.append(states[row, lo:hi].float().mean(dim=0).cpu().numpy())
    finally:
        handle.remove()
        model.train(was_training)
    return np.stack(features).astype(np.float32)


def sample_responses(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Sequence[int]],
    samples: int,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    seed: int,
    k: int = 8,
    batch_size: int = 16,
    progress: bool = True,
    description: str = "sampling",
    states: bool = True,
) -> Responses:
    """``samples`` sampled responses per prompt and, with ``states``, their first-token features
    (one more forward pass over each response; without, the features have no columns)."""
    repeated = [list(p) for p in prompts for _ in range(samples)]
    groups = np.repeat(np.arange(len(prompts)), samples)
    outputs = generate(
        model, tokenizer, repeated, max_new_tokens=max_new_tokens, do_sample=True,
        temperature=temperature, top_p=top_p, seed=seed, batch_size=batch_size,
        progress=progress,
    )  # fmt: skip
    texts = [tokenizer.decode(o, skip_special_tokens=True) for o in outputs]
    if not states:
        return Responses(groups, outputs, texts, np.zeros((len(outputs), 0), dtype=np.float32))
    batches = list(range(0, len(repeated), batch_size))
    features = []
    for start in track(batches, f"{description}: states", total=len(batches), enabled=progress):
        stop = start + batch_size
        features.append(first_token_states(
            model, repeated[start:stop], outputs[start:stop], tokenizer.pad_token_id, k, batch_size
        ))  # fmt: skip
    return Responses(groups, outputs, texts, np.concatenate(features))


def classifier_head(model: nn.Module) -> nn.Module:
    """The classification head of a ``*ForSequenceClassification`` model (``classifier`` in
    BERT-style encoders, ``score`` in decoder classifiers)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    for name in ("classifier", "score"):
        module = getattr(base, name, None)
        if isinstance(module, nn.Module):
            return module
    raise ModelError(f"cannot find the classification head of {type(base).__name__}")


@no_grad
def classifier_outputs(
    model: nn.Module, inputs: Sequence[Sequence[int]], pad_token_id: int, batch_size: int = 16
) -> tuple[torch.Tensor, np.ndarray]:
    """(logits, features) per input: the head's logits and the representation the head reads
    (its input: the pooled [CLS] state of an encoder, the last token's state of a decoder)."""
    captured: list[torch.Tensor] = []
    head = classifier_head(model)
    handle = head.register_forward_hook(lambda _m, args, _out: captured.append(args[0]))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    logits, features = [], []
    try:
        for start in range(0, len(inputs), batch_size):
            items = [TokenizedExample(list(i), list(i), len(i)) for i in inputs[start : start + batch_size]]  # fmt: skip
            batch = collate(items, pad_token_id)
            captured.clear()
            out = model(input_ids=batch["input_ids"].to(device),
                        attention_mask=batch["attention_mask"].to(device))  # fmt: skip
            state = captured[-1]
            if state.dim() == 3:  # a head over every position: the position it decides from
                last = batch["attention_mask"].sum(dim=1) - 1  # right-padded
                encoder = getattr(model.config, "model_type", None) in ENCODER_TYPES  # [CLS]
                index = (torch.zeros_like(last) if encoder else last).to(device)
                state = state[torch.arange(state.shape[0], device=device), index]
            logits.append(out.logits.float().cpu())
            features.append(state.float().cpu().numpy())
    finally:
        handle.remove()
        model.train(was_training)
    return torch.cat(logits), np.concatenate(features).astype(np.float32)


def classifier_responses(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    inputs: Sequence[Sequence[int]],
    samples: int,
    temperature: float,
    seed: int,
    batch_size: int = 16,
) -> Responses:
    """An encoder classifier's "responses": ``samples`` labels per input drawn from its
    softmax at ``temperature`` (seeded), the label's name as the text, and the head's input as
    the activation probe's feature. A classifier writes no text; what it says is a label."""
    logits, states = classifier_outputs(model, inputs, tokenizer.pad_token_id, batch_size)
    generator = torch.Generator().manual_seed(seed)
    probs = torch.softmax(logits / temperature, dim=-1)
    drawn = torch.multinomial(probs, samples, replacement=True, generator=generator)
    names = getattr(model.config, "id2label", None) or {}
    token_ids = [[int(label)] for row in drawn for label in row]
    texts = [str(names.get(ids[0], f"label_{ids[0]}")) for ids in token_ids]
    groups = np.repeat(np.arange(len(inputs)), samples)
    return Responses(groups, token_ids, texts, np.repeat(states, samples, axis=0))


def perturbed_copy(model: nn.Module, noise: float, seed: int = 0) -> nn.Module:
    """A clearly altered copy for the positive control: every linear layer but the output head
    gets Gaussian noise of ``noise`` × the layer's own weight standard deviation."""
    altered = copy.deepcopy(model)
    head = altered.get_output_embeddings() if hasattr(altered, "get_output_embeddings") else None
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in altered.modules():
            if isinstance(module, (nn.Linear, pytorch_utils.Conv1D)) and module is not head:
                weight = module.weight
                scale = noise * float(weight.float().std())
                delta = torch.randn(weight.shape, generator=generator) * scale
                weight.add_(delta.to(weight.device, weight.dtype))
    altered.eval()
    return altered
