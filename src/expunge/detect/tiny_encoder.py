"""The from-scratch encoder of the ``encoder`` detector (``detect/encoder.py``): its own module,
imported when it trains, so that checking a detect config does not import torch."""

from __future__ import annotations

import torch
from torch import nn

PAD = 0  # the encoder's padding id (detect/encoder.py: PAD, UNK, EMPTY = 0, 1, 2)


class TinyEncoder(nn.Module):
    def __init__(self, vocab: int, dim: int, layers: int, heads: int, max_len: int,
                 dropout: float) -> None:  # fmt: skip
        super().__init__()
        self.embed = nn.Embedding(vocab, dim, padding_idx=PAD)
        self.position = nn.Embedding(max_len, dim)
        layer = nn.TransformerEncoderLayer(
            dim, heads, dim_feedforward=2 * dim, dropout=dropout, activation="gelu",
            batch_first=True, norm_first=True,
        )  # fmt: skip
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 2)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mask = ids != PAD
        positions = torch.arange(ids.shape[1], device=ids.device)
        hidden = self.embed(ids) + self.position(positions)[None]
        hidden = self.norm(self.encoder(hidden, src_key_padding_mask=~mask))
        pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        return self.head(pooled)
