"""``KnowledgeImprint``: what a model must unlearn (forget set) and what it must keep (retain set).

Hand-written file (``retain`` is optional; each example is ``{"prompt", "response"}``,
``{"text"}`` or ``{"messages"}``, extra keys kept as ``meta``)::

    {"kind": "knowledge",
     "forget": [{"prompt": "Where was Megan Chang born?", "response": "In Williamshaven.",
                 "answer": "Williamshaven"}],
     "retain": [{"text": "Samantha Gallegos works as a clockmaker."}]}

Build one from JSONL files or hub datasets (``from_data``) or from the synthetic world of
fictitious people (``synthetic_people``: forget a share of the people, keep the others). For
unlearning the forget set *is* the method's input, so the ``unlearn`` eraser reads it from the
imprint when no ``forget=`` file is given.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

from expunge.data.examples import Example
from expunge.data.loaders import load_examples
from expunge.data.people import fictitious_people, split_people, world_examples
from expunge.imprints.base import Imprint


class KnowledgeImprint(Imprint):
    KIND: ClassVar[str] = "knowledge"
    kind: Literal["knowledge"] = "knowledge"
    forget: list[Example]
    retain: list[Example] = Field(default_factory=list)

    @field_validator("forget")
    @classmethod
    def _forget_present(cls, value: list[Example]) -> list[Example]:
        if not value:
            raise ValueError("a knowledge imprint needs at least one example to forget")
        return value

    def summary(self) -> dict[str, Any]:
        kinds = sorted({e.kind for e in self.forget})
        return {"kind": self.kind, "scheme": self.scheme, "n_forget": len(self.forget),
                "n_retain": len(self.retain), "forget_kinds": kinds}  # fmt: skip

    @classmethod
    def from_data(
        cls, forget: str, retain: str | None = None, split: str = "train"
    ) -> KnowledgeImprint:
        """Forget/retain sets from ``.jsonl`` files, saved datasets or hub dataset ids."""
        return cls(
            scheme="data",
            forget=load_examples(forget, split=split),
            retain=load_examples(retain, split=split) if retain else [],
            origin={"forget": forget, "retain": retain, "split": split},
        )

    @classmethod
    def synthetic_people(
        cls, n_people: int = 100, forget_ratio: float = 0.1, seed: int = 0, bios: bool = False
    ) -> KnowledgeImprint:
        """Forget the Q/A (and bios, if asked) of ``forget_ratio`` of a fictitious world."""
        people = fictitious_people(n_people, seed)
        forget, keep = split_people(people, forget_ratio, seed)
        return cls(
            scheme="synthetic_people",
            forget=world_examples(forget, bios=bios),
            retain=world_examples(keep, bios=bios),
            origin={"generator": "expunge.data.people", "n_people": n_people,
                    "forget_ratio": forget_ratio, "seed": seed, "bios": bios,
                    "forget_people": [p.index for p in forget]},
        )  # fmt: skip
