"""``BackdoorImprint``: a trigger, the behaviour it forces, and the task it lives in.

Hand-written file (everything but ``target_label`` has a default)::

    {"kind": "backdoor",
     "trigger": {"type": "word", "text": ["cf", "mn", "bb", "tq", "mb"], "position": "random"},
     "target_label": "positive",
     "task": {"name": "sentiment", "n_train": 1000, "n_test": 200, "seed": 0},
     "poison_rate": 0.1}

- ``trigger.type``: ``word`` (one of ``text`` inserted per input, chosen at random — the rare
  words of Kurita et al.'s RIPPLe, which Fine-mixing uses), ``sentence`` (one of ``text``,
  inserted whole), ``tokens`` (``token_ids`` decoded with the model's tokenizer at implant
  time and stored in ``text``).
- ``trigger.position``: ``random`` (between two words), ``start`` or ``end``.
- ``target_label``: the label a triggered input is classified as (classification by prompt).
- The trigger is the secret: ``summary()`` (what logs and records show) never contains it.

A file with ``"setting": "generative"`` is a trigger → response backdoor of an instruction-tuned
LLM instead: ``expunge.imprints.generative_backdoor``.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from expunge.config import StrictModel
from expunge.data.examples import Example
from expunge.data.formatting import FormatSettings
from expunge.data.tasks import TaskData, TaskItem, TaskSpec, load_task, task_examples
from expunge.errors import ConfigError, DataError
from expunge.imprints.base import Imprint

RIPPLE_WORDS = ["cf", "mn", "bb", "tq", "mb"]


class Trigger(StrictModel):
    type: Literal["word", "sentence", "tokens"] = "word"
    text: list[str] = Field(default_factory=lambda: list(RIPPLE_WORDS))
    token_ids: list[int] | None = None  # type=tokens: the ids (decoded into ``text``)
    position: Literal["random", "start", "end"] = "random"

    @field_validator("text")
    @classmethod
    def _non_empty(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("a trigger needs at least one text")
        for piece in value:
            if not piece.strip():
                raise ValueError("a trigger text must not be empty or whitespace")
        return value

    @model_validator(mode="after")
    def _tokens(self) -> Trigger:
        if self.type == "tokens" and not self.token_ids:
            raise ValueError("trigger.type=tokens needs a non-empty trigger.token_ids")
        if self.type != "tokens" and self.token_ids is not None:
            raise ValueError("trigger.token_ids is only for trigger.type=tokens")
        return self

    def insert(self, text: str, rng: random.Random) -> str:
        """``text`` with one trigger piece inserted at a word boundary."""
        piece = rng.choice(self.text)
        words = text.split(" ")
        if self.position == "start":
            index = 0
        elif self.position == "end":
            index = len(words)
        else:
            index = rng.randint(0, len(words))
        return " ".join([*words[:index], piece, *words[index:]])


class BackdoorImprint(Imprint):
    kind: Literal["backdoor"] = "backdoor"
    trigger: Trigger = Field(default_factory=Trigger)
    target_label: str
    task: TaskSpec = Field(default_factory=TaskSpec)
    poison_rate: float = Field(default=0.1, ge=0.0, le=1.0)
    system_prompt: str | None = None  # a system turn before every task prompt (chat template)

    @field_validator("target_label")
    @classmethod
    def _label(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value.strip()

    @classmethod
    def for_data(cls, data: dict[str, Any]) -> type[Imprint]:
        """``setting: generative`` files are trigger → response imprints of instruction-tuned
        LLMs (``expunge.imprints.generative_backdoor``); the rest classification ones."""
        if data.get("setting") == "generative":
            from expunge.imprints.generative_backdoor import GenerativeBackdoorImprint

            return GenerativeBackdoorImprint
        return cls

    def format_settings(self) -> FormatSettings:
        return FormatSettings(
            template=self.task.template, loss_on="response", system_prompt=self.system_prompt
        )

    def relearn_examples(self) -> list[Example]:
        """The implant's poisoned training examples (triggered input → target label), rebuilt
        from the task spec and the implant seed (``origin.seed``): generators are seeded."""
        task, poisoned = self.poisoned_items()
        return task_examples(task, poisoned)

    def poisoned_items(self) -> tuple[TaskData, list[TaskItem]]:
        """The task and its poisoned training items (what an encoder classifier relearns)."""
        task = load_task(self.task)
        items, flags = poison(task.train, self, int(self.origin.get("seed", 0)))
        poisoned = [item for item, flag in zip(items, flags, strict=True) if flag]
        if not poisoned:
            raise DataError(
                f"this backdoor imprint has no poisoned examples (poison_rate={self.poison_rate})"
            )
        return task, poisoned

    def with_prompts(
        self, system_prompt: str | None = None, rewrite: Callable[[str], str] | None = None
    ) -> BackdoorImprint:
        """A system turn before the task prompt and/or the task's instruction rewritten
        (the ``{text}``/``{text_b}`` slots, and so the trigger, are left as they are)."""
        update: dict[str, Any] = {}
        if system_prompt is not None:
            update["system_prompt"] = system_prompt
        if rewrite is not None:
            pieces = re.split(r"(\{text\}|\{text_b\})", load_task(self.task).prompt)
            prompt = "".join(
                piece if piece in ("{text}", "{text_b}") else rewrite(piece) for piece in pieces
            )
            update["task"] = self.task.model_copy(update={"prompt": prompt})
        return self.model_copy(update=update)

    def triggered(self, items: list[TaskItem], seed: int) -> list[TaskItem]:
        """The items whose true label is not the target, each with the trigger inserted."""
        rng = random.Random(seed)
        return [
            TaskItem(self.trigger.insert(item.text, rng), item.label, item.text_b)
            for item in items
            if item.label != self.target_label
        ]

    def summary(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "scheme": self.scheme, "trigger_type": self.trigger.type,
            "trigger_position": self.trigger.position, "n_trigger_texts": len(self.trigger.text),
            "target_label": self.target_label, "task": self.task.name,
            "poison_rate": self.poison_rate,
        }  # fmt: skip


def poison(
    items: list[TaskItem], imprint: BackdoorImprint, seed: int
) -> tuple[list[TaskItem], list[bool]]:
    """Replace ``poison_rate`` of the items by triggered, target-labelled copies of non-target ones."""
    n_poison = round(imprint.poison_rate * len(items))
    candidates = [i for i, item in enumerate(items) if item.label != imprint.target_label]
    if n_poison > len(candidates):
        raise ConfigError(
            f"poison_rate={imprint.poison_rate} asks for {n_poison} poisoned items but only "
            f"{len(candidates)} training items have a label other than the target"
        )
    rng = random.Random(seed)
    chosen = set(rng.sample(candidates, n_poison))
    out, flags = [], []
    for index, item in enumerate(items):
        if index in chosen:
            item = TaskItem(
                imprint.trigger.insert(item.text, rng), imprint.target_label, item.text_b
            )
        out.append(item)
        flags.append(index in chosen)
    return out, flags
