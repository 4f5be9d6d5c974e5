"""``mc_accuracy``: a downstream task — multiple-choice questions scored by log-likelihood.

The model reads ``Question: {question}\\nAnswer:`` and each choice is scored as the
continuation `` {choice}`` (the way lm-evaluation-harness scores ARC, HellaSwag and MMLU
without generating): the sum of the choice tokens' log-probabilities. The chosen answer is the
highest-scoring choice; ``acc`` is the share of questions where it is the right one (the value),
``acc_norm`` divides each score by the choice's length in characters first, so that long
choices are not penalized for having more tokens. Ties go to the first choice listed.

Data: ``options.mc_accuracy.data=FILE.jsonl``, one question per line,
``{"question": str, "choices": [str, ...], "answer": int}`` (answer = index into choices; at
least two choices), or by default 48 general-knowledge questions written for expunge (4
choices each, chance 25%; SmolLM2-135M-Instruct answers most of them), which is what the
secrets and unlearning demos report as downstream accuracy. Whatever the prompt format of the
imprint, the questions are scored raw: the task is the model's general ability.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from expunge.audit.base import AuditContext, MetricResult
from expunge.audit.scoring import token_logprobs
from expunge.data.examples import Example
from expunge.data.formatting import FormatSettings, tokenize_examples
from expunge.data.loaders import jsonl_records
from expunge.errors import DataError

PROMPT = "Question: {question}\nAnswer:"


@dataclass(frozen=True)
class Question:
    question: str
    choices: tuple[str, ...]
    answer: int


def load_questions(path: str | Path) -> list[Question]:
    """Questions of a JSONL file; a malformed line is named with its number."""
    questions = []
    for number, record in jsonl_records(path, what="multiple-choice file"):
        where = f"{path}:{number}"
        question, choices, answer = (record.get(k) for k in ("question", "choices", "answer"))
        if not isinstance(question, str) or not question.strip():
            raise DataError(f"{where}: 'question' must be a non-empty string")
        if not isinstance(choices, list) or len(choices) < 2:
            raise DataError(f"{where}: 'choices' must be a list of at least two strings")
        if not all(isinstance(c, str) and c.strip() for c in choices):
            raise DataError(f"{where}: every choice must be a non-empty string")
        if not isinstance(answer, int) or isinstance(answer, bool):
            raise DataError(f"{where}: 'answer' must be the index of the right choice (an int)")
        if not 0 <= answer < len(choices):
            raise DataError(
                f"{where}: answer {answer} is not an index of its {len(choices)} choices"
            )
        questions.append(Question(question, tuple(choices), answer))
    if not questions:
        raise DataError(f"{path} holds no questions")
    return questions


def builtin_questions() -> list[Question]:
    with resources.as_file(resources.files("expunge.data") / "resources" / "general_mc.jsonl") as f:
        return load_questions(f)


def choose(scores: np.ndarray) -> int:
    """Index of the best score; ties go to the first choice."""
    return int(np.argmax(scores))


def mc_scores(questions: list[Question], choice_logprobs: list[np.ndarray]) -> dict[str, float]:
    """``acc`` and ``acc_norm`` from each question's per-choice summed log-probabilities."""
    if len(questions) != len(choice_logprobs):
        raise ValueError(f"{len(choice_logprobs)} score rows for {len(questions)} questions")
    correct, correct_norm = [], []
    for question, logprobs in zip(questions, choice_logprobs, strict=True):
        lengths = np.array([len(c) for c in question.choices], dtype=np.float64)
        correct.append(choose(logprobs) == question.answer)
        correct_norm.append(choose(logprobs / lengths) == question.answer)
    return {"acc": float(np.mean(correct)), "acc_norm": float(np.mean(correct_norm))}


def mc_accuracy_metric(ctx: AuditContext) -> MetricResult:
    path = ctx.options.get("data")
    questions = load_questions(path) if path else builtin_questions()
    limit = ctx.options.get("max_questions")
    if limit:
        questions = questions[: int(limit)]
    examples = [
        Example(prompt=PROMPT.format(question=q.question), response=f" {choice}")
        for q in questions
        for choice in q.choices
    ]
    fmt = FormatSettings(template="raw", raw_prompt_format="{prompt}", add_eos=False)
    tokenized = tokenize_examples(examples, ctx.tokenizer, fmt)
    scores = token_logprobs(
        ctx.model, tokenized, ctx.tokenizer.pad_token_id, region="labels",
        batch_size=ctx.batch_size, progress=ctx.progress, description="multiple choice",
    )  # fmt: skip
    sums = -scores.nll_sums()
    rows, start = [], 0
    for q in questions:
        rows.append(sums[start : start + len(q.choices)])
        start += len(q.choices)
    result = mc_scores(questions, rows)
    chance = float(np.mean([1 / len(q.choices) for q in questions]))
    return MetricResult(
        "mc_accuracy", result["acc"], higher_is_better=True,
        details={**result, "n": len(questions), "chance": chance,
                 "data": str(path) if path else "builtin:general_mc"},
    )  # fmt: skip
