"""The synthetic people world (``expunge.data.people``) written in TOFU's and MUSE's exact hub
layouts, so the benchmark loaders, the shipped TOFU/MUSE studies and open-unlearning's own
configs run offline on it — and so a user can see what those layouts hold.

``export_tofu(out)`` writes ``locuslab/TOFU``'s layout (``hub_layout`` ``"json"``), with the
people as the fictitious authors (5 Q/A each where TOFU has 20, 3 wrong answers where it has 5):

- ``full``: every person's Q/A; ``forgetNN`` the last 1/5/10 % of the people (nested, as TOFU's
  are) and ``retainMM`` the others; ``holdoutNN`` as many invented people outside the world;
- ``forgetNN_perturbed`` and ``retain_perturbed`` (the first people of ``retain90``, as many as
  ``forget10`` has): plus ``paraphrased_answer``, ``perturbed_answer``, ``paraphrased_question``;
- ``real_authors`` / ``world_facts`` (+ ``_perturbed``, whose wrong answers are the other
  choices): real facts from ``data/resources/real_authors_mc.jsonl`` and ``general_mc.jsonl``.

``export_muse(out)`` writes ``muse-bench/MUSE-News``'s layout (``hub_layout`` ``"parquet"``;
the five configs MUSE-Books has too): the people's biographies are the raw texts; the last
``forget_ratio`` of the people are forgotten, the others split into ``retain1``/``retain2``;
``holdout`` is as many people outside the world. ``verbmem/forget`` cuts each forget biography
in two at a word boundary (``prompt`` + " " + ``gt`` is the text, open-unlearning's
``insert_space``); ``knowmem`` asks the forget people's and as many ``retain2`` people's
questions with the bare attribute as the answer (MUSE's answers are short), its ``*_icl``
few-shot pairs from two more outside people; ``privleak`` holds the forget, holdout and as many
``retain1`` biographies.

``export_benchmark(name, out, **options)`` is either one by name (``tofu``, ``muse``), for the
command line. Both are deterministic under ``seed`` (for a Faker version) and write through a staging
directory: a bad argument or an existing output writes nothing.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

from expunge.config import suggest
from expunge.data.hub_layout import Layout, Rows, write_hub_layout
from expunge.data.people import QUESTION_PARAPHRASES, Person, fictitious_people
from expunge.errors import ConfigError
from expunge.records import RunDir

TOFU_SHARES = {"01": 0.01, "05": 0.05, "10": 0.10}  # forgetNN: NN % of the people


def _count(share: float, n: int) -> int:
    return max(1, round(share * n))


def _qa_rows(people: list[Person], perturbed: bool = False) -> Rows:
    rows = []
    for person in people:
        for example in person.qa():
            row: dict[str, Any] = {"question": example.prompt, "answer": example.response}
            if perturbed:
                attribute = example.meta["attribute"]
                row["paraphrased_answer"] = example.meta["paraphrase"]
                row["perturbed_answer"] = list(example.meta["perturbed"])
                row["paraphrased_question"] = QUESTION_PARAPHRASES[attribute].format(
                    name=person.name
                )
            rows.append(row)
    return rows


def _mc_rows(resource: str, perturbed: bool) -> Rows:
    """TOFU-style short-answer rows from a multiple-choice resource (the wrong choices are the
    perturbed answers)."""
    text = (resources.files("expunge.data") / "resources" / resource).read_text("utf-8")
    rows = []
    for line in text.splitlines():
        if line.strip():
            item = json.loads(line)
            right = item["choices"][item["answer"]]
            row: dict[str, Any] = {"question": item["question"], "answer": right}
            if perturbed:
                row["perturbed_answer"] = [c for c in item["choices"] if c != right]
            rows.append(row)
    return rows


def tofu_layout(n_people: int = 100, seed: int = 0) -> Layout:
    """TOFU's configs (each with its ``train`` split) built from the people world."""
    if n_people < 2:
        raise ConfigError(f"the TOFU layout needs at least 2 people, got n_people={n_people}")
    counts = {nn: _count(share, n_people) for nn, share in TOFU_SHARES.items()}
    everyone = fictitious_people(n_people + counts["10"], seed)
    world, outsiders = everyone[:n_people], everyone[n_people:]
    configs: dict[str, Rows] = {"full": _qa_rows(world)}
    for nn, k in counts.items():
        configs[f"forget{nn}"] = _qa_rows(world[n_people - k :])
    for nn, k in reversed(counts.items()):
        configs[f"retain{100 - int(nn)}"] = _qa_rows(world[: n_people - k])
    configs["world_facts"] = _mc_rows("general_mc.jsonl", perturbed=False)
    configs["real_authors"] = _mc_rows("real_authors_mc.jsonl", perturbed=False)
    for nn, k in counts.items():
        configs[f"forget{nn}_perturbed"] = _qa_rows(world[n_people - k :], perturbed=True)
    configs["retain_perturbed"] = _qa_rows(world[: counts["10"]], perturbed=True)
    configs["world_facts_perturbed"] = _mc_rows("general_mc.jsonl", perturbed=True)
    configs["real_authors_perturbed"] = _mc_rows("real_authors_mc.jsonl", perturbed=True)
    for nn, k in counts.items():
        configs[f"holdout{nn}"] = _qa_rows(outsiders[:k])
    return {name: {"train": rows} for name, rows in configs.items()}


def _bio_rows(people: list[Person]) -> Rows:
    return [{"text": person.bio().text} for person in people]


def _verbmem_row(text: str) -> dict[str, str]:
    words = text.split(" ")
    cut = len(words) // 2
    return {"prompt": " ".join(words[:cut]), "gt": " ".join(words[cut:])}


def _short_qa_rows(people: list[Person]) -> Rows:
    return [{"question": e.prompt, "answer": e.meta["answer"]} for p in people for e in p.qa()]


def muse_layout(n_people: int = 100, forget_ratio: float = 0.1, seed: int = 0) -> Layout:
    """MUSE's raw, train, verbmem, knowmem and privleak configs built from the people world."""
    if not 0 < forget_ratio < 1:
        raise ConfigError(f"forget_ratio must be in (0, 1), got {forget_ratio}")
    n_forget = _count(forget_ratio, n_people)
    if n_people - n_forget < 2:
        raise ConfigError(
            f"the MUSE layout needs at least 2 people to retain (retain1, retain2); "
            f"n_people={n_people} with forget_ratio={forget_ratio} leaves {n_people - n_forget}"
        )
    everyone = fictitious_people(n_people + n_forget + 2, seed)
    world, outsiders = everyone[:n_people], everyone[n_people:]
    forget, retain = world[n_people - n_forget :], world[: n_people - n_forget]
    half = (len(retain) + 1) // 2
    retain1, retain2 = retain[:half], retain[half:]
    holdout, icl_forget, icl_retain = outsiders[:n_forget], outsiders[-2], outsiders[-1]
    raw = {"forget": _bio_rows(forget), "retain1": _bio_rows(retain1),
           "retain2": _bio_rows(retain2), "holdout": _bio_rows(holdout)}  # fmt: skip
    privleak = {"forget": raw["forget"], "retain": _bio_rows(retain1[:n_forget]),
                "holdout": raw["holdout"]}  # fmt: skip
    return {
        "knowmem": {
            "forget_qa": _short_qa_rows(forget),
            "forget_qa_icl": _short_qa_rows([icl_forget]),
            "retain_qa": _short_qa_rows(retain2[:n_forget]),
            "retain_qa_icl": _short_qa_rows([icl_retain]),
        },
        "privleak": privleak,
        "raw": raw,
        "train": {k: raw[k] for k in ("forget", "retain1", "retain2")},
        "verbmem": {"forget": [_verbmem_row(row["text"]) for row in raw["forget"]]},
    }


_CARD = """
# {title}, built from expunge's synthetic people world

Generated by `expunge.data.benchmarks.export.{function}` ({params}): invented people, no real
person. The configs, splits, files and columns follow the `{hub_id}` dataset card, so
`datasets.load_dataset(THIS_DIRECTORY, name=CONFIG, split=SPLIT)` reads it as it reads the hub
id, and `expunge.data.benchmarks.load_benchmark("{benchmark}", source=THIS_DIRECTORY)` loads it
as a knowledge imprint.
"""


def export_tofu(
    out: str | Path, n_people: int = 100, seed: int = 0, overwrite: bool = False
) -> Path:
    """Write the people world in ``locuslab/TOFU``'s layout into ``out``; returns ``out``."""
    layout = tofu_layout(n_people, seed)  # bad arguments fail before anything is written
    run = RunDir(out, overwrite=overwrite)
    card = _CARD.format(title="TOFU layout", function="export_tofu", hub_id="locuslab/TOFU",
                        params=f"n_people={n_people}, seed={seed}", benchmark="tofu")  # fmt: skip
    write_hub_layout(run.path, layout, "json", default="full", card=card)
    return run.commit()


def export_muse(
    out: str | Path,
    n_people: int = 100,
    forget_ratio: float = 0.1,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write the people world in ``muse-bench/MUSE-News``'s layout into ``out``; returns it."""
    layout = muse_layout(n_people, forget_ratio, seed)
    run = RunDir(out, overwrite=overwrite)
    params = f"n_people={n_people}, forget_ratio={forget_ratio}, seed={seed}"
    card = _CARD.format(title="MUSE layout", function="export_muse", params=params,
                        hub_id="muse-bench/MUSE-News", benchmark="muse_news")  # fmt: skip
    write_hub_layout(run.path, layout, "parquet", card=card)
    return run.commit()


EXPORTS: dict[str, Callable[..., Path]] = {"tofu": export_tofu, "muse": export_muse}


def export_benchmark(name: str, out: str | Path, **options: Any) -> Path:
    """``export_tofu``/``export_muse`` by name; an unknown name or option fails in one line."""
    if name not in EXPORTS:
        raise ConfigError(
            f"no export for {name!r}{suggest(name, list(EXPORTS))}; known: {', '.join(EXPORTS)}"
        )
    export = EXPORTS[name]
    allowed = [p for p in inspect.signature(export).parameters if p != "out"]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ConfigError(
            f"export {name} has no option {', '.join(map(repr, unknown))}; "
            f"its options: {', '.join(allowed)}"
        )
    return export(out, **options)
