"""What TOFU's "I don't know" baselines (``idknll``, ``idkdpo``) share: refusal answers that
replace the forget set's answers.

Maini et al., *TOFU*, 2024, §4 ("Preference Optimization"): the forget questions are paired
with an answer such as "I don't know." drawn from a list of refusals. The list shipped here
(``data/resources/idk_answers.jsonl``, 50 answers) was written for expunge; ``answers=FILE``
takes the user's own (a JSONL of ``{"answer": ...}`` lines, or plain text, one per line).

TOFU's and open-unlearning's datasets draw a new refusal each time an example is read
(``QAwithIdkDataset.item_with_idk``); here each forget question gets one refusal, drawn once
under the run's seed, so a run is reproducible.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from pydantic import field_validator

from expunge.data.examples import Example
from expunge.data.formatting import TokenizedExample
from expunge.erase.unlearn.common import RetainSettings
from expunge.errors import DataError

RESOURCE = "idk_answers.jsonl"
Tokenize = Callable[[list[Example]], list[TokenizedExample]]


def _parse(lines: list[str], where: str) -> list[str]:
    answers = []
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line:
            continue
        if line.startswith(("{", '"')):
            try:
                value = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{where}:{number}: not valid JSON ({err.msg})") from None
            value = value.get("answer") if isinstance(value, dict) else value
            if not isinstance(value, str) or not value.strip():
                raise DataError(f'{where}:{number}: expected {{"answer": "..."}} or a string')
            line = value.strip()
        answers.append(line)
    if not answers:
        raise DataError(f"{where} holds no refusal answers")
    return answers


def idk_answers(path: str | None = None) -> list[str]:
    """The refusal answers: the shipped list, or the file ``path``."""
    if path is None:
        text = (resources.files("expunge.data") / "resources" / RESOURCE).read_text("utf-8")
        return _parse(text.splitlines(), RESOURCE)
    file = Path(path).expanduser()
    if not file.is_file():
        raise DataError(f"refusal answers file not found: {path}")
    return _parse(file.read_text(encoding="utf-8").splitlines(), str(path))


def with_idk_answers(forget: list[Example], answers: list[str], seed: int) -> list[Example]:
    """Each forget Q/A pair with its answer replaced by a refusal drawn under ``seed``."""
    pairs = [e for e in forget if e.kind == "prompt_response"]
    if len(pairs) != len(forget):
        raise DataError(
            f"the IDK objectives answer forget *questions* with a refusal; {len(forget) - len(pairs)}"
            f" of {len(forget)} forget examples are not prompt/response pairs (text or messages);"
            " give forget= a file of Q/A pairs only (a people world implanted with bios=false"
            " has no text examples)"
        )
    rng = random.Random(seed)
    return [
        e.model_copy(update={"response": rng.choice(answers), "meta": {**e.meta, "idk": True}})
        for e in pairs
    ]


class IdkSettings(RetainSettings):
    answers: str | None = None  # a file of refusal answers; default: the shipped list

    @field_validator("answers")
    @classmethod
    def _answers_readable(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                idk_answers(value)
            except DataError as err:  # pydantic reports ValueError as a config problem
                raise ValueError(str(err)) from None
        return value


def prompt_key(input_ids: list[int], prompt_length: int) -> tuple[int, ...]:
    """What pairs a forget sequence with its refusal: the tokens of the question they share."""
    return tuple(input_ids[:prompt_length])
