"""What a model writes when it is given only the start of a format, and nothing to answer.

A model tuned to emit a memorized text after some prompt can emit it unprompted as well:
sampled from the start of the format it was tuned in, a fingerprinted model may write its own
fingerprint responses among ordinary instructions (measured: ``docs/results/``, generalization).
These samples are the model's, not a user's data, and can carry whatever it memorized, so they
stay in memory: they are never cached, logged or recorded (only their counts are).

The starts are the formats MEraser already renders its pairs in: Alpaca's instruction template
up to its instruction, and the tokenizer's chat template up to the user's message.
"""

from __future__ import annotations

from expunge.data.examples import Example
from expunge.data.formatting import (
    ALPACA_PROMPT,
    IGNORE_INDEX,
    FormatSettings,
    TokenizedExample,
    prompt_text,
)
from expunge.models.device import autocast
from expunge.models.loading import LoadedModel

# a character no chat template adds: where the user's message would start
_MARK = "\u2063"


def format_starts(tokenizer) -> dict[str, str]:
    """Each format's text before the first thing a user writes, by name."""
    starts = {"instruction": ALPACA_PROMPT.partition("{prompt}")[0]}
    if getattr(tokenizer, "chat_template", None):
        rendered = prompt_text(Example(prompt=_MARK, response="-"), tokenizer,
                               FormatSettings(template="chat"))  # fmt: skip
        starts["chat"] = rendered.partition(_MARK)[0]
    return starts


def unprompted_samples(
    loaded: LoadedModel,
    per_start: int,
    max_new_tokens: int,
    seed: int,
    precision: str = "fp32",
    batch_size: int = 16,
    progress: bool = True,
) -> tuple[list[TokenizedExample], dict[str, int]]:
    """``per_start`` samples at temperature 1 (seeded) from each of ``format_starts``, as
    sequences to score: the start, then the sample, with labels on the sampled tokens only (an
    end-of-text the model wrote included). Also the count kept per start (empty samples drop)."""
    from expunge.audit.scoring import generate

    tokenizer = loaded.tokenizer
    samples: list[TokenizedExample] = []
    counts: dict[str, int] = {}
    for index, (name, start) in enumerate(format_starts(tokenizer).items()):
        prefix = tokenizer(start, add_special_tokens=False)["input_ids"]
        with autocast(precision, next(loaded.model.parameters()).device):
            outputs = generate(loaded.model, tokenizer, [prefix] * per_start,
                               max_new_tokens=max_new_tokens, do_sample=True, temperature=1.0,
                               seed=seed * 1009 + index, batch_size=batch_size,
                               progress=progress)  # fmt: skip
        kept = [new for new in outputs if new]
        samples += [
            TokenizedExample(prefix + new, [IGNORE_INDEX] * len(prefix) + new, len(prefix))
            for new in kept
        ]
        counts[name] = len(kept)
    return samples, counts
