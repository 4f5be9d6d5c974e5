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

``pretrained=DIR`` (``options.encoder.pretrained``) reads the response *text* with a pretrained
model instead, as the paper does: a local ``*ForSequenceClassification`` directory or a causal-LM
directory (or the embedded name ``smollm2-135m``, which works offline), loaded with a
sequence-classification head through ``expunge.models.loading`` — safetensors only,
``trust_remote_code`` off. Two ways to train it:

- ``tune=head`` (the default here): the pretrained model stays frozen; its last hidden states,
  mean-pooled over the response's tokens (``max_len`` at most), feed a new linear head (logistic
  regression on standardized features, C = 1). Each response is encoded once per run, however
  many folds and comparisons reuse it.
- ``tune=all`` (the paper's recipe): the whole model and its classification head are fine-tuned
  per fold with AdamW, ``tune_lr`` 9e-5 for ``tune_epochs`` 3, from the same weights each time.
  It is the default of the paper, not of expunge, because on a CPU fine-tuning a 135M encoder for
  every fold of every comparison takes hours; ``tune=head`` takes minutes.

A classifier's own small loop lives here: it trains a classifier of responses, not a language
model, so it does not belong in ``train/loop.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, PrivateAttr, field_validator

from expunge.config import StrictModel
from expunge.detect.responses import DetectData
from expunge.lazy import lazy, no_grad
from expunge.models.embedded import EMBEDDED_MODELS

if TYPE_CHECKING:
    import numpy as np
    import torch
    import torch.nn.functional as F
    from torch import nn
else:  # loaded when first used, not when a config is checked (expunge.lazy)
    F = lazy("torch.nn.functional")
    nn = lazy("torch.nn")
    np = lazy("numpy")
    torch = lazy("torch")

PAD, UNK, EMPTY = 0, 1, 2  # an empty response is one EMPTY token, so pooling has something


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
    # a pretrained reader instead of the tiny encoder (see the module docstring)
    pretrained: str | None = None
    tune: Literal["head", "all"] = "head"
    tune_lr: float = Field(default=9e-5, gt=0)
    tune_epochs: int = Field(default=3, ge=1)

    USES: ClassVar[str] = "tokens"
    _loaded: Any = PrivateAttr(default=None)  # (model, tokenizer, initial state for tune=all)
    _features: dict[str, np.ndarray] = PrivateAttr(default_factory=dict)  # tune=head, per text

    @field_validator("pretrained")
    @classmethod
    def _local_model(cls, value: str | None) -> str | None:
        # Checked with the config, before any response is sampled. Local only: the detector
        # must not reach for a hub, and the embedded model is converted when first loaded.
        if value is None or value in EMBEDDED_MODELS:
            return value
        path = Path(value).expanduser()
        if not (path / "config.json").is_file():
            raise ValueError(f"{value} is not a local model directory (no config.json)")
        if not any(path.glob("*.safetensors")):
            raise ValueError(f"{value} has no *.safetensors weights (pickle weights are refused)")
        return value

    @property
    def cheap_refit(self) -> bool:
        """Only the frozen pretrained reader refits in a moment (a logistic head on features
        encoded once); the others train a network per fold, too slow for a permutation test
        unless asked (``DetectConfig.permute_costly``)."""
        return self.pretrained is not None and self.tune == "head"

    def _encode(self, token_ids: list[list[int]], vocab: dict[int, int]) -> torch.Tensor:
        rows = [[vocab.get(t, UNK) for t in ids[: self.max_len]] or [EMPTY] for ids in token_ids]
        out = torch.full((len(rows), max(len(r) for r in rows)), PAD, dtype=torch.long)
        for i, row in enumerate(rows):
            out[i, : len(row)] = torch.tensor(row)
        return out

    def fit_predict(self, train: DetectData, test: DetectData, seed: int = 0) -> np.ndarray:
        if self.pretrained is not None:
            if self.tune == "head":
                return self._probe(train, test, seed)
            return self._finetune(train, test, seed)
        seen = sorted({t for ids in train.token_ids for t in ids[: self.max_len]})
        vocab = {token: index + 3 for index, token in enumerate(seen)}
        x_train = self._encode(train.token_ids, vocab)
        y_train = torch.as_tensor(train.labels, dtype=torch.long)
        generator = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            from expunge.detect.tiny_encoder import TinyEncoder  # torch: when it trains

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

    # -- a pretrained reader ---------------------------------------------------------------------

    def _pretrained(self) -> tuple[Any, Any, dict[str, torch.Tensor] | None]:
        if self._loaded is None:
            from expunge.models.loading import load_model

            # A causal LM gets a new classification head; a classifier keeps its own (tune=all
            # adapts it; tune=head reads hidden states only). Safetensors, no remote code.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)  # a new head's initialization, the same every run
                loaded = load_model(self.pretrained, dtype="float32",
                                    head="sequence_classification", num_labels=2)  # fmt: skip
            model, tokenizer = loaded.model, loaded.tokenizer
            model.config.pad_token_id = tokenizer.pad_token_id  # last-token pooling needs it
            initial = None
            if self.tune == "all":
                initial = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            self._loaded = (model, tokenizer, initial)
        return self._loaded

    def _batch(self, tokenizer: Any, texts: list[str], device: torch.device) -> dict:
        batch = tokenizer([t or " " for t in texts], padding=True, truncation=True,
                          max_length=self.max_len, return_tensors="pt")  # fmt: skip
        return {k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}

    @no_grad
    def _encode_texts(self, texts: list[str]) -> np.ndarray:
        """Mean-pooled last hidden states of the frozen model, each distinct text once."""
        model, tokenizer, _ = self._pretrained()
        model.eval()
        todo = list(dict.fromkeys(t for t in texts if t not in self._features))
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start : start + self.batch_size]
            batch = self._batch(tokenizer, chunk, model.device)
            hidden = model(**batch, output_hidden_states=True).hidden_states[-1]
            mask = batch["attention_mask"][..., None].to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            for text, row in zip(chunk, pooled.float().cpu().numpy(), strict=True):
                self._features[text] = row
        return np.stack([self._features[t] for t in texts])

    def _probe(self, train: DetectData, test: DetectData, seed: int) -> np.ndarray:
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        head = make_pipeline(StandardScaler(),
                             LogisticRegression(C=1.0, max_iter=2000, random_state=seed))  # fmt: skip
        head.fit(self._encode_texts(train.texts), train.labels)
        return head.predict_proba(self._encode_texts(test.texts))[:, 1]

    def _finetune(self, train: DetectData, test: DetectData, seed: int) -> np.ndarray:
        model, tokenizer, initial = self._pretrained()
        model.load_state_dict(initial)  # every fold starts from the pretrained weights
        labels = torch.as_tensor(train.labels, dtype=torch.long)
        generator = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            optimizer = torch.optim.AdamW(model.parameters(), lr=self.tune_lr,
                                          weight_decay=self.weight_decay)  # fmt: skip
            model.train()
            for _ in range(self.tune_epochs):
                order = torch.randperm(len(labels), generator=generator)
                for start in range(0, len(order), self.batch_size):
                    index = order[start : start + self.batch_size].tolist()
                    batch = self._batch(tokenizer, [train.texts[i] for i in index], model.device)
                    logits = model(**batch).logits
                    loss = F.cross_entropy(logits, labels[index].to(logits.device))
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
            model.eval()
            scores = []
            with torch.no_grad():
                for start in range(0, len(test.texts), self.batch_size):
                    batch = self._batch(tokenizer, test.texts[start : start + self.batch_size],
                                        model.device)  # fmt: skip
                    scores.append(torch.softmax(model(**batch).logits.float(), -1)[:, 1].cpu())
        return torch.cat(scores).numpy()
