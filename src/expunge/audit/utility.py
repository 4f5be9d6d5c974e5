"""Utility metrics: what erasing cost. ``ppl`` = corpus perplexity on held-out clean text.

ONE ppl everywhere: by default the **response tokens** of the built-in held-out Q/A (the model's
answers, not its ability to predict the question), formatted in the **model's own chat
format** — in an implant's verification, an eraser's or stressor's stage audits and
``expunge audit`` alike, so the same model and data give the same number from each. Every ppl's
details say how it was measured (``span``, ``template``) and reports show it beside the value.
``options.ppl.mode=whole`` scores every token of the formatted example instead (prompt and
response — what MEraser's released code effectively measures).
"""

from __future__ import annotations

from importlib import resources

from expunge.audit.base import AuditContext, MetricResult
from expunge.audit.scoring import perplexity_from_nll, token_logprobs
from expunge.data.examples import Example
from expunge.data.formatting import resolve_template, tokenize_examples
from expunge.data.loaders import load_jsonl
from expunge.errors import ConfigError

SPANS = {"response": "response tokens", "whole": "all tokens"}  # what a ppl averages over


def builtin_heldout() -> list[Example]:
    """32 general-knowledge Q/A pairs written for expunge, never used for training."""
    path = resources.files("expunge.data") / "resources" / "heldout_qa.jsonl"
    with resources.as_file(path) as file:
        return load_jsonl(file)


def perplexity_metric(ctx: AuditContext) -> MetricResult:
    mode = ctx.options.get("mode", "response")
    if mode not in {"whole", "response"}:
        raise ConfigError(f"ppl mode must be 'whole' or 'response', got {mode!r}")
    examples = ctx.data if ctx.data is not None else builtin_heldout()
    limit = ctx.options.get("max_examples")
    if limit:
        examples = examples[: int(limit)]
    settings = resolve_template(ctx.tokenizer, ctx.format)
    settings = settings.model_copy(update={"loss_on": "all" if mode == "whole" else "response"})
    tokenized = tokenize_examples(examples, ctx.tokenizer, settings)
    scores = token_logprobs(
        ctx.model, tokenized, ctx.tokenizer.pad_token_id, region="labels",
        batch_size=ctx.batch_size, progress=ctx.progress, description="perplexity",
    )  # fmt: skip
    nll, counts = scores.nll_sums(), scores.counts()
    return MetricResult(
        name="ppl",
        value=perplexity_from_nll(nll, counts),
        higher_is_better=False,
        details={
            "mode": mode,
            "span": SPANS[mode],
            "template": settings.template,
            **({"system_prompt": True} if settings.system_prompt else {}),
            "n_examples": len(examples),
            "n_tokens": int(counts.sum()),
            "data": "builtin:heldout_qa" if ctx.data is None else "user",
            "mean_nll": float(nll.sum() / counts.sum()),
        },
    )
