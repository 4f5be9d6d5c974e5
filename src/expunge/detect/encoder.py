"""``encoder``: a small transformer encoder with a linear head reads the responses.

The trace-detection paper fine-tunes a pretrained LLM-based encoder with a linear head (lr 9e-5,
3 epochs; METHODS.md §5.4). No pretrained encoder can be downloaded here, and a tiny encoder has
no pretraining to lose, so this one is trained from scratch on the training fold: the response
text is tokenized with the *original model's own tokenizer* (the ids ``responses.py`` kept),
the ids seen in the fold get embeddings (others map to one unknown id), then learned positions,
a 2-layer pre-norm transformer encoder (d = 64, 4 heads, GELU, dropout 0.1), masked mean
pooling and a linear head; AdamW (lr 1e-3, weight decay 0.01), cross-entropy, 30 epochs,
batch 32, seeded. It learns order-aware cues that bag-of-n-gram TF-IDF cannot, and needs no
network; with a few hundred responses expect it to match, not beat, TF-IDF.

A classifier's own small loop lives here: it trains a classifier of responses, not a language
model, so it does not belong in ``train/loop.py``.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from expunge.config import StrictModel
from expunge.detect.responses import DetectData

PAD, UNK, EMPTY = 0, 1, 2  # an empty response is one EMPTY token, so pooling has something


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


class EncoderClassifier(StrictModel):
    dim: int = Field(default=64, ge=8)
    layers: int = Field(default=2, ge=1)
    heads: int = Field(default=4, ge=1)
    max_len: int = Field(default=64, ge=1)
    dropout: float = Field(default=0.1, ge=0, lt=1)
    epochs: int = Field(default=30, ge=1)
    batch_size: int = Field(default=32, ge=1)
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=0.01, ge=0)

    USES: ClassVar[str] = "tokens"

    def _encode(self, token_ids: list[list[int]], vocab: dict[int, int]) -> torch.Tensor:
        rows = [[vocab.get(t, UNK) for t in ids[: self.max_len]] or [EMPTY] for ids in token_ids]
        out = torch.full((len(rows), max(len(r) for r in rows)), PAD, dtype=torch.long)
        for i, row in enumerate(rows):
            out[i, : len(row)] = torch.tensor(row)
        return out

    def fit_predict(self, train: DetectData, test: DetectData, seed: int = 0) -> np.ndarray:
        seen = sorted({t for ids in train.token_ids for t in ids[: self.max_len]})
        vocab = {token: index + 3 for index, token in enumerate(seen)}
        x_train = self._encode(train.token_ids, vocab)
        y_train = torch.as_tensor(train.labels, dtype=torch.long)
        generator = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = TinyEncoder(len(vocab) + 3, self.dim, self.layers, self.heads, self.max_len,
                                self.dropout)  # fmt: skip
            optimizer = torch.optim.AdamW(model.parameters(), lr=self.lr,
                                          weight_decay=self.weight_decay)  # fmt: skip
            model.train()
            for _ in range(self.epochs):
                order = torch.randperm(len(x_train), generator=generator)
                for start in range(0, len(order), self.batch_size):
                    batch = order[start : start + self.batch_size]
                    loss = F.cross_entropy(model(x_train[batch]), y_train[batch])
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
            model.eval()
            with torch.no_grad():
                logits = model(self._encode(test.token_ids, vocab))
        return torch.softmax(logits, dim=-1)[:, 1].numpy()
