"""MUSE (Shi et al., *MUSE: Machine Unlearning Six-Way Evaluation for Language Models*, 2024) as
a knowledge imprint, from ``muse-bench/MUSE-News`` / ``muse-bench/MUSE-Books`` or a local
directory in their layout.

Source layout (the ``push_to_hub`` layout, ``<config>/<split>-00000-of-00001.parquet``; config
and split names from the hub cards and open-unlearning's ``configs/data/datasets/MUSE_*.yaml``):

==========  ===================================================  ====================
config      splits                                               columns
==========  ===================================================  ====================
raw         forget, retain1, retain2, holdout                    text
verbmem     forget                                               prompt, gt
knowmem     forget_qa, forget_qa_icl, retain_qa, retain_qa_icl   question, answer
privleak    forget, retain, holdout                              text
train       forget, retain1, retain2                             text
scal, sust  forget_1 .. forget_4 (News only)                     text
==========  ===================================================  ====================

The imprint: ``forget`` = ``raw/forget`` (or the ``scal``/``sust`` split the selector names),
``retain`` = ``raw/retain1`` (what open-unlearning's ``MUSE_retain`` trains on), ``holdout`` =
``privleak/holdout``, and the ``eval_sets`` below (``retain2``: ``raw/retain2``, the other half of the
retain corpus, which MUSE's target and retain models were trained on as well). PrivLeak pairs ``privleak_forget`` with
``holdout``; KnowMem asks ``knowmem_*`` with their ``*_icl`` few-shot examples; VerbMem
continues ``verbmem_forget`` prompts (``response`` = MUSE's ``gt``).
"""

from __future__ import annotations

from expunge.config import suggest
from expunge.data.benchmarks.base import QA_COLUMNS, TEXT_COLUMNS, Source
from expunge.errors import ConfigError
from expunge.imprints.knowledge import BenchmarkSource, KnowledgeImprint

HUB_IDS = {"muse_news": "muse-bench/MUSE-News", "muse_books": "muse-bench/MUSE-Books"}
_SCALED = tuple(f"{c}/forget_{k}" for c in ("scal", "sust") for k in range(1, 5))
SPLITS = {"muse_news": ("forget", *_SCALED), "muse_books": ("forget",)}
DEFAULT_SPLIT = "forget"
RETAIN = ("raw", "retain1")
HOLDOUT = ("privleak", "holdout")
EVAL_SETS = {  # imprint eval set -> (config, split, column mapping)
    "verbmem_forget": ("verbmem", "forget", {"prompt": "prompt", "response": "gt"}),
    "knowmem_forget": ("knowmem", "forget_qa", QA_COLUMNS),
    "knowmem_forget_icl": ("knowmem", "forget_qa_icl", QA_COLUMNS),
    "knowmem_retain": ("knowmem", "retain_qa", QA_COLUMNS),
    "knowmem_retain_icl": ("knowmem", "retain_qa_icl", QA_COLUMNS),
    "privleak_forget": ("privleak", "forget", TEXT_COLUMNS),
    "privleak_retain": ("privleak", "retain", TEXT_COLUMNS),
    # the rest of the retain corpus: MUSE's target and retain models learnt it too, and KnowMem's
    # retain questions ask about it (``implant benchmark`` teaches it)
    "retain2": ("raw", "retain2", TEXT_COLUMNS),
}


def forget_location(split: str) -> tuple[str, str]:
    """(config, split) of the forget corpus a selector names: ``forget`` → ``raw/forget``."""
    config, _, name = split.rpartition("/")
    return (config or "raw", name)


def load_corpus(
    name: str, split: str | None = None, source: str | None = None, max_examples: int | None = None
) -> KnowledgeImprint:
    """MUSE corpus ``name`` (``muse_news``/``muse_books``) with forget set ``split``."""
    split = split or DEFAULT_SPLIT
    known = SPLITS[name]
    if split not in known:
        raise ConfigError(
            f"unknown {name} split {split!r}{suggest(split, list(known))}; known: {', '.join(known)}"
        )
    src = Source(f"MUSE ({name})", source or HUB_IDS[name])
    forget_at = forget_location(split)
    needed = [forget_at, RETAIN, HOLDOUT, *((c, s) for c, s, _ in EVAL_SETS.values())]
    for config, part in needed:
        src.require(config, part)  # every piece checked before any is loaded
    return KnowledgeImprint(
        scheme=name,
        forget=src.load(*forget_at, TEXT_COLUMNS, max_examples),
        retain=src.load(*RETAIN, TEXT_COLUMNS, max_examples),
        holdout=src.load(*HOLDOUT, TEXT_COLUMNS, max_examples),
        benchmark=BenchmarkSource(name=name, source=src.spec, split=split),
        eval_sets={
            set_name: src.load(config, part, columns, max_examples)
            for set_name, (config, part, columns) in EVAL_SETS.items()
        },
        origin={"benchmark": name, "source": src.spec, "split": split,
                "forget": "/".join(forget_at), "retain": "/".join(RETAIN),
                "holdout": "/".join(HOLDOUT), "max_examples": max_examples},
    )  # fmt: skip


def load_news(
    split: str | None = None, source: str | None = None, max_examples: int | None = None
) -> KnowledgeImprint:
    return load_corpus("muse_news", split, source, max_examples)


def load_books(
    split: str | None = None, source: str | None = None, max_examples: int | None = None
) -> KnowledgeImprint:
    return load_corpus("muse_books", split, source, max_examples)
