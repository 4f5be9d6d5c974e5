"""Sentiment judges: does a generated text carry the target sentiment?

- ``vader`` (default, offline): the VADER lexicon and rules (Hutto & Gilbert, ICWSM 2014;
  ``vaderSentiment``); a text is negative when its compound score is at or below the threshold
  (−0.05, the authors' recommended cut-off).
- a local ``*ForSequenceClassification`` directory (e.g. a sentiment fine-tune of an encoder):
  the arg-max label, compared with ``judge_label`` (matched case-insensitively against the
  model's ``id2label``; an unknown label is an error that lists the model's labels).

``judge(texts) -> list[bool]`` is all a metric sees; judges are cached per process.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path

import torch

from expunge.errors import ConfigError

Judge = Callable[[Sequence[str]], list[bool]]


def vader_judge(threshold: float) -> Judge:
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    analyzer = SentimentIntensityAnalyzer()

    def judge(texts: Sequence[str]) -> list[bool]:
        return [analyzer.polarity_scores(t)["compound"] <= threshold for t in texts]

    return judge


def classifier_judge(path: str, label: str, batch_size: int = 16) -> Judge:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    directory = Path(path)
    if not (directory / "config.json").is_file():
        raise ConfigError(
            f"sentiment judge {path!r} is neither 'vader' nor a local model directory "
            "(with config.json)"
        )
    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = AutoModelForSequenceClassification.from_pretrained(directory, use_safetensors=True)
    model.eval()
    labels = {str(v).lower(): int(k) for k, v in model.config.id2label.items()}
    if label.lower() not in labels:
        raise ConfigError(f"sentiment judge {directory.name} has no label {label!r}; its labels: "
                          f"{sorted(model.config.id2label.values())}")  # fmt: skip
    wanted = labels[label.lower()]

    @torch.no_grad()
    def judge(texts: Sequence[str]) -> list[bool]:
        out: list[bool] = []
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(list(texts[start : start + batch_size]), padding=True,
                              truncation=True, max_length=256, return_tensors="pt")  # fmt: skip
            out += (model(**batch).logits.argmax(-1) == wanted).tolist()
        return out

    return judge


@lru_cache(maxsize=4)
def get_judge(name: str, label: str = "negative", threshold: float = -0.05) -> Judge:
    if name == "vader":
        if label.lower() != "negative":
            raise ConfigError("the vader judge decides 'negative' only (judge_label=negative)")
        return vader_judge(threshold)
    return classifier_judge(name, label)
