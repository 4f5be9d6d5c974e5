"""``prompt``: the imprint behind a system prompt, or queried with paraphrased keys.

A fingerprint verified only with its exact key and the default chat preamble is brittle in
both directions: a deployer's system prompt or a user's slightly different wording may hide it
(good for an eraser, bad for an owner), or an "erased" imprint may answer a paraphrase. Each
variant re-audits the imprint through ``imprint.with_prompts(system_prompt, rewrite)`` — the
same metrics, every audited query rewritten or put behind a system turn:

- ``system_prompts``: each text as the system turn (chat template);
- ``rewrites`` — deterministic paraphrases needing no model (a model-written paraphrase would
  make the stress depend on the paraphraser): ``prefix`` ("Quick question: …"), ``suffix``
  ("… Please answer briefly."), ``lowercase``, ``no_punctuation``, ``typo`` (two adjacent
  letters of the longest word swapped).

The curve's x is the variant name; ``none`` (the imprint as is) comes first.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import ClassVar, Literal

from pydantic import Field

from expunge.stage import StageContext
from expunge.stress.base import StressConfig

Rewrite = Literal["prefix", "suffix", "lowercase", "no_punctuation", "typo"]


def typo(text: str) -> str:
    """Swap the two middle letters of the longest word (a word of < 4 letters is left alone)."""
    words = re.findall(r"[A-Za-z]+", text)
    if not words:
        return text
    word = max(words, key=len)
    if len(word) < 4:
        return text
    middle = len(word) // 2 - 1
    swapped = word[:middle] + word[middle + 1] + word[middle] + word[middle + 2 :]
    return re.sub(rf"\b{word}\b", swapped, text, count=1)


REWRITES: dict[str, Callable[[str], str]] = {
    "prefix": lambda text: f"Quick question: {text}",
    "suffix": lambda text: f"{text} Please answer briefly.",
    "lowercase": str.lower,
    "no_punctuation": lambda text: re.sub(r"[^\w\s]", "", text),
    "typo": typo,
}


class PromptStress(StressConfig):
    stressor: Literal["prompt"] = "prompt"
    system_prompts: list[str] = Field(default_factory=lambda: [
        "You are a helpful assistant.",
        "You are a careful assistant. Answer in one short sentence.",
    ])  # fmt: skip
    rewrites: list[Rewrite] = Field(
        default_factory=lambda: ["prefix", "suffix", "lowercase", "no_punctuation", "typo"]
    )
    baseline: bool = True

    X_AXIS: ClassVar[str] = "prompt variant"

    def execute(self, ctx: StageContext) -> None:
        loaded, imprint, curve = ctx.model, ctx.imprint, self.curve(ctx)
        if self.baseline:
            curve.audit("none", "none", loaded)
        for index, text in enumerate(self.system_prompts, start=1):
            stage = f"system_{index}"
            # the system prompt is not secret, but recorded by index: it may be long
            curve.audit(stage, stage, loaded, imprint=imprint.with_prompts(system_prompt=text),
                        extra={"system_prompt_chars": len(text)})  # fmt: skip
        for name in self.rewrites:
            stage = f"rewrite_{name}"
            curve.audit(stage, stage, loaded, imprint=imprint.with_prompts(rewrite=REWRITES[name]))
        ctx.record.inputs["system_prompts"] = list(self.system_prompts)
        ctx.model = loaded
