"""Objective tests' shared fixtures: one micro-batch's step context, a model whose next-token
distribution is uniform (closed forms), and forget/retain batches of the places world."""

from __future__ import annotations

import math

import torch

from expunge.data.collator import collate
from expunge.data.formatting import FormatSettings, tokenize_examples
from expunge.data.synthetic import place_qa
from expunge.models.tiny import tiny_model
from expunge.train import StepContext

FMT = FormatSettings()


def one_batch_context(batches) -> StepContext:
    tokens = {k: int((b["labels"][:, 1:] != -100).sum()) for k, b in batches.items()}
    sequences = {k: b["input_ids"].shape[0] for k, b in batches.items()}
    return StepContext(step=0, world_size=1, tokens=tokens, sequences=sequences)


def uniform_model():
    model, tok = tiny_model("llama", seed=0)
    with torch.no_grad():
        model.lm_head.weight.zero_()  # every next-token distribution is uniform: NLL = log V
    return model, tok, math.log(model.config.vocab_size)


def place_batches(tok, n: int = 3) -> dict:
    places = place_qa(2 * n, seed=3)
    return {"forget": collate(tokenize_examples(places[:n], tok, FMT), tok.pad_token_id),
            "retain": collate(tokenize_examples(places[n:], tok, FMT), tok.pad_token_id)}  # fmt: skip


def tokenizer_of(tok):
    return lambda examples: tokenize_examples(examples, tok, FMT)
