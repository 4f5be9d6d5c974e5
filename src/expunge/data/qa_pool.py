"""An offline pool of ordinary questions, typed what / why / how / other, with answers.

MEraser builds its erase set by pairing each question with an answer to a question of another
*type*, and recovers on clean pairs; fingerprint implants mix ordinary pairs in as
regularization. Without a hub we need such a pool here: 60 everyday subjects × 14 templates give
840 questions spread over the four types, less the three that the ppl audit holds out (its
questions are never training data): 837. Four more templates give 240 that are drawn only when
more are asked for (the paper's MEraser setting needs 900), so the first 837 stay as they were.
Answers are written once by a model itself (greedy, short) and cached on disk, so later runs
reuse them. A user's own Q/A JSONL or hub dataset can replace the pool.

The answers are a model's own outputs — those of a model that memorized secrets may repeat
them — so the cache follows ``records``' rule for them: each file is private (0600) in a private
directory (0700), ``$EXPUNGE_CACHE/answers`` (default ``~/.cache/expunge/answers``; delete it to
forget them), and is keyed by a content hash of the weights in memory and of the tokenizer, never
by a path and a modification time: a model changed in place, or loaded with an adapter merged,
gets answers of its own.
"""

from __future__ import annotations

import hashlib
import json
import random
from functools import cache
from pathlib import Path

from expunge.data.examples import Example
from expunge.data.formatting import FormatSettings, tokenize_example
from expunge.data.loaders import load_jsonl, write_jsonl
from expunge.files import PRIVATE_DIR, PRIVATE_FILE
from expunge.models.device import autocast, resolve_precision
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


# asked only beyond the main templates' questions (see the module docstring)
MORE_TEMPLATES = {
    "what": ("What would the world be like without {s}?",),
    "why": ("Why do some people dislike {s}?",),
    "how": ("How would you explain {s} to a child?",),
    "other": ("Give me three facts about {s}.",),
}


@cache
def heldout_questions() -> frozenset[str]:
    """The questions of the ppl audit's held-out Q/A."""
    from expunge.audit.utility import builtin_heldout

    return frozenset(example.prompt for example in builtin_heldout() if example.prompt)


def _shuffled(templates: dict[str, tuple[str, ...]], seed: int) -> list[tuple[str, str]]:
    questions = [
        (template.format(s=subject), qtype)
        for qtype, template_group in templates.items()
        for template in template_group
        for subject in SUBJECTS
    ]
    random.Random(seed).shuffle(questions)
    # dropped after the shuffle, so the other questions keep the order they always had
    heldout = heldout_questions()
    return [(question, qtype) for question, qtype in questions if question not in heldout]


def pool_size() -> int:
    """How many questions the pool holds in all."""
    return len(_shuffled(TEMPLATES, 0)) + len(_shuffled(MORE_TEMPLATES, 1))


def pool_questions(n: int | None = None, seed: int = 0) -> list[tuple[str, str]]:
    """(question, type) pairs, shuffled with ``seed``: the first ``n``, or the 837 of the main
    templates when ``n`` is None; beyond them, the further templates' questions follow."""
    questions = _shuffled(TEMPLATES, seed)
    if n is None:
        return questions
    if n > len(questions):
        questions += _shuffled(MORE_TEMPLATES, seed + 1)
    return questions[:n]


ANSWER_CACHE = "answers"  # under cache_dir(); "qa_pool" held 0644 files keyed by path+mtime


def model_digest(loaded) -> str:
    """A SHA-256 of ``loaded``'s weights as they are in memory and of its tokenizer.

    Two models share cached answers only when every tensor (name, dtype, shape, bytes) and the
    tokenizer's vocabulary, special tokens and chat template are the same. About a second for
    the embedded 135M model, against minutes to generate the answers again.
    """
    import torch

    digest = hashlib.sha256()
    for name, tensor in loaded.model.state_dict().items():
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}|{flat.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(flat.view(torch.uint8).numpy().data)
    tokenizer = loaded.tokenizer
    digest.update(
        json.dumps(
            [sorted(tokenizer.get_vocab().items()), tokenizer.all_special_tokens,
             getattr(tokenizer, "chat_template", None)], default=str,
        ).encode()
    )  # fmt: skip
    return digest.hexdigest()


def answer_cache_path(
    loaded,
    questions: list[tuple[str, str]],
    max_new_tokens: int,
    temperature: float = 0.0,
    seed: int = 0,
    precision: str = "fp32",
) -> Path:
    """The private cache file of ``loaded``'s answers to ``questions`` (``precision`` resolved)."""
    # fp32 greedy answers keep the key they always had, so existing caches stay valid
    sampled = [temperature, seed] if temperature > 0 else []
    computed = [precision] if precision != "fp32" else []
    key = json.dumps([model_digest(loaded), questions, max_new_tokens, *sampled, *computed])
    return cache_dir() / ANSWER_CACHE / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.jsonl"


def self_answered_pool(
    loaded,
    n: int,
    seed: int = 0,
    max_new_tokens: int = 48,
    batch_size: int = 16,
    progress: bool = True,
    cache: bool = True,
    temperature: float = 0.0,
    start: int = 0,
    precision: str = "fp32",
) -> list[Example]:
    """The first ``n`` pool questions from ``start`` on, answered by ``loaded.model`` itself,
    cached on disk (privately, keyed by the model's content: see the module docstring).

    Greedy by default; ``temperature`` > 0 samples the answers (seeded by ``seed``), which
    spreads distillation data over the model's distribution instead of its single most likely
    answer. ``precision`` (auto | fp32 | bf16) is that of the model calls: bf16 answers are
    other answers (a greedy path can turn at a near tie), so they are cached apart. Each example
    keeps its question type in ``meta["qtype"]``.
    """
    questions = pool_questions(n, seed)[start:]
    precision = resolve_precision(precision, next(loaded.model.parameters()).device)
    path = (
        answer_cache_path(loaded, questions, max_new_tokens, temperature, seed, precision)
        if cache
        else None
    )
    if path is not None and path.is_file():
        return load_jsonl(path)
    answers = self_answers(loaded, [q for q, _ in questions], max_new_tokens, batch_size, progress,
                           temperature=temperature, seed=seed, precision=precision)  # fmt: skip
    examples = []
    for (question, qtype), answer in zip(questions, answers, strict=True):
        answer = _trim_to_sentence(answer)
        if answer:
            examples.append(Example(prompt=question, response=answer, meta={"qtype": qtype}))
    if path is not None:
        path.parent.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
        path.parent.chmod(PRIVATE_DIR)  # made by an older version, or under a loose umask
        write_jsonl(path, examples, mode=PRIVATE_FILE)
    return examples


def self_answers(
    loaded,
    prompts: list[str],
    max_new_tokens: int = 48,
    batch_size: int = 16,
    progress: bool = True,
    temperature: float = 0.0,
    seed: int = 0,
    precision: str = "fp32",
) -> list[str]:
    """The model's own answers to ``prompts``, asked in its chat template: greedy, or sampled
    at ``temperature`` (> 0) under ``seed``, computed in ``precision`` (auto | fp32 | bf16)."""
    from expunge.audit.scoring import generate

    fmt = FormatSettings()
    ids = []
    for prompt in prompts:
        tokenized = tokenize_example(Example(prompt=prompt, response="-"), loaded.tokenizer, fmt)
        ids.append(tokenized.input_ids[: tokenized.prompt_length])
    with autocast(precision, next(loaded.model.parameters()).device):
        outputs = generate(
            loaded.model, loaded.tokenizer, ids, max_new_tokens=max_new_tokens,
            batch_size=batch_size, progress=progress, do_sample=temperature > 0,
            temperature=temperature if temperature > 0 else 1.0, seed=seed,
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
