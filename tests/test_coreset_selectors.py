"""Coreset selectors (GraNd, Moderate, Min-K%) and TF-IDF keywords: hand-computed rules, the
scores against direct computations on a tiny model, and the eraser recording its selection."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from expunge.audit.mia import mia_scores
from expunge.config import build_config
from expunge.data import FormatSettings, collate, tokenize_example
from expunge.erase.unlearn.coreset import (
    CoresetSettings,
    example_text,
    grand_scores,
    keyword_examples,
    moderate_indices,
    select_coreset,
    tfidf_keywords,
    top_indices,
)
from expunge.errors import DataError
from expunge.imprints.knowledge import KnowledgeImprint
from expunge.models.loading import LoadedModel
from expunge.models.tiny import tiny_model
from expunge.registry import ERASERS
from expunge.stage import run_stage
from expunge.train.objectives import token_nll


@pytest.fixture(scope="module")
def world() -> KnowledgeImprint:
    return KnowledgeImprint.synthetic_people(n_people=10, forget_ratio=0.4, seed=0)


def test_top_indices_by_hand() -> None:
    assert top_indices([0.1, 0.9, 0.5, 0.9], 2) == [1, 3]
    assert top_indices([0.1, 0.9, 0.5, 0.9], 3) == [1, 2, 3]
    assert top_indices([3.0, 3.0, 3.0], 1) == [0]  # ties: the earlier example
    with pytest.raises(DataError, match="empty"):
        top_indices([], 1)


def test_moderate_keeps_distances_nearest_the_median() -> None:
    # points 0,1,2,3,10: centre 3.2, distances 3.2 2.2 1.2 0.2 6.8, median 2.2
    # |d - median| = 1.0 0.0 1.0 2.0 4.6
    features = np.array([[0.0], [1.0], [2.0], [3.0], [10.0]])
    assert moderate_indices(features, 1) == [1]
    assert moderate_indices(features, 3) == [0, 1, 2]
    assert moderate_indices(features, 4) == [0, 1, 2, 3]  # the outlier goes last


def test_tfidf_keywords_by_hand() -> None:
    # smoothed idf = ln((1+n)/(1+df)) + 1: "apple" (df 2) = 1, "banana"/"cherry" (df 1) = 1.405
    assert tfidf_keywords(["apple banana", "apple cherry"], 1) == [["banana"], ["cherry"]]
    assert tfidf_keywords(["apple banana", "apple cherry"], 5) == [
        ["banana", "apple"],
        ["cherry", "apple"],
    ]
    # alone, "yak" and "zebra" tie (alphabetical); a background where "yak" is common demotes it
    assert tfidf_keywords(["zebra yak"], 2) == [["yak", "zebra"]]
    assert tfidf_keywords(["zebra yak"], 2, background=["yak ox", "yak ox"]) == [["zebra", "yak"]]
    assert tfidf_keywords(["the cat and the dog"], 5) == [["cat", "dog"]]  # stop words go
    with pytest.raises(DataError, match="no keywords"):
        tfidf_keywords(["the and of"], 2)


def test_keyword_examples_keep_names_and_facts_not_templates(world) -> None:
    out = keyword_examples(world.forget[:5], 3, background=world.retain)
    assert all(e.kind == "text" and len(e.text.split()) == 3 for e in out)
    first = world.forget[0]
    # the person's name and the answer are rarer than the question template's words
    assert first.meta["answer"].lower() in out[0].text.split()
    assert out[0].meta["keywords_of"] == 0 and out[0].meta["person"] == first.meta["person"]


def test_grand_scores_are_gradient_norms_of_the_summed_nll(world) -> None:
    model, tok = tiny_model("llama", seed=0)
    fmt = FormatSettings(template="chat")
    examples = world.forget[:3]
    scores = grand_scores(model, tok, examples, fmt)
    for example, score in zip(examples, scores, strict=True):
        model.zero_grad()
        batch = collate([tokenize_example(example, tok, fmt)], tok.pad_token_id)
        nll, mask = token_nll(model, batch)
        (nll * mask).sum().backward()
        norm = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in model.parameters()))
        assert score == pytest.approx(norm, rel=1e-5)
    assert grand_scores(model, tok, examples, fmt) == scores  # deterministic


@pytest.mark.parametrize("method", ["grand", "moderate", "mink"])
def test_select_coreset_by_model_scores(world, method: str) -> None:
    model, tok = tiny_model("llama", seed=0)
    settings = CoresetSettings(method=method, ratio=0.25)
    chosen, info = select_coreset(world.forget, settings, 0, model, tok, FormatSettings())
    assert len(chosen) == 5 == len(info["indices"])  # round(0.25 * 20)
    assert chosen == [world.forget[i] for i in info["indices"]]
    if method == "mink":
        texts = [example_text(e, tok, FormatSettings()) for e in world.forget]
        expected = top_indices(mia_scores(model, tok, texts)["min_k"], 5)
        assert info["indices"] == expected
    again, _ = select_coreset(world.forget, settings, 0, model, tok, FormatSettings())
    assert again == chosen
    with pytest.raises(ValueError, match="scores examples with the model"):
        select_coreset(world.forget, settings)


def test_eraser_records_the_grand_selection_and_keywords(tmp_path, world) -> None:
    path = world.save(tmp_path / "world")
    cfg = build_config(
        ERASERS.get("unlearn"), {"preset": "demo"},
        [f"imprint={path}", "objective=ga", "coreset.method=grand", "coreset.ratio=0.2",
         "coreset.keywords=3", "train.epochs=1", "train.batch_size=4", "train.progress=false",
         "audit_metrics=[ppl]"],
    )  # fmt: skip
    model, tok = tiny_model("llama", seed=0)
    loaded = LoadedModel(model, tok, "tiny", "tiny", torch.device("cpu"), torch.float32)
    record = run_stage(cfg, tmp_path / "out", models={"model": loaded})
    coreset = record.inputs["coreset"]
    assert coreset["method"] == "grand" and len(coreset["indices"]) == 4
    assert coreset["n_full"] == 20 and coreset["max_steps"] == 5
    assert record.metrics["train_steps"] == 5  # the full set's budget: ceil(20 / 4)
    assert record.inputs["forget_keywords"] == {"top_n": 3, "n": 4}
    assert len(coreset["selected_scores"]) == 4
    assert min(coreset["selected_scores"]) >= coreset["mean_score_all"]
