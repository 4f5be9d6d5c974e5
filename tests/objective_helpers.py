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


def run_unlearn_eraser(tmp_path, objective: str):
    """The unlearn eraser with ``objective`` for 2 steps on a tiny Llama and a 6-person world:
    its record and the first line of its training curve."""
    import json

    from expunge.config import build_config
    from expunge.imprints.knowledge import KnowledgeImprint
    from expunge.models.loading import LoadedModel
    from expunge.registry import ERASERS
    from expunge.stage import run_stage

    world = KnowledgeImprint.synthetic_people(n_people=6, forget_ratio=0.34, seed=0)
    path = world.save(tmp_path / "world")
    model, tok = tiny_model("llama", seed=0)
    loaded = LoadedModel(model, tok, "tiny", "tiny", torch.device("cpu"), torch.float32)
    cfg = build_config(ERASERS.get("unlearn"), {"preset": "demo"},
                       [f"imprint={path}", f"objective={objective}", "train.max_steps=2",
                        "train.progress=false", "train.batch_size=4", "audit_metrics=[ppl]"])  # fmt: skip
    record = run_stage(cfg, tmp_path / "out", models={"model": loaded})
    first = json.loads((tmp_path / "out" / "train" / "metrics.jsonl").read_text().splitlines()[0])
    return record, first
