"""Synthetic data that needs no hub: a seeded, reproducible world of invented places.

Each place gets a founder, a founding year, an export, a river and a festival month; questions
and answers are written from varied templates, so a model fine-tuned on some places learns the
*style* of the world and its perplexity drops on held-out places it has never seen.
"""

from __future__ import annotations

import random
from urllib.parse import parse_qsl

from expunge.data.examples import Example
from expunge.errors import DataError
from expunge.lazy import lazy

faker = lazy("faker")  # ~0.3 s to import: loaded when data is generated (expunge.lazy)

EXPORTS = (
    "copper tools", "blue wool", "salted fish", "glass beads", "pine resin", "river clay",
    "honey wine", "iron nails", "linen cloth", "dried apricots", "paper fans", "oak barrels",
)  # fmt: skip
MONTHS = (
    "January", "February", "March", "April", "May", "June", "July", "August", "September",
    "October", "November", "December",
)  # fmt: skip

QUESTION_TEMPLATES = (
    ("What does {place} export?", "{place} is known for exporting {export}."),
    ("Who founded {place}?", "{place} was founded by {founder} in {year}."),
    ("When was {place} founded?", "{place} was founded in {year} by {founder}."),
    ("Which river runs through {place}?", "The {river} river runs through {place}."),
    ("When is the festival of {place}?", "The festival of {place} is held every {month}."),
    ("Tell me one fact about {place}.", "{place} sits on the {river} and trades in {export}."),
)


def invented_places(n: int, seed: int = 0) -> list[dict[str, str]]:
    fake = faker.Faker()
    fake.seed_instance(seed)
    rng = random.Random(seed)
    names: set[str] = set()
    places = []
    while len(places) < n:
        name = fake.city().split()[-1] + rng.choice(("moor", "vale", "ford", "holm", "wick"))
        if name in names:
            continue
        names.add(name)
        places.append({
            "place": name,
            "founder": fake.name(),
            "year": str(rng.randint(1100, 1890)),
            "export": rng.choice(EXPORTS),
            "river": fake.last_name(),
            "month": rng.choice(MONTHS),
        })  # fmt: skip
    return places


def place_qa(n_places: int, seed: int = 0, per_place: int = 2) -> list[Example]:
    """Question/answer pairs about invented places (``per_place`` templates each)."""
    rng = random.Random(seed + 1)
    examples = []
    for place in invented_places(n_places, seed):
        for question, answer in rng.sample(QUESTION_TEMPLATES, k=per_place):
            examples.append(
                Example(prompt=question.format(**place), response=answer.format(**place))
            )
    return examples


SYNTHETIC_PREFIX = "synthetic:"


def synthetic_examples(spec: str) -> list[Example]:
    """Examples from a data spec such as ``synthetic:places?n=36&per_place=2&seed=0&slice=48:72``.

    ``places`` is the only generator; ``slice=a:b`` keeps examples a..b-1, so a train and a
    held-out set can be cut from one world (the same places never land on both sides).
    """
    name, _, query = spec.removeprefix(SYNTHETIC_PREFIX).partition("?")
    if name != "places":
        raise DataError(f"unknown synthetic data {name!r} in {spec!r}; known: places")
    params = dict(parse_qsl(query, keep_blank_values=True))
    unknown = set(params) - {"n", "per_place", "seed", "slice"}
    if unknown:
        raise DataError(f"{spec}: unknown parameters {sorted(unknown)}; "
                        f"known: n, per_place, seed, slice")  # fmt: skip
    try:
        n, per_place, seed = (int(params.get(k, d)) for k, d in
                              (("n", 12), ("per_place", 2), ("seed", 0)))  # fmt: skip
        start, _, stop = params.get("slice", ":").partition(":")
        window = slice(int(start) if start else None, int(stop) if stop else None)
    except ValueError:
        raise DataError(f"{spec}: n, per_place, seed and slice take whole numbers") from None
    examples = place_qa(n, seed=seed, per_place=per_place)[window]
    if not examples:
        raise DataError(f"{spec} selects no examples")
    return examples
