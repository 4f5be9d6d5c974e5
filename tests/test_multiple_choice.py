"""mc_accuracy: log-likelihood multiple choice, checked against hand-computed scores."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from expunge.audit.base import AuditContext
from expunge.audit.multiple_choice import (
    PROMPT,
    Question,
    builtin_questions,
    load_questions,
    mc_accuracy_metric,
    mc_scores,
)
from expunge.data.examples import Example
from expunge.data.formatting import FormatSettings, tokenize_examples
from expunge.errors import DataError
from expunge.models.tiny import tiny_model
from expunge.registry import METRICS
from helpers import MC_DOCS

DOCS = MC_DOCS


def write(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_scores_by_hand() -> None:
    questions = [Question("q1", ("a", "bbbb"), 1), Question("q2", ("x", "y", "z"), 2)]
    # q1: raw sums prefer "a" (-2 > -4); per character "bbbb" wins (-1 > -2)
    # q2: a tie between y and z goes to y, the first listed (wrong)
    rows = [np.array([-2.0, -4.0]), np.array([-3.0, -1.0, -1.0])]
    assert mc_scores(questions, rows) == {"acc": 0.0, "acc_norm": 0.5}
    rows = [np.array([-5.0, -4.0]), np.array([-3.0, -2.0, -1.0])]
    assert mc_scores(questions, rows) == {"acc": 1.0, "acc_norm": 1.0}


@pytest.mark.parametrize("seed", [0, 1])
def test_metric_matches_one_sequence_at_a_time(tmp_path, seed) -> None:
    model, tokenizer = tiny_model("llama", seed=seed)
    model.eval()
    path = write(tmp_path / "mc.jsonl", DOCS)
    fmt = FormatSettings(template="raw", raw_prompt_format="{prompt}", add_eos=False)
    correct = []
    for doc in DOCS:
        examples = [Example(prompt=PROMPT.format(question=doc["question"]), response=f" {c}")
                    for c in doc["choices"]]  # fmt: skip
        scores = []
        for example, choice in zip(examples, doc["choices"], strict=True):
            tokenized = tokenize_examples([example], tokenizer, fmt)[0]
            text = tokenizer.decode(tokenized.input_ids, skip_special_tokens=True)
            assert text.replace(" ", "") == f"Question:{doc['question']}\nAnswer:{choice}".replace(
                " ", ""
            )  # the prompt, then the choice as its continuation
            ids = torch.tensor([tokenized.input_ids])
            with torch.no_grad():
                logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), dim=-1)
            picked = logp.gather(-1, ids[0, 1:, None])[:, 0]
            scores.append(float(picked[tokenized.prompt_length - 1 :].sum()))
        correct.append(int(np.argmax(scores)) == doc["answer"])
    ctx = AuditContext(model, tokenizer, FormatSettings(), options={"data": path},
                       batch_size=3, progress=False)  # fmt: skip
    result = mc_accuracy_metric(ctx)
    assert result.value == pytest.approx(float(np.mean(correct)))
    assert result.details["n"] == len(DOCS) and result.higher_is_better
    assert result.details["chance"] == pytest.approx(np.mean([1 / len(d["choices"]) for d in DOCS]))
    assert METRICS.get("mc_accuracy") is mc_accuracy_metric


def test_builtin_questions_are_well_formed() -> None:
    questions = builtin_questions()
    assert len(questions) == 48
    assert all(len(q.choices) == 4 and len(set(q.choices)) == 4 for q in questions)
    assert len({q.question for q in questions}) == len(questions)
    # the right answer is not always in the same place
    assert len({q.answer for q in questions}) == 4


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"question": "q", "choices": ["a"], "answer": 0}, "at least two"),
        ({"question": "q", "choices": ["a", "b"], "answer": 2}, "answer 2 is not an index"),
        ({"question": "", "choices": ["a", "b"], "answer": 0}, "'question'"),
        ({"question": "q", "choices": ["a", "b"], "answer": "a"}, "'answer' must be the index"),
        ({"question": "q", "choices": ["a", ""], "answer": 0}, "non-empty"),
    ],
)
def test_bad_questions_name_their_line(tmp_path, row, message) -> None:
    path = write(tmp_path / "mc.jsonl", [DOCS[0], row])
    with pytest.raises(DataError, match=rf"mc\.jsonl:2: .*{message}"):
        load_questions(path)


def test_empty_and_missing_files(tmp_path) -> None:
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match="holds no questions"):
        load_questions(tmp_path / "empty.jsonl")
    with pytest.raises(DataError, match="not found"):
        load_questions(tmp_path / "missing.jsonl")
