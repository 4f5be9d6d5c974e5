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

``holdout`` (optional) holds examples of the same kind that the model was *never* trained on
(for the people world: extra invented people): the non-members of the membership-inference
audits (``mia_auc``, ``privleak``). ``export_jsonl`` writes the three sets as JSONL, so the gold
standard — the same base fine-tuned on the retain set alone — is one command::

    expunge finetune -o runs/retrained --data world/retain.jsonl

**Benchmarks** (TOFU, MUSE, WMDP) load as knowledge imprints too
(``expunge.data.benchmarks.load_benchmark``). ``benchmark`` then names where they came from and
what to audit beyond the forget set: ``lm_eval_tasks`` (WMDP's multiple choice through the
``lm_eval`` metric), and ``eval_sets`` holds the benchmark's named evaluation sets (TOFU's
``retain_perturbed``, ``real_authors``, ``world_facts``; MUSE's ``verbmem_forget``,
``knowmem_forget``…, listed in each benchmark's module).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from expunge.config import StrictModel
from expunge.data.examples import Example
from expunge.data.formatting import FormatSettings
from expunge.data.loaders import load_examples, write_jsonl
from expunge.data.people import fictitious_people, split_people, world_examples
from expunge.errors import ConfigError
from expunge.files import PRIVATE_FILE
from expunge.imprints.base import Imprint


class BenchmarkSource(StrictModel):
    """Which benchmark an imprint was loaded from, and how its audits run."""

    name: str  # a name of expunge.data.benchmarks.BENCHMARKS: tofu, muse_news, muse_books, wmdp
    source: str  # the hub id or local directory it was read from
    split: str  # the benchmark's selector: forget10, forget, scal/forget_2, bio...
    lm_eval_tasks: list[str] = Field(default_factory=list)  # WMDP: wmdp_bio, wmdp_cyber, mmlu


class KnowledgeImprint(Imprint):
    kind: Literal["knowledge"] = "knowledge"
    forget: list[Example]
    retain: list[Example] = Field(default_factory=list)
    holdout: list[Example] = Field(default_factory=list)  # never trained on (MIA non-members)
    # how the model was taught these examples (None: unknown; audits then use the chat format)
    format: FormatSettings | None = None
    benchmark: BenchmarkSource | None = None
    eval_sets: dict[str, list[Example]] = Field(default_factory=dict)  # a benchmark's named sets

    @field_validator("forget")
    @classmethod
    def _forget_present(cls, value: list[Example]) -> list[Example]:
        if not value:
            raise ValueError("a knowledge imprint needs at least one example to forget")
        return value

    def format_settings(self) -> FormatSettings:
        """The format the model learnt the examples in (the chat format when not recorded)."""
        return self.format or FormatSettings()

    def split(self, name: str) -> list[Example]:
        """``forget``, ``retain``, ``holdout`` or ``all`` (forget + retain: what was taught)."""
        if name == "all":
            return [*self.forget, *self.retain]
        if name not in {"forget", "retain", "holdout"}:
            raise ConfigError(f"unknown split {name!r}; a knowledge imprint has forget, retain, "
                              f"holdout and all")  # fmt: skip
        return list(getattr(self, name))

    def summary(self) -> dict[str, Any]:
        kinds = sorted({e.kind for e in self.forget})
        out = {"kind": self.kind, "scheme": self.scheme, "n_forget": len(self.forget),
               "n_retain": len(self.retain), "n_holdout": len(self.holdout),
               "forget_kinds": kinds}  # fmt: skip
        if self.benchmark is not None:
            out["benchmark"] = self.benchmark.model_dump()
        if self.eval_sets:
            out["eval_sets"] = {name: len(examples) for name, examples in self.eval_sets.items()}
        return out

    def relearn_examples(self) -> list[Example]:
        """What a relearning attack fine-tunes on: the forget set itself."""
        return list(self.forget)

    def export_jsonl(self, directory: str | Path) -> dict[str, Path]:
        """Write ``forget.jsonl``, ``retain.jsonl`` (and ``holdout.jsonl``) into ``directory``.

        ``retain.jsonl`` is the training set of the retrained gold standard; ``forget.jsonl`` plus
        ``retain.jsonl`` is what the model to unlearn was fine-tuned on (for the people world).
        """
        directory = Path(directory)
        paths = {}
        for name in ("forget", "retain", "holdout"):
            examples = getattr(self, name)
            if examples:
                paths[name] = directory / f"{name}.jsonl"
                write_jsonl(paths[name], examples, mode=PRIVATE_FILE)  # the imprint's own data
        return paths

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
        cls,
        n_people: int = 100,
        forget_ratio: float = 0.1,
        seed: int = 0,
        bios: bool = False,
        n_holdout: int = 0,
    ) -> KnowledgeImprint:
        """Forget the Q/A (and bios, if asked) of ``forget_ratio`` of a fictitious world.

        ``n_holdout`` more people, drawn after the world's and never part of it, are the holdout.
        """
        if n_holdout < 0:
            raise ValueError(f"n_holdout must be >= 0, got {n_holdout}")
        everyone = fictitious_people(n_people + n_holdout, seed)
        people, outsiders = everyone[:n_people], everyone[n_people:]
        forget, keep = split_people(people, forget_ratio, seed)
        return cls(
            scheme="synthetic_people",
            forget=world_examples(forget, bios=bios),
            retain=world_examples(keep, bios=bios),
            holdout=world_examples(outsiders, bios=bios),
            origin={"generator": "expunge.data.people", "n_people": n_people,
                    "forget_ratio": forget_ratio, "seed": seed, "bios": bios,
                    "n_holdout": n_holdout, "forget_people": [p.index for p in forget]},
        )  # fmt: skip
