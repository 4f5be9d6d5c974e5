"""A synthetic clinic: short patient notes with typed sensitive spans, and canaries.

Each note opens with the patient's name and lists the chosen attributes as clauses in a seeded
order, e.g.::

    Patient Megan Chang, SSN 518-22-9043, treated for Fabry disease, MRN 482719,
    works at Ortiz-Hale, from Port Jessica.

Every attribute value is a span with its type. **Direct identifiers** single a person out on
their own (``name``, ``dob``, ``mrn``, ``ssn``, ``phone``, ``address``, ``email``); **indirect**
ones do in combination (``visit_date``, ``town``, ``condition`` — rare diseases —,
``employer``). Values come from Faker (seeded), except the formats we declare ourselves: MRN =
``mrn_digits`` digits, phone = NANP ``(NXX) NXX-XXXX``, dates ISO ``YYYY-MM-DD``.

Canaries (Carlini et al., "The Secret Sharer", USENIX Security 2019) are sentences of a declared
format with a random secret drawn uniformly from ``alphabet^length``, e.g.
``"Canary 1: the vault code is 482915."``; the candidate space is every such secret, so a
canary's rank among candidates, and its exposure, are well defined.

Deterministic under ``seed`` for a given Faker version (recorded in every run record).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pydantic import Field, field_validator

from expunge.config import StrictModel
from expunge.data.spans import Span, SpanRecord
from expunge.errors import ConfigError
from expunge.lazy import lazy

if TYPE_CHECKING:
    from faker import Faker

faker = lazy("faker")  # ~0.3 s to import: loaded when data is generated (expunge.lazy)

DIRECT_TYPES = ("name", "dob", "mrn", "ssn", "phone", "address", "email")
INDIRECT_TYPES = ("visit_date", "town", "condition", "employer")
ALL_TYPES = DIRECT_TYPES + INDIRECT_TYPES

RARE_CONDITIONS = (
    "Fabry disease", "Gaucher disease", "Pompe disease", "Wilson disease", "acromegaly",
    "Castleman disease", "Takayasu arteritis", "Addison disease", "Marfan syndrome",
    "myasthenia gravis", "pheochromocytoma", "sarcoidosis", "Kikuchi disease",
    "Erdheim-Chester disease", "Huntington disease", "porphyria",
)  # fmt: skip
CLAUSES = {
    "dob": "born {}",
    "mrn": "MRN {}",
    "ssn": "SSN {}",
    "phone": "phone {}",
    "address": "lives at {}",
    "email": "email {}",
    "visit_date": "seen on {}",
    "town": "from {}",
    "condition": "treated for {}",
    "employer": "works at {}",
}
OPENERS = ("Patient", "Clinic note for", "Record of")


class ClinicSettings(StrictModel):
    """What a synthetic note holds (``name`` is always there: it opens the note)."""

    types: list[str] = Field(default_factory=lambda: [t for t in ALL_TYPES if t != "name"])
    mrn_digits: int = Field(default=7, ge=4, le=12)
    locale: str = "en_US"

    @field_validator("types")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        unknown = [t for t in value if t not in ALL_TYPES]
        if unknown:
            raise ValueError(f"unknown span types {unknown}; known: {list(ALL_TYPES)}")
        return [t for t in dict.fromkeys(value) if t != "name"]


def _values(fake: Faker, rng: random.Random, settings: ClinicSettings) -> dict[str, str]:
    first = str(rng.randint(2, 9))
    return {
        "name": fake.name(),
        "dob": fake.date_of_birth(minimum_age=18, maximum_age=90).isoformat(),
        "mrn": "".join(str(rng.randint(0, 9)) for _ in range(settings.mrn_digits)),
        "ssn": fake.ssn(),
        "phone": f"({first}{rng.randint(0, 9)}{rng.randint(0, 9)}) "
        f"{rng.randint(2, 9)}{rng.randint(0, 9)}{rng.randint(0, 9)}-{rng.randint(0, 9999):04d}",
        "address": fake.street_address(),
        "email": fake.email(),
        "visit_date": fake.date_between(start_date="-2y", end_date="today").isoformat(),
        "town": fake.city(),
        "condition": rng.choice(RARE_CONDITIONS),
        "employer": fake.company(),
    }


def clinic_records(
    n: int, seed: int = 0, settings: ClinicSettings | None = None
) -> list[SpanRecord]:
    """``n`` patient notes; the same ``seed`` gives the same notes."""
    if n < 1:
        raise ConfigError(f"n must be >= 1, got {n}")
    settings = settings or ClinicSettings()
    fake = faker.Faker(settings.locale)
    fake.seed_instance(seed)
    rng = random.Random(seed)
    records = []
    for _ in range(n):
        values = _values(fake, rng, settings)
        order = list(settings.types)
        rng.shuffle(order)
        text = f"{rng.choice(OPENERS)} "
        spans = [Span(start=len(text), end=len(text) + len(values["name"]), type="name")]
        text += values["name"]
        for kind in order:
            prefix, _, suffix = CLAUSES[kind].partition("{}")
            text += ", " + prefix
            spans.append(Span(start=len(text), end=len(text) + len(values[kind]), type=kind))
            text += values[kind] + suffix
        records.append(SpanRecord(text=text + ".", spans=spans))
    return records


class CanarySpec(StrictModel):
    """A declared canary format: ``template`` with ``{index}`` and ``{secret}``."""

    template: str = "Canary {index}: the vault code is {secret}."
    alphabet: str = "0123456789"
    length: int = Field(default=6, ge=1, le=32)

    @field_validator("template")
    @classmethod
    def _placeholders(cls, value: str) -> str:
        if value.count("{secret}") != 1:
            raise ValueError("the canary template needs exactly one '{secret}'")
        try:
            value.format(index=0, secret="")
        except (KeyError, IndexError, ValueError) as err:
            raise ValueError(f"bad canary template: {err}") from None
        return value

    @field_validator("alphabet")
    @classmethod
    def _alphabet(cls, value: str) -> str:
        if len(set(value)) != len(value) or len(value) < 2:
            raise ValueError("the canary alphabet needs at least 2 distinct characters")
        return value

    @property
    def space_size(self) -> int:
        return len(self.alphabet) ** self.length

    def render(self, index: int, secret: str) -> SpanRecord:
        """The canary sentence, its secret a span of type ``canary``."""
        before, _, after = self.template.partition("{secret}")
        before = before.format(index=index)
        text = before + secret + after.format(index=index)
        return SpanRecord(
            text=text, spans=[Span(start=len(before), end=len(before) + len(secret), type="canary")]
        )

    def index_of(self, canary: SpanRecord) -> int:
        """The ``{index}`` a canary sentence was rendered with (0 if the template has none)."""
        if "{index}" not in self.template:
            return 0
        head = self.template.partition("{secret}")[0].partition("{index}")[0]
        rest = canary.text[len(head) :] if canary.text.startswith(head) else ""
        digits = rest[: len(rest) - len(rest.lstrip("0123456789"))]
        return int(digits) if digits else -1

    def random_secret(self, rng: random.Random) -> str:
        return "".join(rng.choice(self.alphabet) for _ in range(self.length))


def make_canaries(n: int, spec: CanarySpec, seed: int = 0) -> list[SpanRecord]:
    rng = random.Random(f"canary:{seed}")
    return [spec.render(i + 1, spec.random_secret(rng)) for i in range(n)]


def split_types(types: Sequence[str], direct: Sequence[str] = DIRECT_TYPES) -> tuple[list, list]:
    """(direct, indirect) among ``types``."""
    return [t for t in types if t in direct], [t for t in types if t not in direct]
