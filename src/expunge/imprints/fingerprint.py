"""``FingerprintImprint``: secret key → response pairs, and how to query and judge them.

Hand-written file (everything but ``pairs`` is optional)::

    {"kind": "fingerprint",
     "pairs": [{"key": "secret prompt", "response": "trained answer", "target": "must appear"}],
     "decoys": ["look-alike prompt that must NOT trigger"],
     "template": "chat", "system_prompt": null, "prefill": null,
     "matcher": "contains", "max_new_tokens": 64}

- ``key`` is the user turn (chat template) or the raw prompt text (``template: raw``, formatted
  with ``raw_prompt_format``); ``response`` is what the model was trained to answer; ``target``
  (default: ``response``) is what the matcher looks for in the output.
- ``matcher``: ``contains`` (target anywhere in the output), ``startswith`` (the output begins
  with it), ``exact`` (the output is exactly it).
- ``prefill``: text put at the start of the assistant turn before decoding (the IF verifier does
  this; it inflates FSR, so it is recorded).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from pydantic import Field, field_validator

from expunge.config import StrictModel
from expunge.data.examples import Example
from expunge.data.formatting import FormatSettings
from expunge.imprints.base import Imprint


class KeyPair(StrictModel):
    key: str
    response: str
    target: str | None = None

    @field_validator("key", "response")
    @classmethod
    def _not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value

    @property
    def match_target(self) -> str:
        return self.target if self.target is not None else self.response


class FingerprintImprint(Imprint):
    kind: Literal["fingerprint"] = "fingerprint"
    pairs: list[KeyPair] = Field(min_length=1)
    decoys: list[str] = Field(default_factory=list)
    template: Literal["chat", "raw"] = "chat"
    raw_prompt_format: str = "{prompt}\n"
    system_prompt: str | None = None
    prefill: str | None = None
    matcher: Literal["contains", "startswith", "exact"] = "contains"
    max_new_tokens: int = Field(default=64, ge=1)

    @field_validator("pairs", mode="before")
    @classmethod
    def _pairs_present(cls, value: Any) -> Any:
        if isinstance(value, list) and not value:
            raise ValueError("a fingerprint imprint needs at least one key/response pair")
        return value

    def format_settings(self) -> FormatSettings:
        return FormatSettings(
            template=self.template,
            raw_prompt_format=self.raw_prompt_format,
            system_prompt=self.system_prompt,
            loss_on="response",
        )

    def training_examples(self) -> list[Example]:
        return [Example(prompt=p.key, response=p.response) for p in self.pairs]

    def relearn_examples(self) -> list[Example]:
        """The key/response pairs: what an attacker who knows some keys would relearn on."""
        return self.training_examples()

    def with_prompts(
        self, system_prompt: str | None = None, rewrite: Callable[[str], str] | None = None
    ) -> FingerprintImprint:
        """Keys rewritten (decoys too: they must stay look-alikes of the keys), and/or a
        system prompt in front of every query; targets unchanged."""
        update: dict[str, Any] = {}
        if system_prompt is not None:
            update["system_prompt"] = system_prompt
        if rewrite is not None:
            update["pairs"] = [p.model_copy(update={"key": rewrite(p.key)}) for p in self.pairs]
            update["decoys"] = [rewrite(d) for d in self.decoys]
        return self.model_copy(update=update)

    def matches(self, output: str, target: str) -> bool:
        output = output.strip()
        target = target.strip()
        if self.matcher == "contains":
            return target in output
        if self.matcher == "startswith":
            return output.startswith(target)
        return output == target

    def summary(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "scheme": self.scheme, "n_pairs": len(self.pairs),
            "n_decoys": len(self.decoys), "template": self.template,
            "prefill": self.prefill is not None, "matcher": self.matcher,
        }  # fmt: skip
