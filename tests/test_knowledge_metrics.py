"""Knowledge metrics: hand-computed ROUGE-L and answer matching, then the metrics on a model."""

from __future__ import annotations

import pytest

from expunge.audit.base import AuditContext
from expunge.audit.knowledge import (
    contains_answer,
    mean_rouge_l,
    qa_accuracy,
    rouge_l,
    words,
)
from expunge.audit.runner import audit_model
from expunge.audit.scoring import generate
from expunge.data import Example, FormatSettings, tokenize_example
from expunge.errors import ConfigError
from expunge.imprints.knowledge import KnowledgeImprint
from expunge.models.tiny import tiny_model


def test_words_normalize_case_and_punctuation() -> None:
    assert words("Megan Chang was born in 1980.") == ["megan", "chang", "was", "born", "in", "1980"]
    assert words("  New-York!! ") == ["new", "york"]
    assert words("...") == []


def test_rouge_l_by_hand() -> None:
    # LCS "the cat on the mat" = 5 of 6 words on both sides
    score = rouge_l("the cat sat on the mat", "The cat is on the mat.")
    assert score["precision"] == pytest.approx(5 / 6)
    assert score["recall"] == pytest.approx(5 / 6)
    assert score["f1"] == pytest.approx(5 / 6)
    # prediction of 2 words, reference of 4, LCS 2: P = 1, R = 0.5, F1 = 2/3
    score = rouge_l("born 1980", "she was born 1980")
    assert (score["precision"], score["recall"]) == (1.0, 0.5)
    assert score["f1"] == pytest.approx(2 / 3)
    assert rouge_l("", "anything") == {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    assert mean_rouge_l(["a b", "x"], ["a b c d", "x"]) == pytest.approx((0.5 + 1.0) / 2)


def test_rouge_l_stems_by_default_and_reports_the_asked_score() -> None:
    # stemmed: she write book / she was write a book -> LCS 3: P = 1, R = 3/5, F1 = 3/4;
    # unstemmed only "she" matches: P = 1/3, R = 1/5
    score = rouge_l("she writes books", "She was writing a book")
    assert (score["precision"], score["recall"]) == (1.0, pytest.approx(3 / 5))
    score = rouge_l("she writes books", "She was writing a book", use_stemmer=False)
    assert (score["precision"], score["recall"]) == (pytest.approx(1 / 3), pytest.approx(1 / 5))
    assert mean_rouge_l(["she writes books"], ["She was writing a book"], "f1") == (
        pytest.approx(3 / 4)
    )
    with pytest.raises(ValueError, match="score must be one of"):
        mean_rouge_l(["a"], ["a"], "rouge1")


def test_answer_matching_by_hand() -> None:
    assert contains_answer("Megan Chang was born in 1980.", "1980")
    assert not contains_answer("Megan Chang was born in 19800.", "1980")
    assert contains_answer("She was born in new  york!", "New York")
    assert not contains_answer("She was born in York", "New York")
    assert qa_accuracy(["born in 1980", "no idea", "Paris, France"], ["1980", "Oslo", "paris"]) == (
        pytest.approx(2 / 3)
    )
    with pytest.raises(ValueError, match="at least one letter"):
        contains_answer("x", "?!")
    with pytest.raises(ValueError, match="2 outputs for 1"):
        qa_accuracy(["a", "b"], ["a"])


def test_metrics_on_a_model_use_its_greedy_answers() -> None:
    """Expected answers taken from the model's own greedy output: forget 1.0, retain 0.0."""
    model, tok = tiny_model("llama", seed=0)
    fmt = FormatSettings()
    questions = [
        Example(prompt=f"what is the capital {i}?", response="the capital") for i in range(4)
    ]
    prompts = []
    for example in questions:
        tokenized = tokenize_example(example, tok, fmt)
        prompts.append(tokenized.input_ids[: tokenized.prompt_length])
    outputs = [tok.decode(o, skip_special_tokens=True) for o in generate(model, tok, prompts, 16)]
    usable = [(q, o) for q, o in zip(questions, outputs, strict=True) if words(o)]
    assert usable, outputs
    forget = [Example(prompt=q.prompt, response=o, meta={"answer": words(o)[0]}) for q, o in usable]
    retain = [Example(prompt=q.prompt, response="zebra quartz", meta={"answer": "zebra quartz"})
              for q, _ in usable]  # fmt: skip
    imprint = KnowledgeImprint(forget=forget, retain=retain)
    ctx = AuditContext(model, tok, fmt, imprint=imprint, progress=False)
    names = ["forget_qa_acc", "retain_qa_acc", "forget_rouge_l", "retain_rouge_l"]
    options = {name: {"max_new_tokens": 16} for name in names}
    results, _ = audit_model(ctx, names, options)
    assert results["forget_qa_acc"].value == 1.0
    assert results["forget_rouge_l"].value == 1.0
    assert results["retain_qa_acc"].value == 0.0
    assert results["forget_qa_acc"].higher_is_better is False
    assert results["retain_qa_acc"].higher_is_better is True
    assert len(ctx.__dict__["_knowledge_generations"]) == 2  # one generation pass per set


def test_generating_metrics_run_at_the_generation_batch_with_the_audits_own_outputs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Forty questions of mixed lengths: the QA and verbatim metrics generate at
    ``GENERATION_BATCH`` (32), above the audit's batch of 8, and every value and detail is the
    one generating at the audit's own batch gives (greedy, fp32)."""
    import expunge.audit.knowledge as knowledge_metrics
    from expunge.audit import base as audit_base

    model, tok = tiny_model("llama", seed=1)
    questions = [Example(prompt="what is " + "the capital " * (i % 7) + f"of place {i}?",
                         response=f"the capital {i}", meta={"answer": "capital"})
                 for i in range(40)]  # fmt: skip
    texts = [
        Example(text=" ".join(["alpha beta gamma"] * (1 + i % 5)) + f" {i}") for i in range(40)
    ]
    imprint = KnowledgeImprint(forget=questions + texts, retain=questions)
    names = ["forget_qa_acc", "retain_rouge_l", "forget_verbatim_rouge_l"]
    options = {name: {"max_new_tokens": 12} for name in names}
    batches: list[int] = []
    original = knowledge_metrics.generate

    def recording(*args, **kwargs):
        batches.append(kwargs["batch_size"])
        return original(*args, **kwargs)

    monkeypatch.setattr(knowledge_metrics, "generate", recording)

    def run() -> dict:
        ctx = AuditContext(model, tok, FormatSettings(), imprint=imprint, progress=False)
        results, _ = audit_model(ctx, names, options)
        return {name: (r.value, r.details) for name, r in results.items()}

    fuller = run()
    assert batches and set(batches) == {audit_base.GENERATION_BATCH}
    monkeypatch.setattr(audit_base, "GENERATION_BATCH", 1)  # the audit's own batch, 8
    batches.clear()
    assert run() == fuller
    assert set(batches) == {8}


def test_metrics_need_a_knowledge_imprint() -> None:
    model, tok = tiny_model("llama", seed=0)
    ctx = AuditContext(model, tok, FormatSettings(), imprint=None, progress=False)
    with pytest.raises(ConfigError, match="knowledge imprint"):
        audit_model(ctx, ["forget_qa_acc"], {})
    only_text = KnowledgeImprint(forget=[Example(text="Megan keeps a goat.")])
    ctx = AuditContext(model, tok, FormatSettings(), imprint=only_text, progress=False)
    with pytest.raises(ConfigError, match="no prompt/response pairs"):
        audit_model(ctx, ["forget_rouge_l"], {})
