"""MUSE's KnowMem (Shi et al., *MUSE: Machine Unlearning Six-Way Evaluation for Language
Models*, 2024, §3): ROUGE-L of the model's answers to questions about the forget set
(``knowmem_forget``: should fall to what a model never trained on it knows) and about the retain
set (``knowmem_retain``: MUSE's *utility preserved*, which should stay as high as the target
model's).

As MUSE's ``metrics/knowmem.py`` and open-unlearning's ``forget_knowmem_ROUGE`` /
``retain_knowmem_ROUGE`` (``configs/eval/muse_metrics/``): each question is asked after the
benchmark's few-shot pairs (``knowmem_*_icl``), greedily for up to ``max_new_tokens`` = 32
tokens, and the answer is cut at the first "\\n\\n", "\\nQuestion" or "Question:". With the raw
template the prompt is MUSE's own text, ``Question: {q}\\nAnswer: {a}\\n\\n``... ending in
``Question: {q}\\nAnswer: ``; with the chat template the few-shot pairs are earlier turns, as
open-unlearning builds them. The score is the mean ROUGE-L F1: stemmed by default
(open-unlearning's ``rougeL_f1``), ``stemmer=false`` as MUSE's ``RougeEvalLogger``
(``mean_rougeL``); MUSE's tables print it ×100.

A knowledge imprint without MUSE's ``knowmem_*`` eval sets (the people world) is asked its own
forget or retain Q/A pairs, without few-shot pairs. Options: ``max_examples``,
``max_new_tokens``, ``score`` (``f1``), ``stemmer``.
"""

from __future__ import annotations

from expunge.audit.base import AuditContext, MetricResult
from expunge.audit.knowledge import (
    _rouge_options,
    _variant,
    generate_answers,
    imprint_set,
    mean_rouge_l,
    rouge_per_example,
)
from expunge.data.examples import Example, Message
from expunge.data.formatting import resolve_template
from expunge.errors import ConfigError

STOP_WORDS = ("\n\n", "\nQuestion", "Question:")


def muse_prompt(question: str, icl: list[tuple[str, str]]) -> str:
    """MUSE's few-shot text prompt (``metrics/knowmem.py``)."""
    shots = "".join(f"Question: {q}\nAnswer: {a}\n\n" for q, a in icl)
    return shots + f"Question: {question}\nAnswer: "


def knowmem_examples(
    question_answers: list[Example], icl: list[Example], template: str
) -> list[Example]:
    """Each question as an example to generate from: MUSE's text with the raw template, earlier
    chat turns with the chat template."""
    shots = [(e.prompt or "", e.response or "") for e in icl]
    out = []
    for example in question_answers:
        if template == "raw":
            out.append(Example(prompt=muse_prompt(example.prompt or "", shots),
                               response=example.response))  # fmt: skip
            continue
        turns = [Message(role=role, content=text) for q, a in shots
                 for role, text in (("user", q), ("assistant", a))]  # fmt: skip
        turns += [Message(role="user", content=example.prompt or ""),
                  Message(role="assistant", content=example.response or "")]  # fmt: skip
        out.append(Example(messages=turns))
    return out


def _knowmem(ctx: AuditContext, which: str) -> MetricResult:
    eval_sets = getattr(ctx.imprint, "eval_sets", None) or {}
    name = f"knowmem_{which}"
    if name in eval_sets:
        qa, icl, source = (
            imprint_set(ctx, name),
            eval_sets.get(f"{name}_icl", []),
            f"eval set {name}",
        )
    else:
        qa, icl, source = imprint_set(ctx, which), [], f"the imprint's {which} set"
    qa = [e for e in qa if e.kind == "prompt_response"]
    if not qa:
        raise ConfigError(f"KnowMem needs questions: the imprint's {source} has no Q/A pairs")
    limit = ctx.options.get("max_examples")
    qa = qa[: int(limit)] if limit else qa
    score, stemmer = _rouge_options(ctx, "f1")
    max_new = int(ctx.options.get("max_new_tokens", 32))
    fmt = resolve_template(ctx.tokenizer, ctx.format)
    if fmt.template == "raw":  # MUSE's prompt ends in "Answer: ": nothing may follow it
        fmt = fmt.model_copy(update={"raw_prompt_format": "{prompt}"})
    examples = knowmem_examples(qa, icl, fmt.template)
    outputs = generate_answers(ctx, (name, len(qa)), examples, max_new, STOP_WORDS, fmt)
    references = [e.response or "" for e in qa]
    return MetricResult(
        name=name, value=mean_rouge_l(outputs, references, score, stemmer),
        higher_is_better=which == "retain",
        details={"n_examples": len(qa), "n_shots": len(icl), "source": source,
                 "score": score, "stemmer": stemmer, "variant": _variant(score, stemmer),
                 "max_new_tokens": max_new, "decoding": ctx.decoding.describe(),
                 "per_example": rouge_per_example(outputs, references, stemmer)},
    )  # fmt: skip


def knowmem_forget_metric(ctx: AuditContext) -> MetricResult:
    return _knowmem(ctx, "forget")


def knowmem_retain_metric(ctx: AuditContext) -> MetricResult:
    return _knowmem(ctx, "retain")
