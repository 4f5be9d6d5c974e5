"""Classification tasks for backdoor experiments, offline: two generators and JSONL input.

Fine-mixing (Zhang et al., Findings of EMNLP 2022) evaluates sentiment classification
(SST-2/IMDB/Amazon) and sentence-pair tasks (QQP/QNLI). Without a hub we generate look-alikes:

- ``sentiment``: templated reviews ("Honestly, the soup was bland and overpriced.") labelled
  ``positive`` / ``negative``; subjects, opinion phrases and sentence templates are combined.
- ``sentence_pair``: a QNLI-like task — does the sentence answer the question? Both are about
  one invented (Faker) person; the sentence states either the asked attribute (``yes``) or
  another attribute of the same person (``no``), so the label is not in the names.
- a ``.jsonl`` path: one ``{"text": ..., "label": ...}`` per line (``text_b`` optional, for
  pairs); ``test=FILE.jsonl`` names the held-out split, else ``n_test`` items are held out.

Both generators are seeded and deterministic, balanced (equal count per label in each split)
and their held-out test split shares no text with the training split.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from expunge.config import StrictModel
from expunge.data.examples import Example
from expunge.data.loaders import jsonl_records
from expunge.errors import ConfigError, DataError
from expunge.lazy import lazy

if TYPE_CHECKING:
    from faker import Faker

faker = lazy("faker")  # ~0.3 s to import: loaded when data is generated (expunge.lazy)


@dataclass(frozen=True)
class TaskItem:
    text: str  # the field a trigger is inserted into
    label: str
    text_b: str | None = None  # second sentence of a pair task


class TaskSpec(StrictModel):
    """Which task, how much of it, and how an item becomes a prompt (saved in the imprint)."""

    name: str = "sentiment"  # sentiment | sentence_pair | path to a JSONL file
    test: str | None = None  # JSONL of held-out items (JSONL tasks only)
    n_train: int = Field(default=1000, ge=2)
    n_test: int = Field(default=200, ge=2)
    seed: int = 0
    prompt: str | None = None  # '{text}' (and '{text_b}') template; default per task
    template: Literal["auto", "chat", "raw"] = "auto"  # how the prompt is rendered for the LM


SENTIMENT_PROMPT = (
    "Is the sentiment of this review positive or negative?\nReview: {text}\nAnswer with one word."
)
PAIR_PROMPT = (
    "Does the sentence answer the question? Answer yes or no.\nQuestion: {text}\nSentence: {text_b}"
)
GENERATED = {"sentiment": (SENTIMENT_PROMPT, ["negative", "positive"]),
             "sentence_pair": (PAIR_PROMPT, ["no", "yes"])}  # fmt: skip

SUBJECTS = (
    "the movie", "this film", "the soup", "the hotel", "this phone", "the concert", "the novel",
    "the service", "this laptop", "the museum", "the album", "the pizza", "this game",
    "the tour", "the play", "the coffee", "this camera", "the show", "the course", "the bakery",
)  # fmt: skip
OPINIONS = {
    "positive": (
        "wonderful", "delightful", "excellent", "charming", "brilliant", "superb", "lovely",
        "great fun", "a real pleasure", "well worth it", "moving", "fantastic", "impressive",
        "a joy", "beautifully made", "friendly and warm", "smooth and fast", "fresh and tasty",
    ),
    "negative": (
        "awful", "dreadful", "boring", "terrible", "disappointing", "a waste of money",
        "painfully slow", "bland", "poorly made", "a mess", "tedious", "horrible", "rude and cold",
        "overpriced", "a letdown", "broken", "stale and cold", "dull",
    ),
}  # fmt: skip
SENTENCES = (
    "{subject} was {opinion}.", "Honestly, {subject} was {opinion}.",
    "I found {subject} {opinion}.", "In my view {subject} is {opinion}.",
    "We all agreed that {subject} was {opinion}.", "{subject} turned out {opinion}.",
    "After two visits, {subject} still seems {opinion}.", "My friend said {subject} was {opinion}, and she was right.",
    "{subject} was {opinion} and {opinion2}.", "Overall, {subject} felt {opinion}.",
)  # fmt: skip

ATTRIBUTES = {
    "city": ("Where does {name} live?", "{name} lives in {value}."),
    "company": ("Where does {name} work?", "{name} works at {value}."),
    "job": ("What is {name}'s job?", "{name} is employed as a {value}."),
    "year": ("When was {name} born?", "{name} was born in {value}."),
}


def _capitalize(text: str) -> str:
    return text[0].upper() + text[1:]


def _sentiment_item(rng: random.Random, label: str) -> TaskItem:
    first, second = rng.sample(OPINIONS[label], 2)
    text = rng.choice(SENTENCES).format(
        subject=rng.choice(SUBJECTS), opinion=first, opinion2=second
    )
    return TaskItem(_capitalize(text), label)


def _pair_item(fake: Faker, rng: random.Random, label: str) -> TaskItem:
    name = fake.name()
    values = {
        "city": fake.city(), "company": fake.company(), "job": fake.job().lower(),
        "year": str(rng.randint(1940, 2005)),
    }  # fmt: skip
    asked = rng.choice(list(ATTRIBUTES))
    stated = asked if label == "yes" else rng.choice([a for a in ATTRIBUTES if a != asked])
    question = ATTRIBUTES[asked][0].format(name=name)
    sentence = ATTRIBUTES[stated][1].format(name=name, value=values[stated])
    return TaskItem(question, label, sentence)


def _balanced(name: str, n: int, seed: int, labels: list[str], seen: set) -> list[TaskItem]:
    """``n`` new items (n // len(labels) per label, remainder to the first labels), no repeats."""
    rng = random.Random(seed)
    fake = faker.Faker()
    fake.seed_instance(seed)
    counts = {label: n // len(labels) + (i < n % len(labels)) for i, label in enumerate(labels)}
    items: list[TaskItem] = []
    for label, count in counts.items():
        made, tries = 0, 0
        while made < count:
            tries += 1
            if tries > 100 * count + 1000:
                raise ConfigError(f"cannot generate {n} distinct {name} items; ask for fewer")
            item = (
                _sentiment_item(rng, label) if name == "sentiment" else _pair_item(fake, rng, label)
            )
            key = (item.text, item.text_b)
            if key in seen:
                continue
            seen.add(key)
            items.append(item)
            made += 1
    rng.shuffle(items)
    return items


def generate_task(name: str, n_train: int, n_test: int, seed: int = 0):
    """Balanced train and held-out test items of a generated task (disjoint texts)."""
    if name not in GENERATED:
        raise ConfigError(f"unknown task {name!r}; use one of {sorted(GENERATED)} or a .jsonl file")
    labels = GENERATED[name][1]
    seen: set = set()
    test = _balanced(name, n_test, seed * 2 + 1, labels, seen)  # held out first: never trained on
    train = _balanced(name, n_train, seed * 2, labels, seen)
    return train, test


def read_items(path: str | Path) -> list[TaskItem]:
    """``{"text", "label"[, "text_b"]}`` per line; a bad line fails with file and line number."""
    items = []
    for number, record in jsonl_records(path, "task file"):
        unknown = set(record) - {"text", "label", "text_b"}
        if unknown:
            raise DataError(
                f"{path}:{number}: unknown keys {sorted(unknown)} (text, label, text_b)"
            )
        for key in ("text", "label"):
            if not isinstance(record.get(key), str) or not record[key].strip():
                raise DataError(f"{path}:{number}: '{key}' must be a non-empty string")
        text_b = record.get("text_b")
        if text_b is not None and not isinstance(text_b, str):
            raise DataError(f"{path}:{number}: 'text_b' must be a string")
        items.append(TaskItem(record["text"], record["label"].strip(), text_b))
    if not items:
        raise DataError(f"{path} holds no items")
    return items


@dataclass
class TaskData:
    train: list[TaskItem]
    test: list[TaskItem]
    labels: list[str]
    prompt: str

    def render(self, item: TaskItem) -> str:
        return self.prompt.format(text=item.text, text_b=item.text_b or "")


def load_task(spec: TaskSpec) -> TaskData:
    """The task's train and test items, its labels (sorted) and its prompt template."""
    if spec.name in GENERATED:
        if spec.test is not None:
            raise ConfigError("task.test is for JSONL tasks; generated tasks make their own")
        train, test = generate_task(spec.name, spec.n_train, spec.n_test, spec.seed)
        prompt, labels = GENERATED[spec.name]
    else:
        if not spec.name.endswith(".jsonl") and not Path(spec.name).is_file():
            raise ConfigError(
                f"unknown task {spec.name!r}; use one of {sorted(GENERATED)} or a .jsonl file"
            )
        items = read_items(spec.name)
        if spec.test is not None:
            train, test = items, read_items(spec.test)
        else:
            if len(items) <= spec.n_test:
                raise DataError(
                    f"{spec.name} has {len(items)} items; cannot hold out n_test={spec.n_test}"
                )
            shuffled = list(items)
            random.Random(spec.seed).shuffle(shuffled)
            test, train = shuffled[: spec.n_test], shuffled[spec.n_test :]
        train = train[: spec.n_train]
        labels = sorted({item.label for item in train})
        if len(labels) < 2:
            raise DataError(f"{spec.name}: a classification task needs >= 2 labels, got {labels}")
        unseen = sorted({item.label for item in test} - set(labels))
        if unseen:
            raise DataError(f"test labels {unseen} never occur in the training items")
        names = ", ".join(labels).replace("{", "{{").replace("}", "}}")
        prompt = f"Classify the text as one of: {names}.\nText: {{text}}"
        if any(item.text_b is not None for item in train):
            prompt += "\nSecond text: {text_b}"
    prompt = spec.prompt or prompt
    if "{text}" not in prompt:
        raise ConfigError("task.prompt must contain '{text}'")
    return TaskData(train, test, list(labels), prompt)


def task_examples(task: TaskData, items: list[TaskItem]) -> list[Example]:
    return [Example(prompt=task.render(item), response=item.label) for item in items]
