"""Knowledge metrics (TOFU/MUSE style): Q/A accuracy and ROUGE-L on the forget and retain sets.

The model answers each Q/A prompt of a knowledge imprint greedily (``scoring.generate``); the
scores below are pure functions of the generated text:

- **accuracy**: the share of answers that contain the expected answer — ``meta.answer`` when
  the example has one (the synthetic people world does: the attribute value), else the whole
  reference response — compared on normalized words (lowercase, runs of characters other than
  a–z and 0–9 are separators), so "born in 1980." contains "1980";
- **ROUGE-L** (``forget_rouge_l``, ``retain_rouge_l``): ``rouge_score``'s ROUGE-L of the output
  against the reference answer, averaged over the examples. Default: the recall with the Porter
  stemmer, TOFU's ``rougeL_recall`` (TOFU ``evals/eval_everything.py``: ``eval_rouge_recall``;
  open-unlearning ``src/evals/metrics/utils.py``: ``eval_text_similarity``, used with
  ``rouge_type: rougeL_recall`` by its TOFU configs). Options: ``score=recall|f1|precision``,
  ``stemmer=true|false``.

**Verbatim memorization** (MUSE's VerbMem, ``forget_verbatim_rouge_l``): each forget example is
cut in two — its trained part (the whole text of a text example; the response of a Q/A pair,
after its prompt) is split at ``prefix_fraction`` (default 0.5) of its tokens — the model
continues the prefix greedily for as many tokens as the true continuation has, and the score
is the ROUGE-L of the generated continuation against the true one, averaged. Default: the F1
(MUSE ``eval.py``: ``verbmem_agg_key='mean_rougeL'``, the ``fmeasure`` of
``metrics/logger.py``; open-unlearning's MUSE configs: ``rouge_type: rougeL_f1``) with the
stemmer, as open-unlearning scores it, where MUSE's authors now send users; MUSE's own
``metrics/logger.py`` has ``use_stemmer=False`` (option ``stemmer=false``). Text examples are
used when the forget set has any (verbatim memorization is about running text), else all.

Generations are shared by the metrics of one audit (one ``AuditContext``), so asking for both
accuracy and ROUGE-L of a set costs one generation pass.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from rouge_score import rouge_scorer

from expunge.audit.base import AuditContext, MetricResult, wrong_imprint
from expunge.audit.scoring import generate
from expunge.data.examples import Example
from expunge.data.formatting import (
    FormatSettings,
    prompt_text,
    resolve_template,
    tokenize_example,
)
from expunge.errors import ConfigError


def words(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).split()


ROUGE_SCORES = ("recall", "f1", "precision")


@lru_cache(maxsize=2)
def _scorer(use_stemmer: bool) -> rouge_scorer.RougeScorer:
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=use_stemmer)


def rouge_l(prediction: str, reference: str, use_stemmer: bool = True) -> dict[str, float]:
    """ROUGE-L precision, recall and F1 of ``prediction`` against ``reference`` (rouge_score)."""
    score = _scorer(use_stemmer).score(reference, prediction)["rougeL"]
    return {"precision": score.precision, "recall": score.recall, "f1": score.fmeasure}


def cut_at_stop_words(text: str, words: Sequence[str]) -> str:
    """``text`` up to the first occurrence of each stop word in turn (MUSE's
    ``get_prefix_before_words_occur``; open-unlearning's stopwords)."""
    for word in words:
        text = text.split(word)[0]
    return text


def contains_answer(output: str, answer: str) -> bool:
    """Do the answer's normalized words appear, contiguously, in the output's?"""
    target = words(answer)
    if not target:
        raise ValueError("an expected answer needs at least one letter or digit")
    return f" {' '.join(target)} " in f" {' '.join(words(output))} "


def qa_accuracy(outputs: Sequence[str], answers: Sequence[str]) -> float:
    if len(outputs) != len(answers):
        raise ValueError(f"{len(outputs)} outputs for {len(answers)} answers")
    if not outputs:
        raise ValueError("no answers to score")
    return float(np.mean([contains_answer(o, a) for o, a in zip(outputs, answers, strict=True)]))


def mean_rouge_l(
    outputs: Sequence[str],
    references: Sequence[str],
    score: str = "recall",
    use_stemmer: bool = True,
) -> float:
    """The mean over the examples of one ROUGE-L ``score`` (``recall``, ``f1``, ``precision``)."""
    if score not in ROUGE_SCORES:
        raise ValueError(f"score must be one of {ROUGE_SCORES}, got {score!r}")
    if len(outputs) != len(references) or not outputs:
        raise ValueError(f"{len(outputs)} outputs for {len(references)} references")
    pairs = zip(outputs, references, strict=True)
    return float(np.mean([rouge_l(o, r, use_stemmer)[score] for o, r in pairs]))


def _rouge_options(ctx: AuditContext, default_score: str) -> tuple[str, bool]:
    score = str(ctx.options.get("score", default_score))
    if score not in ROUGE_SCORES:
        raise ConfigError(f"ROUGE-L option score={score!r}: known: {', '.join(ROUGE_SCORES)}")
    stemmer = ctx.options.get("stemmer", True)
    if not isinstance(stemmer, bool):
        raise ConfigError(f"ROUGE-L option stemmer must be true or false, got {stemmer!r}")
    return score, stemmer


def _variant(score: str, stemmer: bool) -> str:
    return f"ROUGE-L {score} (rouge_score, {'Porter stemmer' if stemmer else 'no stemmer'})"


# -- metrics (the model call lives in scoring.generate) ------------------------------------------


def imprint_set(ctx: AuditContext, name: str) -> list[Example]:
    """A knowledge imprint's ``forget``/``retain``/``holdout`` set or one of its ``eval_sets``."""
    from expunge.imprints.knowledge import KnowledgeImprint

    if not isinstance(ctx.imprint, KnowledgeImprint):
        raise wrong_imprint(ctx, "knowledge")
    if name in ("forget", "retain", "holdout"):
        return list(getattr(ctx.imprint, name))
    if name not in ctx.imprint.eval_sets:
        known = ", ".join(sorted(ctx.imprint.eval_sets)) or "none"
        raise ConfigError(
            f"the knowledge imprint has no eval set {name!r} (its eval sets: {known})"
        )
    return list(ctx.imprint.eval_sets[name])


def _qa_examples(ctx: AuditContext, split: str) -> list[Example]:
    examples = [e for e in imprint_set(ctx, split) if e.kind == "prompt_response"]
    if not examples:
        raise ConfigError(f"the knowledge imprint's {split} set has no prompt/response pairs")
    limit = ctx.options.get("max_examples")
    return examples[: int(limit)] if limit else examples


def generate_answers(
    ctx: AuditContext,
    key: tuple,
    examples: list[Example],
    max_new: int,
    stop: tuple[str, ...] = (),
    fmt: FormatSettings | None = None,
) -> list[str]:
    """Greedy (or ``ctx.decoding``) answers to ``examples``' prompts in the audit's format (or
    ``fmt``), cut at the first of ``stop``; cached per audit under ``key`` so metrics share one
    generation pass."""
    cache = ctx.__dict__.setdefault("_knowledge_generations", {})
    key = (*key, max_new, stop, ctx.decoding, fmt.model_dump_json() if fmt else None)
    if key not in cache:
        prompts = []
        for example in examples:
            if example.kind == "messages":  # earlier assistant turns are context, not the answer
                text = prompt_text(example, ctx.tokenizer, fmt or ctx.format)
                prompts.append(ctx.tokenizer(text, add_special_tokens=False)["input_ids"])
                continue
            tokenized = tokenize_example(example, ctx.tokenizer, fmt or ctx.format)
            prompts.append(tokenized.input_ids[: tokenized.prompt_length])
        outputs = generate(
            ctx.model, ctx.tokenizer, prompts, max_new_tokens=max_new,
            batch_size=ctx.generation_batch_size,
            progress=ctx.progress, seed=ctx.seed, **ctx.decoding.generate_kwargs(),
        )  # fmt: skip
        texts = [ctx.tokenizer.decode(o, skip_special_tokens=True) for o in outputs]
        cache[key] = [cut_at_stop_words(t, stop) for t in texts]
    return cache[key]


def _answers(ctx: AuditContext, split: str) -> tuple[list[Example], list[str]]:
    max_new = int(ctx.options.get("max_new_tokens", 32))
    examples = _qa_examples(ctx, split)
    key = (split, ctx.options.get("max_examples"))
    return examples, generate_answers(ctx, key, examples, max_new)


def rouge_per_example(outputs: Sequence[str], references: Sequence[str], stemmer: bool = True
                      ) -> list[dict[str, float]]:  # fmt: skip
    """Each pair's ROUGE-L recall and F1 and ROUGE-1 recall (open-unlearning's per-index keys)."""
    out = []
    for output, reference in zip(outputs, references, strict=True):
        rouge = rouge_l(output, reference, stemmer)
        one = _scorer1(stemmer).score(reference, output)["rouge1"]
        out.append({"rouge1_recall": one.recall, "rougeL_f1": rouge["f1"],
                    "rougeL_recall": rouge["recall"]})  # fmt: skip
    return out


@lru_cache(maxsize=2)
def _scorer1(use_stemmer: bool) -> rouge_scorer.RougeScorer:
    return rouge_scorer.RougeScorer(["rouge1"], use_stemmer=use_stemmer)


def _template(ctx: AuditContext) -> str:
    """The template the questions were asked in (``chat`` or ``raw``), for the record."""
    return resolve_template(ctx.tokenizer, ctx.format).template


def _accuracy(ctx: AuditContext, split: str) -> MetricResult:
    examples, outputs = _answers(ctx, split)
    answers = [str(e.meta.get("answer", e.response)) for e in examples]
    return MetricResult(
        name=f"{split}_qa_acc", value=qa_accuracy(outputs, answers),
        higher_is_better=split == "retain",
        details={"n_examples": len(examples), "answer_field": "meta.answer or response",
                 "decoding": ctx.decoding.describe(), "template": _template(ctx)},
    )  # fmt: skip


def _rouge(ctx: AuditContext, split: str) -> MetricResult:
    score, stemmer = _rouge_options(ctx, "recall")
    examples, outputs = _answers(ctx, split)
    references = [e.response or "" for e in examples]
    return MetricResult(
        name=f"{split}_rouge_l", value=mean_rouge_l(outputs, references, score, stemmer),
        higher_is_better=split == "retain",
        details={"n_examples": len(examples), "score": score, "stemmer": stemmer,
                 "variant": _variant(score, stemmer), "decoding": ctx.decoding.describe(),
                 "template": _template(ctx),
                 "per_example": rouge_per_example(outputs, references, stemmer)},
    )  # fmt: skip


def split_for_continuation(
    input_ids: Sequence[int], start: int, fraction: float
) -> tuple[list[int], list[int]]:
    """(prefix, continuation): the tokens from ``start`` on are cut at ``fraction`` of them."""
    if not 0 < fraction < 1:
        raise ValueError(f"prefix_fraction must be in (0, 1), got {fraction}")
    region = len(input_ids) - start
    if region < 2:
        raise ValueError("fewer than 2 tokens to split into prefix and continuation")
    cut = start + min(region - 1, max(1, round(fraction * region)))
    return list(input_ids[:cut]), list(input_ids[cut:])


def muse_verbmem(ctx: AuditContext, examples: list[Example]) -> MetricResult:
    """MUSE's VerbMem on its ``verbmem/forget`` set: continue each ``prompt`` for
    ``max_new_tokens`` (128) greedily and score it against ``gt`` cut to as many tokens (MUSE
    ``metrics/verbmem.py``; open-unlearning ``forget_verbmem_ROUGE``, ``rougeL_f1``)."""
    from expunge.data.formatting import _should_add_bos

    limit = ctx.options.get("max_examples")
    examples = examples[: int(limit)] if limit else examples
    max_new = int(ctx.options.get("max_new_tokens", 128))
    score, stemmer = _rouge_options(ctx, "f1")
    add_bos = _should_add_bos(ctx.tokenizer, ctx.format)
    prompts, truth = [], []
    for example in examples:
        ids = ctx.tokenizer(example.prompt or "", add_special_tokens=False)["input_ids"]
        prompts.append(([ctx.tokenizer.bos_token_id] if add_bos else []) + ids)
        gt = ctx.tokenizer(example.response or "", add_special_tokens=False)["input_ids"]
        truth.append(ctx.tokenizer.decode(gt[:max_new], skip_special_tokens=True))
    outputs = generate(ctx.model, ctx.tokenizer, prompts, max_new_tokens=max_new,
                       batch_size=ctx.generation_batch_size, seed=ctx.seed, progress=ctx.progress,
                       **ctx.decoding.generate_kwargs())  # fmt: skip
    generated = [ctx.tokenizer.decode(o, skip_special_tokens=True) for o in outputs]
    return MetricResult(
        name="forget_verbatim_rouge_l",
        value=mean_rouge_l(generated, truth, score, stemmer), higher_is_better=False,
        details={"n_examples": len(examples), "examples_used": "eval set verbmem_forget",
                 "max_new_tokens": max_new, "decoding": ctx.decoding.describe(),
                 "score": score, "stemmer": stemmer,
                 "variant": f"{_variant(score, stemmer)} of the continuation (MUSE VerbMem)",
                 "per_example": rouge_per_example(generated, truth, stemmer)},
    )  # fmt: skip


def forget_verbatim_rouge_l_metric(ctx: AuditContext) -> MetricResult:
    from expunge.imprints.knowledge import KnowledgeImprint

    if not isinstance(ctx.imprint, KnowledgeImprint):
        raise wrong_imprint(ctx, "knowledge")
    if ctx.imprint.eval_sets.get("verbmem_forget"):  # MUSE's own prompts and ground truths
        return muse_verbmem(ctx, ctx.imprint.eval_sets["verbmem_forget"])
    texts = [e for e in ctx.imprint.forget if e.kind == "text"]
    examples = texts or list(ctx.imprint.forget)
    limit = ctx.options.get("max_examples")
    examples = examples[: int(limit)] if limit else examples
    fraction = float(ctx.options.get("prefix_fraction", 0.5))
    score, stemmer = _rouge_options(ctx, "f1")
    prefixes, continuations = [], []
    for example in examples:
        tokenized = tokenize_example(example, ctx.tokenizer, ctx.format)
        prefix, rest = split_for_continuation(
            tokenized.input_ids, tokenized.prompt_length, fraction
        )
        prefixes.append(prefix)
        continuations.append(rest)
    # exactly as many new tokens as the true continuation has: one generate call per length
    outputs: list[list[int]] = [[] for _ in examples]
    for length in sorted({len(c) for c in continuations}):
        group = [i for i, c in enumerate(continuations) if len(c) == length]
        new = generate(ctx.model, ctx.tokenizer, [prefixes[i] for i in group],
                       max_new_tokens=length, batch_size=ctx.generation_batch_size, seed=ctx.seed,
                       **ctx.decoding.generate_kwargs())  # fmt: skip
        for i, ids in zip(group, new, strict=True):
            outputs[i] = ids
    generated = [ctx.tokenizer.decode(o, skip_special_tokens=True) for o in outputs]
    truth = [ctx.tokenizer.decode(c, skip_special_tokens=True) for c in continuations]
    return MetricResult(
        name="forget_verbatim_rouge_l",
        value=mean_rouge_l(generated, truth, score, stemmer), higher_is_better=False,
        details={"n_examples": len(examples), "prefix_fraction": fraction,
                 "examples_used": "text" if texts else "all", "decoding": ctx.decoding.describe(),
                 "score": score, "stemmer": stemmer,
                 "variant": f"{_variant(score, stemmer)} of the generated continuation"},
    )  # fmt: skip


def forget_qa_acc_metric(ctx: AuditContext) -> MetricResult:
    return _accuracy(ctx, "forget")


def retain_qa_acc_metric(ctx: AuditContext) -> MetricResult:
    return _accuracy(ctx, "retain")


def forget_rouge_l_metric(ctx: AuditContext) -> MetricResult:
    return _rouge(ctx, "forget")


def retain_rouge_l_metric(ctx: AuditContext) -> MetricResult:
    return _rouge(ctx, "retain")
