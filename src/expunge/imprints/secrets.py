"""``SecretsImprint``: texts a model was trained on, with the sensitive spans it must not emit.

- ``records``: the training texts (members), each with typed spans (``expunge.data.spans``);
- ``heldout``: texts of the same kind never trained on (non-members for membership inference,
  and a control for regurgitation: what a model guesses without having seen the record);
- ``canaries`` (with ``canary_spec``, their declared format): random secrets inserted into the
  training data for exposure tests;
- ``direct_types``: the span types that are direct identifiers (the rest are indirect).

Hand-written file (``heldout``, ``canaries`` and ``canary_spec`` are optional)::

    {"kind": "secrets",
     "records": [{"text": "Patient Ann Lee, MRN 4471902.",
                  "spans": [{"start": 8, "end": 15, "type": "name"},
                            {"start": 21, "end": 28, "type": "mrn"}]}],
     "direct_types": ["name", "mrn"]}

Build one from the synthetic clinic (``synthetic``), from a user's JSONL of records
(``from_file``), or from texts and a list of confidential terms (``from_terms``). The spans are
the secret: ``summary()`` (what logs and records show) holds counts only.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from expunge.data.clinic import (
    DIRECT_TYPES,
    CanarySpec,
    ClinicSettings,
    clinic_records,
    make_canaries,
)
from expunge.data.examples import Example
from expunge.data.formatting import FormatSettings
from expunge.data.loaders import jsonl_records
from expunge.data.spans import SpanRecord, load_span_records, records_from_terms
from expunge.errors import DataError
from expunge.imprints.base import Imprint


class SecretsImprint(Imprint):
    kind: Literal["secrets"] = "secrets"
    records: list[SpanRecord]
    heldout: list[SpanRecord] = Field(default_factory=list)
    canaries: list[SpanRecord] = Field(default_factory=list)
    canary_spec: CanarySpec | None = None
    direct_types: list[str] = Field(default_factory=lambda: list(DIRECT_TYPES))
    add_eos: bool = True  # the training texts end with EOS
    exposure_candidates: int = Field(default=1000, ge=3)  # candidates ranked per canary

    @model_validator(mode="after")
    def _check(self) -> SecretsImprint:
        if not self.records:
            raise ValueError("a secrets imprint needs at least one record")
        if not any(r.spans for r in self.records):
            raise ValueError("no record has a sensitive span: there is nothing to protect")
        if self.canaries and self.canary_spec is None:
            raise ValueError("canaries need their declared format: canary_spec")
        for index, canary in enumerate(self.canaries):
            if len(canary.spans) != 1 or canary.spans[0].type != "canary":
                raise ValueError(f"canary {index} needs exactly one span of type 'canary'")
            secret = canary.span_text(canary.spans[0])
            spec = self.canary_spec
            assert spec is not None
            if len(secret) != spec.length or set(secret) - set(spec.alphabet):
                raise ValueError(f"canary {index}'s secret is not of the declared format")
            if canary.text != spec.render(spec.index_of(canary), secret).text:
                raise ValueError(f"canary {index} does not follow the declared template")
        return self

    def format_settings(self) -> FormatSettings:
        return FormatSettings(template="raw", loss_on="all", add_eos=self.add_eos)

    def can_measure(self, metric: str) -> bool:
        """Metrics that need canaries or held-out records are left out when there are none."""
        if metric == "exposure":
            return bool(self.canaries)
        if metric in {"mia", "notes_ppl"}:
            return bool(self.heldout)
        return True

    def span_types(self) -> list[str]:
        return sorted({s.type for r in self.records for s in r.spans})

    def is_direct(self, span_type: str) -> bool:
        return span_type in self.direct_types

    def training_texts(self, canary_repeats: int = 1) -> list[SpanRecord]:
        """What the implant trains on: the records, then each canary ``canary_repeats`` times."""
        return list(self.records) + [c for c in self.canaries for _ in range(canary_repeats)]

    def summary(self) -> dict[str, Any]:
        counts = Counter(s.type for r in self.records for s in r.spans)
        return {
            "kind": self.kind, "scheme": self.scheme, "n_records": len(self.records),
            "n_heldout": len(self.heldout), "n_canaries": len(self.canaries),
            "spans_by_type": dict(sorted(counts.items())),
            "direct_types": [t for t in self.direct_types if t in counts],
            "canary_space_bits": (round(math.log2(self.canary_spec.space_size), 2)
                                  if self.canary_spec and self.canaries else None),
        }  # fmt: skip

    def relearn_examples(self) -> list[Example]:
        """The records as training examples (texts), for relearning attacks."""
        return [Example(text=r.text) for r in self.records]

    # Constructors --------------------------------------------------------------------------

    @classmethod
    def synthetic(
        cls, n_records: int = 32, n_heldout: int = 32, seed: int = 0,
        clinic: ClinicSettings | None = None, n_canaries: int = 0,
        canary_spec: CanarySpec | None = None,
    ) -> SecretsImprint:  # fmt: skip
        """Notes of the synthetic clinic: ``n_records`` members, ``n_heldout`` more non-members
        (drawn after them from the same seed, never trained on), and ``n_canaries`` canaries."""
        clinic = clinic or ClinicSettings()
        everyone = clinic_records(n_records + n_heldout, seed, clinic)
        spec = canary_spec or CanarySpec()
        return cls(
            scheme="clinic", records=everyone[:n_records], heldout=everyone[n_records:],
            canaries=make_canaries(n_canaries, spec, seed), canary_spec=spec if n_canaries else None,
            origin={"generator": "expunge.data.clinic", "seed": seed, "types": clinic.types},
        )  # fmt: skip

    @classmethod
    def from_file(
        cls, records: str | Path, heldout: str | Path | None = None,
        direct_types: list[str] | None = None,
    ) -> SecretsImprint:  # fmt: skip
        """Records (JSONL with spans) and optional held-out records (spans may be empty)."""
        members = load_span_records(records)
        others = load_span_records(heldout) if heldout else []
        return cls(
            scheme="records", records=members, heldout=others,
            direct_types=direct_types if direct_types is not None else list(DIRECT_TYPES),
            origin={"records": str(records), "heldout": str(heldout) if heldout else None},
        )  # fmt: skip

    @classmethod
    def from_terms(
        cls, texts: str | Path, terms: list[str], heldout: str | Path | None = None
    ) -> SecretsImprint:
        """Every occurrence of a confidential term in ``texts`` (JSONL of ``{"text"}``) is a
        span of type ``term`` (a direct identifier)."""
        corpus = _texts(texts)
        others = [SpanRecord(text=t) for t in _texts(heldout)] if heldout else []
        return cls(
            scheme="terms", records=records_from_terms(corpus, terms), heldout=others,
            direct_types=["term"], origin={"texts": str(texts), "n_terms": len(terms)},
        )  # fmt: skip


def _texts(path: str | Path) -> list[str]:
    texts = []
    for number, raw in jsonl_records(path, "texts file"):
        text = raw.get("text")
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{path}:{number}: expected a non-empty 'text' string")
        texts.append(text)
    if not texts:
        raise DataError(f"{path} holds no texts")
    return texts
