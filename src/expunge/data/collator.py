"""Pad tokenized examples into a batch; labels keep their explicit mask (-100 = no loss)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from expunge.data.formatting import IGNORE_INDEX, TokenizedExample
from expunge.lazy import lazy

if TYPE_CHECKING:
    import torch
else:
    torch = lazy("torch")  # loaded with the first batch, not with the config (expunge.lazy)


def collate(
    examples: list[TokenizedExample], pad_token_id: int, padding_side: str = "right"
) -> dict[str, torch.Tensor]:
    """Right padding for training and teacher-forced scoring; left padding for generation."""
    width = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        cols = slice(0, n) if padding_side == "right" else slice(width - n, width)
        input_ids[row, cols] = torch.tensor(example.input_ids, dtype=torch.long)
        labels[row, cols] = torch.tensor(example.labels, dtype=torch.long)
        attention_mask[row, cols] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
