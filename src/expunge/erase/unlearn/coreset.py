"""Coreset selection of the forget set: unlearn with a small share of it; TF-IDF keywords.

Pal et al., *LLM Unlearning Reveals a Stronger-Than-Expected Coreset Effect in Current
Benchmarks*, 2025: NPO and RMU unlearning with a random 5% of the forget set (WMDP, MUSE)
matches unlearning with all of it — *given the same number of optimizer steps*. So the default
here is to match the step budget: the coreset trains for as many steps as ``train.epochs`` over
the full forget set would take (``match_steps=true``); ``match_steps=false`` trains epochs over
the coreset instead (far fewer steps — the comparison the paper warns against).

Selectors (``coreset.method``), each keeping ``round(ratio·n)`` examples (at least one) in their
original order, scored on the model *before* unlearning:

- ``random``: seeded, uniform without replacement.
- ``grand``: GraNd (Paul et al., *Deep Learning on a Data Diet*, NeurIPS 2021): the largest
  per-example gradient norms ‖∇_θ ℓ(x)‖ of the unlearning loss. ℓ is the summed response NLL of
  the example: at step 0 (π_θ = π_ref) NPO's per-sequence gradient is exactly −∇ log π_θ(x) =
  ∇ NLL_sum(x) (d/dθ of (2/β)·softplus(β·r) is 2σ(0)·∇r = ∇ log π) and GA's is its negative,
  so the norm is the same. The gradient runs over every parameter of the model.
- ``moderate``: Moderate coreset (Xia et al., ICLR 2023): features are the last hidden state
  averaged over the example's tokens; keep the examples whose distance to the features' centre
  is closest to the median distance (neither typical nor outlying).
- ``mink``: Min-K% Prob (Shi et al., ICLR 2024) from ``expunge.audit.mia``: the examples the
  model has memorized most (highest mean of their lowest-k% token log-probs, ``mink_k``).

Keywords (``coreset.keywords=N``): every selected forget example is replaced by a text example
of its N highest-TF-IDF words (scikit-learn; English stop words removed; the IDF is fitted on the
forget *and* retain sets, so words that every example shares — "born", "works" — rank low).
The coreset paper reports that such keywords carry much of the unlearning effect.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from pydantic import Field

from expunge.config import StrictModel
from expunge.data.collator import collate
from expunge.data.examples import Example
from expunge.data.formatting import FormatSettings, resolve_template, segments_for, tokenize_example
from expunge.errors import DataError
from expunge.lazy import lazy, no_grad
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

T = TypeVar("T")
METHODS = ("random", "grand", "moderate", "mink")


class CoresetSettings(StrictModel):
    method: Literal["none", "random", "grand", "moderate", "mink"] = "none"
    ratio: float = Field(default=0.05, gt=0.0, le=1.0)
    match_steps: bool = True
    mink_k: float = Field(default=0.2, gt=0.0, le=1.0)
    keywords: int = Field(default=0, ge=0)  # > 0: forget the top-N TF-IDF words of each example


def coreset_size(n: int, ratio: float) -> int:
    """round(ratio·n), at least one example."""
    if n < 1:
        raise DataError("cannot select a coreset of an empty forget set")
    return min(n, max(1, round(ratio * n)))


def random_coreset(examples: list[T], ratio: float, seed: int = 0) -> list[T]:
    """A seeded uniform sample of ``ratio`` of ``examples``, in their original order."""
    chosen = random.Random(seed).sample(range(len(examples)), coreset_size(len(examples), ratio))
    return [examples[i] for i in sorted(chosen)]


# -- pure selection rules ------------------------------------------------------------------------


def top_indices(scores: Sequence[float], count: int) -> list[int]:
    """The ``count`` highest scores (ties: the earlier example), returned in original order."""
    values = np.asarray(scores, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise DataError("cannot select a coreset of an empty forget set")
    if np.isnan(values).any():
        raise ValueError("coreset scores contain NaN")
    order = sorted(range(values.size), key=lambda i: (-values[i], i))
    return sorted(order[:count])


def moderate_indices(features: np.ndarray, count: int) -> list[int]:
    """The ``count`` examples whose distance to the centre is closest to the median distance."""
    feats = np.asarray(features, dtype=np.float64)
    if feats.ndim != 2 or feats.shape[0] == 0:
        raise ValueError("features must be a non-empty (n, d) array")
    distance = np.linalg.norm(feats - feats.mean(axis=0), axis=1)
    return top_indices(-np.abs(distance - np.median(distance)), count)


# -- scores from the model (the only model calls of this module) --------------------------------


def _pad(tokenizer: PreTrainedTokenizerBase) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def grand_scores(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    examples: list[Example],
    fmt: FormatSettings,
    progress: bool = False,
) -> list[float]:
    """‖∇_θ NLL_sum(x)‖ of each example (one backward pass each, all parameters)."""
    from expunge.train.objectives import token_nll

    device = next(model.parameters()).device
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    was_training = model.training
    model.eval()  # no dropout: the score is a property of the model, not of a noise draw
    scores = []
    try:
        for p in params:
            p.requires_grad_(True)
        for example in track(examples, "GraNd scores", total=len(examples), enabled=progress):
            batch = collate([tokenize_example(example, tokenizer, fmt)], _pad(tokenizer))
            batch = {k: v.to(device) for k, v in batch.items()}
            nll, mask = token_nll(model, batch)
            grads = torch.autograd.grad((nll * mask).sum(), params, allow_unused=True)
            squared = sum(float(g.detach().float().pow(2).sum()) for g in grads if g is not None)
            scores.append(squared**0.5)
    finally:
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)
        model.train(was_training)
    return scores


@no_grad
def mean_hidden_features(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    examples: list[Example],
    fmt: FormatSettings,
    batch_size: int = 8,
) -> np.ndarray:
    """(n, hidden) last-layer hidden states averaged over each example's tokens."""
    device = next(model.parameters()).device
    tokenized = [tokenize_example(e, tokenizer, fmt) for e in examples]
    rows = []
    for start in range(0, len(tokenized), batch_size):
        batch = collate(tokenized[start : start + batch_size], _pad(tokenizer))
        mask = batch["attention_mask"].to(device)
        out = model(input_ids=batch["input_ids"].to(device), attention_mask=mask,
                    output_hidden_states=True)  # fmt: skip
        hidden = out.hidden_states[-1].float()
        weights = mask.unsqueeze(-1).float()
        rows.append(((hidden * weights).sum(1) / weights.sum(1).clamp(min=1)).cpu().numpy())
    return np.concatenate(rows, axis=0)


def example_text(example: Example, tokenizer: PreTrainedTokenizerBase, fmt: FormatSettings) -> str:
    """The example as the model was trained on it (template included), as one string."""
    fmt = resolve_template(tokenizer, fmt)
    return "".join(text for text, _ in segments_for(example, tokenizer, fmt))


def select_coreset(
    examples: list[Example],
    settings: CoresetSettings,
    seed: int = 0,
    model: nn.Module | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    fmt: FormatSettings | None = None,
    batch_size: int = 8,
) -> tuple[list[Example], dict[str, Any]]:
    """The coreset of ``examples`` per ``settings.method`` and what was chosen (indices)."""
    count = coreset_size(len(examples), settings.ratio)
    method = settings.method
    if method == "random":
        chosen = sorted(random.Random(seed).sample(range(len(examples)), count))
        return [examples[i] for i in chosen], {"indices": chosen}
    if method not in METHODS:
        raise ValueError(f"unknown coreset method {method!r}")
    if model is None or tokenizer is None:
        raise ValueError(f"coreset.method={method} scores examples with the model; pass it")
    fmt = resolve_template(tokenizer, fmt or FormatSettings())
    info: dict[str, Any] = {}
    if method == "grand":
        scores = grand_scores(model, tokenizer, examples, fmt)
        chosen = top_indices(scores, count)
    elif method == "moderate":
        chosen = moderate_indices(
            mean_hidden_features(model, tokenizer, examples, fmt, batch_size), count
        )
        scores = None
    else:
        from expunge.audit.mia import mia_scores

        texts = [example_text(e, tokenizer, fmt) for e in examples]
        scores = mia_scores(model, tokenizer, texts, batch_size=batch_size, k=settings.mink_k)[
            "min_k"
        ]
        chosen = top_indices(scores, count)
    info["indices"] = chosen
    if scores is not None:
        info["selected_scores"] = [round(float(scores[i]), 6) for i in chosen]
        info["mean_score_all"] = float(np.mean(scores))
    return [examples[i] for i in chosen], info


# -- keywords ------------------------------------------------------------------------------------


def _plain_text(example: Example) -> str:
    if example.text is not None:
        return example.text
    if example.messages is not None:
        return " ".join(m.content for m in example.messages)
    return f"{example.prompt} {example.response}"


def tfidf_keywords(
    documents: Sequence[str], top_n: int, background: Sequence[str] = ()
) -> list[list[str]]:
    """The ``top_n`` highest-TF-IDF words of each document (ties: alphabetical).

    The IDF is fitted on ``documents`` + ``background`` (scikit-learn's smoothed IDF,
    ln((1+n)/(1+df)) + 1, rows L2-normalized); English stop words are dropped.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer

    if top_n < 1:
        raise ValueError(f"top_n must be >= 1, got {top_n}")
    if not documents:
        raise DataError("no forget examples to extract keywords from")
    vectorizer = TfidfVectorizer(stop_words="english")
    try:
        matrix = vectorizer.fit_transform([*documents, *background])
    except ValueError as err:  # every word a stop word
        raise DataError(f"no keywords to extract from the forget set: {err}") from None
    vocabulary = vectorizer.get_feature_names_out()
    out = []
    for row in range(len(documents)):
        weights = matrix.getrow(row).toarray().ravel()
        ranked = sorted(np.flatnonzero(weights), key=lambda j: (-weights[j], vocabulary[j]))
        out.append([str(vocabulary[j]) for j in ranked[:top_n]])
    return out


def keyword_examples(
    examples: list[Example], top_n: int, background: Sequence[Example] = ()
) -> list[Example]:
    """Each example replaced by a text example of its ``top_n`` TF-IDF keywords."""
    keywords = tfidf_keywords(
        [_plain_text(e) for e in examples], top_n, [_plain_text(e) for e in background]
    )
    out = []
    for index, (example, words) in enumerate(zip(examples, keywords, strict=True)):
        if not words:
            raise DataError(f"forget example {index} has no keyword (only stop words)")
        out.append(Example(text=" ".join(words), meta={**example.meta, "keywords_of": index}))
    return out
