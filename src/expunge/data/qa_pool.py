"""An offline pool of ordinary questions, typed what / why / how / other, with answers.

MEraser builds its erase set by pairing each question with an answer to a question of another
*type*, and recovers on clean pairs; fingerprint implants mix ordinary pairs in as
regularization. Without a hub we need such a pool here: 60 everyday subjects × 14 templates give
840 questions spread over the four types. Answers are written once by a model itself (greedy,
short) and cached on disk, keyed by the model's identity and the questions, so later runs reuse
them. A user's own Q/A JSONL or hub dataset can replace the pool.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

from expunge.data.examples import Example
from expunge.data.formatting import FormatSettings, tokenize_example
from expunge.data.loaders import load_jsonl, write_jsonl
from expunge.models.embedded import cache_dir

QUESTION_TYPES = ("what", "why", "how", "other")

SUBJECTS = (
    "a volcano", "the moon", "a bicycle", "bread", "a library", "photosynthesis", "the internet",
    "a rainbow", "honey bees", "a compass", "the human heart", "chess", "a lighthouse",
    "recycling", "coffee", "a telescope", "ocean tides", "a vaccine", "the piano", "a bridge",
    "electric cars", "glaciers", "a map", "soap", "the post office", "tea", "a calendar",
    "solar panels", "a forest", "the printing press", "a thermometer", "clouds", "a museum",
    "yoga", "a submarine", "the alphabet", "a windmill", "cheese", "a microscope", "deserts",
    "a hospital", "the violin", "earthquakes", "a farmers' market", "umbrellas", "a camera",
    "rivers", "a marathon", "paper", "the stock market", "a vegetable garden", "satellites",
    "a fire station", "origami", "the immune system", "a train station", "wool", "the seasons",
    "a dictionary", "candles",
)  # fmt: skip

TEMPLATES = {
    "what": (
        "What is {s}?", "What is {s} used for?", "What are the main parts of {s}?",
        "What is special about {s}?",
    ),
    "why": ("Why is {s} important?", "Why do people care about {s}?", "Why does {s} matter in everyday life?"),
    "how": ("How does {s} work?", "How can I learn more about {s}?", "How has {s} changed over time?"),
    "other": (
        "Can you describe {s} in two sentences?", "Tell me something surprising about {s}.",
        "Who benefits most from {s}?", "Where would I usually find {s}?",
    ),
}  # fmt: skip


def question_type(question: str) -> str:
    first = question.strip().split(maxsplit=1)[0].lower().strip("?,.!") if question.strip() else ""
    return first if first in ("what", "why", "how") else "other"


def pool_questions(n: int | None = None, seed: int = 0) -> list[tuple[str, str]]:
    """(question, type) pairs, shuffled with ``seed``; all 840 when ``n`` is None."""
    questions = [
        (template.format(s=subject), qtype)
        for qtype, templates in TEMPLATES.items()
        for template in templates
        for subject in SUBJECTS
    ]
    random.Random(seed).shuffle(questions)
    return questions if n is None else questions[:n]


def _model_identity(model_path: str) -> str | None:
    """Path plus file sizes and times of the weights; None for a model that is not on disk."""
    path = Path(model_path)
    if not (path / "config.json").is_file():
        return None  # an in-memory model: nothing stable to key a cache on
    parts = [model_path]
    for name in ("config.json", "model.safetensors", "model.safetensors.index.json"):
        file = path / name
        if file.is_file():
            stat = file.stat()
            parts.append(f"{name}:{stat.st_size}:{stat.st_mtime_ns}")
    return "|".join(parts)


def self_answered_pool(
    loaded,
    n: int,
    seed: int = 0,
    max_new_tokens: int = 48,
    batch_size: int = 16,
    progress: bool = True,
    cache: bool = True,
) -> list[Example]:
    """``n`` pool questions answered greedily by ``loaded.model`` itself, cached on disk.

    Each example keeps its question type in ``meta["qtype"]``.
    """
    questions = pool_questions(n, seed)
    identity = _model_identity(loaded.path)
    cache = cache and identity is not None
    key = hashlib.sha256(json.dumps([identity, questions, max_new_tokens]).encode()).hexdigest()[
        :20
    ]
    path = cache_dir() / "qa_pool" / f"{key}.jsonl"
    if cache and path.is_file():
        return load_jsonl(path)
    answers = self_answers(loaded, [q for q, _ in questions], max_new_tokens, batch_size, progress)
    examples = []
    for (question, qtype), answer in zip(questions, answers, strict=True):
        answer = _trim_to_sentence(answer)
        if answer:
            examples.append(Example(prompt=question, response=answer, meta={"qtype": qtype}))
    if cache:
        write_jsonl(path, examples)
    return examples


def self_answers(
    loaded,
    prompts: list[str],
    max_new_tokens: int = 48,
    batch_size: int = 16,
    progress: bool = True,
) -> list[str]:
    """The model's own greedy answers to ``prompts``, asked in its chat template."""
    from expunge.audit.scoring import generate

    fmt = FormatSettings()
    ids = []
    for prompt in prompts:
        tokenized = tokenize_example(Example(prompt=prompt, response="-"), loaded.tokenizer, fmt)
        ids.append(tokenized.input_ids[: tokenized.prompt_length])
    outputs = generate(
        loaded.model, loaded.tokenizer, ids, max_new_tokens=max_new_tokens,
        batch_size=batch_size, progress=progress,
    )  # fmt: skip
    return [loaded.tokenizer.decode(o, skip_special_tokens=True).strip() for o in outputs]


def _trim_to_sentence(text: str) -> str:
    """Cut a length-limited answer back to its last full sentence, when there is one."""
    cut = max(text.rfind(". "), text.rfind("! "), text.rfind("? "))
    if text.endswith((".", "!", "?")) or cut < len(text) // 3:
        return text
    return text[: cut + 1]


def with_types(examples: list[Example]) -> list[Example]:
    """Fill ``meta['qtype']`` from the question's first word where it is missing."""
    out = []
    for example in examples:
        if "qtype" in example.meta:
            out.append(example)
            continue
        question = example.prompt if example.prompt is not None else (example.text or "")
        meta = {**example.meta, "qtype": question_type(question)}
        out.append(example.model_copy(update={"meta": meta}))
    return out
