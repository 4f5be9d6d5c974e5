"""Synthetic data that needs no hub: a seeded, reproducible world of invented places.

Each place gets a founder, a founding year, an export, a river and a festival month; questions
and answers are written from varied templates, so a model fine-tuned on some places learns the
*style* of the world and its perplexity drops on held-out places it has never seen.
"""

from __future__ import annotations

import random

from faker import Faker

from expunge.data.examples import Example

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
    fake = Faker()
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
