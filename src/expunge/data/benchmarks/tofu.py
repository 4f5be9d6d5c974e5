"""TOFU (Maini et al., *TOFU: A Task of Fictitious Unlearning for LLMs*, 2024) as a knowledge
imprint, from ``locuslab/TOFU`` or a local directory in its layout.

Source layout (the hub card's ``configs:``, one JSON-lines file and one ``train`` split per
config; columns ``question``, ``answer``, and in the ``*_perturbed`` configs also
``paraphrased_answer``, ``perturbed_answer`` (a list) and ``paraphrased_question``). Configs
named as in open-unlearning's ``configs/data/datasets/TOFU_*.yaml``:

=========================  ===============================================================
imprint                    TOFU config
=========================  ===============================================================
``forget``                 ``forgetNN``, each row joined by question with its row of
                           ``forgetNN_perturbed`` (paraphrased and perturbed answers kept in
                           ``meta`` under TOFU's names)
``retain``                 ``retain99`` / ``retain95`` / ``retain90`` (the retain model's data)
``holdout``                ``holdoutNN`` when the source has it (MIA non-members), else empty
``eval_sets``              ``retain_perturbed`` → ``retain_perturbed``,
                           ``real_authors_perturbed`` → ``real_authors``,
                           ``world_facts_perturbed`` → ``world_facts`` (model utility)
=========================  ===============================================================

Example fields: ``prompt`` = question, ``response`` = answer; every other column stays in
``meta``. The people world's examples name the same two fields ``meta.paraphrase`` and
``meta.perturbed``; ``truth_ratio_answers`` reads either.
"""

from __future__ import annotations

from typing import Any

from expunge.config import suggest
from expunge.data.benchmarks.base import QA_COLUMNS, Source
from expunge.data.examples import Example
from expunge.errors import ConfigError
from expunge.imprints.knowledge import BenchmarkSource, KnowledgeImprint

HUB_ID = "locuslab/TOFU"
RETAIN_OF = {"forget01": "retain99", "forget05": "retain95", "forget10": "retain90"}
HOLDOUT_OF = {"forget01": "holdout01", "forget05": "holdout05", "forget10": "holdout10"}
DEFAULT_SPLIT = "forget10"
EVAL_SETS = {  # imprint eval set -> TOFU config (model utility: retain, real authors, world facts)
    "retain_perturbed": "retain_perturbed",
    "real_authors": "real_authors_perturbed",
    "world_facts": "world_facts_perturbed",
}


def truth_ratio_answers(example: Example) -> tuple[str, list[str]] | None:
    """(the right answer in other words, the wrong answers) of a Q/A example, or None.

    TOFU's perturbed configs carry ``paraphrased_answer``/``perturbed_answer``, the people world
    ``paraphrase``/``perturbed``. Where wrong answers come without a paraphrase (TOFU's
    ``real_authors``/``world_facts``), the answer itself is the base, as TOFU's
    ``config/eval_everything.yaml`` sets ``base_answer_key: answer`` for them.
    """
    wrong = example.meta.get("perturbed_answer", example.meta.get("perturbed"))
    if not wrong or example.response is None:
        return None
    base = example.meta.get("paraphrased_answer", example.meta.get("paraphrase", example.response))
    return str(base), [str(w) for w in ([wrong] if isinstance(wrong, str) else wrong)]


def with_perturbed(forget: list[Example], perturbed: list[Example]) -> list[Example]:
    """``forget`` with each example's row of the perturbed config (matched by question) merged
    into ``meta``; a question the perturbed config lacks is left as it is."""
    by_question: dict[str | None, dict[str, Any]] = {e.prompt: e.meta for e in perturbed}
    out = []
    for example in forget:
        extra = by_question.get(example.prompt)
        if extra is None:
            out.append(example)
        else:
            out.append(example.model_copy(update={"meta": {**example.meta, **extra}}))
    return out


def load(
    split: str | None = None, source: str | None = None, max_examples: int | None = None
) -> KnowledgeImprint:
    """TOFU's ``split`` (forget01/05/10) with its retain, holdout and utility sets."""
    split = split or DEFAULT_SPLIT
    if split not in RETAIN_OF:
        raise ConfigError(
            f"unknown TOFU split {split!r}{suggest(split, list(RETAIN_OF))}; "
            f"known: {', '.join(RETAIN_OF)}"
        )
    src = Source("TOFU", source or HUB_ID)
    perturbed, retain, holdout = f"{split}_perturbed", RETAIN_OF[split], HOLDOUT_OF[split]
    for config in (split, perturbed, retain, *EVAL_SETS.values()):
        src.require(config)  # every piece checked before any is loaded

    def qa(config: str) -> list[Example]:
        return src.load(config, columns=QA_COLUMNS, max_examples=max_examples)

    forget = with_perturbed(qa(split), qa(perturbed))
    return KnowledgeImprint(
        scheme="tofu",
        forget=forget,
        retain=qa(retain),
        holdout=qa(holdout) if src.has(holdout) else [],
        benchmark=BenchmarkSource(name="tofu", source=src.spec, split=split),
        eval_sets={name: qa(config) for name, config in EVAL_SETS.items()},
        origin={"benchmark": "tofu", "source": src.spec, "split": split, "retain": retain,
                "holdout": holdout if src.has(holdout) else None,
                "n_with_perturbed": sum("perturbed_answer" in e.meta for e in forget),
                "max_examples": max_examples},
    )  # fmt: skip
