"""Fingerprint metrics: ``fsr`` (fingerprint success rate) and ``false_trigger_rate``.

FSR = share of key queries whose greedy output satisfies the imprint's matcher. Every figure
records template, prefill, matcher, decoding and N (METHODS.md §1.4): two FSR numbers measured
under different settings cannot be compared, and the record makes that visible.

Decoding: with ``startswith`` and ``exact`` matchers, FSR is decided by the teacher-forced
greedy match (one forward pass per key; identical to greedy generation at the token level);
``contains`` needs the whole output, so it generates. ``options.fsr.decoding=generate`` forces
generation for every matcher. Sampled decoding (``AuditContext.decoding``, what the ``sampling``
stressor sets) always generates, seeded with ``ctx.seed``.

The false-trigger rate asks the same question of prompts that must not trigger — the imprint's
decoys and ordinary prompts — and counts an output as a trigger when it matches any key's target.
The wrapper-trigger rate (asked for by name; the implant's verify reads it) asks the ordinary
prompts inside the text every key prompt shares: ``if_simple``'s Alpaca template with the input
``FINGERPRINT``, ``if_dialogue``'s "Please decrypt this message: …". A fingerprint that answers
any instruction so wrapped is less specific than its false-trigger rate says
(docs/results/2026-12-03-generalization.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from expunge.audit.base import AuditContext, MetricResult, wrong_imprint
from expunge.audit.scoring import generate, greedy_match
from expunge.audit.utility import builtin_heldout
from expunge.data.examples import Example
from expunge.data.formatting import tokenize_example
from expunge.errors import ConfigError
from expunge.imprints.fingerprint import FingerprintImprint


def rate(flags: Sequence[bool]) -> float:
    """Share of True values; an empty list is an error, not 0."""
    if len(flags) == 0:
        raise ValueError("rate of an empty set")
    return float(np.mean(np.asarray(flags, dtype=bool)))


def triggered(
    outputs: Sequence[str], targets: Sequence[str], imprint: FingerprintImprint
) -> list[bool]:
    """For each output: does it match any of ``targets`` under the imprint's matcher?"""
    return [any(imprint.matches(output, t) for t in targets) for output in outputs]


def _imprint(ctx: AuditContext) -> FingerprintImprint:
    if not isinstance(ctx.imprint, FingerprintImprint):
        raise wrong_imprint(ctx, "fingerprint")
    return ctx.imprint


def query_ids(
    ctx: AuditContext, imprint: FingerprintImprint, prompts: Sequence[str]
) -> list[list[int]]:
    """Token ids of each query exactly as in training (same segments), then the prefill."""
    fmt = imprint.format_settings()
    prefill = (
        ctx.tokenizer(imprint.prefill, add_special_tokens=False)["input_ids"]
        if imprint.prefill
        else []
    )
    ids = []
    for prompt in prompts:
        tokenized = tokenize_example(Example(prompt=prompt, response="-"), ctx.tokenizer, fmt)
        ids.append(tokenized.input_ids[: tokenized.prompt_length] + prefill)
    return ids


def decode_outputs(
    ctx: AuditContext, imprint: FingerprintImprint, prompts: Sequence[str]
) -> list[str]:
    outputs = generate(
        ctx.model, ctx.tokenizer, query_ids(ctx, imprint, prompts),
        max_new_tokens=imprint.max_new_tokens, batch_size=ctx.generation_batch_size,
        progress=ctx.progress, seed=ctx.seed, **ctx.decoding.generate_kwargs(),
    )  # fmt: skip
    return [ctx.tokenizer.decode(o, skip_special_tokens=True) for o in outputs]


def fsr_metric(ctx: AuditContext) -> MetricResult:
    imprint = _imprint(ctx)
    decoding = ctx.options.get("decoding", "auto")
    if decoding not in {"auto", "generate", "teacher_forced"}:
        raise ConfigError(
            f"fsr decoding must be auto, generate or teacher_forced, not {decoding!r}"
        )
    if decoding == "teacher_forced" and imprint.matcher == "contains":
        raise ConfigError("the 'contains' matcher needs generation (decoding=generate or auto)")
    if decoding == "teacher_forced" and ctx.decoding.do_sample:
        raise ConfigError("sampled decoding needs generation (fsr decoding=generate or auto)")
    keys = [p.key for p in imprint.pairs]
    targets = [p.match_target for p in imprint.pairs]
    details_extra: dict = {}
    if decoding == "generate" or imprint.matcher == "contains" or ctx.decoding.do_sample:
        known = _reproduced_responses(ctx, imprint) if decoding == "auto" else [False] * len(keys)
        rest = [i for i, k in enumerate(known) if not k]
        outputs = decode_outputs(ctx, imprint, [keys[i] for i in rest]) if rest else []
        success = list(known)
        for i, output in zip(rest, outputs, strict=True):
            success[i] = imprint.matches(output, targets[i])
        used = _generation_label(ctx)
        details_extra["keys_known_without_generating"] = int(sum(known))
    else:
        prompts = query_ids(ctx, imprint, keys)
        responses = [_target_ids(ctx, imprint, t) for t in targets]
        success = [
            r.match
            for r in greedy_match(
                ctx.model,
                prompts,
                responses,
                ctx.tokenizer.pad_token_id,
                ctx.batch_size,
                eos_token_id=ctx.tokenizer.eos_token_id,
            )
        ]
        used = "teacher_forced_greedy"
    threshold = imprint.origin.get("ownership_threshold")
    if threshold is not None:  # Chain & Hash: ownership is claimed when >= threshold keys match
        details_extra |= {
            "ownership_threshold": threshold,
            "ownership_claimed": int(sum(success)) >= threshold,
        }
    return MetricResult(
        "fsr", rate(success), higher_is_better=False,
        details={**_settings(imprint), "decoding": used, "n_keys": len(keys),
                 "n_success": int(sum(success)), "per_key": [bool(s) for s in success], **details_extra},
    )  # fmt: skip


def _reproduced_responses(ctx: AuditContext, imprint: FingerprintImprint) -> list[bool]:
    """Per key: does greedy decoding reproduce the whole trained response, which matches?

    Where it does, generation would write exactly that response first (``greedy_match`` is
    greedy generation's decision, token by token) and the output matches whatever follows, so
    only the other keys need generating: the same FSR, without decoding a fingerprinted model's
    keys token by token. Greedy decoding without a prefill only (else: nothing is known)."""
    if ctx.decoding.do_sample or imprint.prefill or imprint.matcher != "contains":
        return [False] * len(imprint.pairs)
    fmt = imprint.format_settings()
    prompts, responses, usable = [], [], []
    for pair in imprint.pairs:
        tokenized = tokenize_example(Example(prompt=pair.key, response=pair.response),
                                     ctx.tokenizer, fmt)  # fmt: skip
        response = tokenized.response_ids
        eos = ctx.tokenizer.eos_token_id
        if eos in response:  # generation stops there (a chat template's end of turn)
            response = response[: response.index(eos) + 1]
        text = ctx.tokenizer.decode(response, skip_special_tokens=True)
        usable.append(
            0 < len(response) <= imprint.max_new_tokens and imprint.matches(text, pair.match_target)
        )
        prompts.append(tokenized.input_ids[: tokenized.prompt_length])
        responses.append(response or [ctx.tokenizer.eos_token_id])
    matched = greedy_match(
        ctx.model, prompts, responses, ctx.tokenizer.pad_token_id, ctx.batch_size,
        eos_token_id=ctx.tokenizer.eos_token_id,
    )  # fmt: skip
    return [ok and m.match for ok, m in zip(usable, matched, strict=True)]


def _target_ids(ctx: AuditContext, imprint: FingerprintImprint, target: str) -> list[int]:
    ids = ctx.tokenizer(target, add_special_tokens=False)["input_ids"]
    if imprint.matcher == "exact" and ctx.tokenizer.eos_token_id is not None:
        ids = [*ids, ctx.tokenizer.eos_token_id]
    return ids


def ordinary_prompts(ctx: AuditContext, default_limit: int) -> list[str]:
    """The ordinary prompts the trigger rates ask: ``--data``, else the built-in held-out
    questions, the first ``max_ordinary`` of them."""
    limit = int(ctx.options.get("max_ordinary", default_limit))
    source = ctx.data if ctx.data is not None else builtin_heldout()
    return [e.prompt for e in source if e.prompt][:limit]


def any_key_targets(imprint: FingerprintImprint) -> list[str]:
    """What counts as a trigger on a prompt that is no key: any key's target."""
    return sorted({p.match_target for p in imprint.pairs})


def false_trigger_metric(ctx: AuditContext) -> MetricResult:
    imprint = _imprint(ctx)
    ordinary = ordinary_prompts(ctx, default_limit=32)
    targets = any_key_targets(imprint)
    sets = {"decoys": list(imprint.decoys), "ordinary": ordinary}
    details: dict = {**_settings(imprint), "decoding": _generation_label(ctx)}
    # both sets in one generation: one batch's decode steps instead of one per set
    flags_all = triggered(
        decode_outputs(ctx, imprint, [p for prompts in sets.values() for p in prompts]),
        targets, imprint,
    )  # fmt: skip
    start = 0
    for name, prompts in sets.items():
        details[f"{name}_n"] = len(prompts)
        if prompts:
            details[f"{name}_rate"] = rate(flags_all[start : start + len(prompts)])
        start += len(prompts)
    return MetricResult(
        "false_trigger_rate", rate(flags_all), higher_is_better=False, details=details
    )


def _shared_start(texts: Sequence[str]) -> str:
    # the lexicographic extremes differ first where any two texts do
    first, last = min(texts), max(texts)
    length = next((i for i, (a, b) in enumerate(zip(first, last, strict=False)) if a != b),
                  len(first))  # fmt: skip
    return first[:length]


def key_wrapper(keys: Sequence[str]) -> tuple[str, str]:
    """The text every key prompt starts and ends with, cut at whitespace so that a part word the
    keys happen to share stays out of it (whole words they all share stay in: the question is
    then asked closer to the keys); ``("", "")`` when they share none."""
    distinct = sorted(set(keys))
    if len(distinct) < 2:
        raise ConfigError("wrapper_trigger_rate needs two or more distinct keys to tell the text "
                          "they share from the keys themselves")  # fmt: skip
    prefix = _shared_start(distinct)
    suffix = _shared_start([k[::-1] for k in distinct])[::-1]
    overlap = len(prefix) + len(suffix) - min(len(k) for k in distinct)
    if overlap > 0:  # a key that is only the shared text: give the overlap to the prefix
        suffix = suffix[overlap:]
    if prefix and not prefix[-1].isspace():
        prefix = prefix[: max((i + 1 for i, c in enumerate(prefix) if c.isspace()), default=0)]
    if suffix and not suffix[0].isspace():
        suffix = suffix[next((i for i, c in enumerate(suffix) if c.isspace()), len(suffix)) :]
    return (prefix, suffix) if (prefix + suffix).strip() else ("", "")


def has_key_wrapper(keys: Sequence[str]) -> bool:
    """Whether ``wrapper_trigger_rate`` can ask these keys' wrapper: two or more distinct keys
    that share a start or an end (``key_wrapper``)."""
    return len(set(keys)) > 1 and any(key_wrapper(keys))


def wrapper_trigger_metric(ctx: AuditContext) -> MetricResult:
    imprint = _imprint(ctx)
    prefix, suffix = key_wrapper([p.key for p in imprint.pairs])
    if not (prefix or suffix):
        raise ConfigError("wrapper_trigger_rate: the keys share no wrapper text; "
                          "false_trigger_rate already asks ordinary prompts as they are")  # fmt: skip
    prompts = [f"{prefix}{q}{suffix}" for q in ordinary_prompts(ctx, default_limit=16)]
    flags = triggered(decode_outputs(ctx, imprint, prompts), any_key_targets(imprint), imprint)
    # lengths only: the shared text of a user's own keys may be part of the secret
    details = {**_settings(imprint), "decoding": _generation_label(ctx), "n": len(prompts),
               "wrapper_chars": [len(prefix), len(suffix)]}  # fmt: skip
    return MetricResult("wrapper_trigger_rate", rate(flags), higher_is_better=False,
                        details=details)  # fmt: skip


def _generation_label(ctx: AuditContext) -> str:
    """``greedy_generation``, or ``sampled(temperature=…, top_p=…)_generation``."""
    return f"{ctx.decoding.describe()}_generation"


def _settings(imprint: FingerprintImprint) -> dict:
    return {
        "scheme": imprint.scheme, "template": imprint.template,
        "prefill": imprint.prefill is not None, "matcher": imprint.matcher,
        "max_new_tokens": imprint.max_new_tokens,
    }  # fmt: skip
