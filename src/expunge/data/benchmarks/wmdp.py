"""WMDP (Li et al., *The WMDP Benchmark: Measuring and Reducing Malicious Use With Unlearning*,
2024) as a knowledge imprint: the forget (and retain) corpora to unlearn from, and the
multiple-choice tasks that judge it, run by the ``lm_eval`` metric — ``wmdp_bio`` and/or
``wmdp_cyber`` (accuracy should fall to chance, 0.25) with ``mmlu`` (accuracy should stay).

Sources of the corpora (one ``text`` per row; other columns such as ``title``, ``abstract``,
``doi`` stay in ``meta``):

- a local directory as the WMDP repository's ``data/`` folder holds them (and as
  open-unlearning's ``configs/data/datasets/WMDP_forget.yaml`` reads them):
  ``bio-forget-corpus.jsonl``, ``bio-retain-corpus.jsonl``, ``cyber-forget-corpus.jsonl``,
  ``cyber-retain-corpus.jsonl``; the retain files are optional. The bio forget corpus is gated:
  its authors hand it out on request;
- or a directory / hub id with those four names as configs; by default the hub's
  ``cais/wmdp-corpora`` (configs ``bio-retain-corpus``, ``cyber-forget-corpus``,
  ``cyber-retain-corpus``) and the gated ``cais/wmdp-bio-forget-corpus``.
"""

from __future__ import annotations

from pathlib import Path

from expunge.config import suggest
from expunge.data.benchmarks.base import TEXT_COLUMNS, Source, is_local
from expunge.data.examples import Example
from expunge.data.loaders import load_examples, load_hf_dataset
from expunge.errors import ConfigError, DataError
from expunge.imprints.knowledge import BenchmarkSource, KnowledgeImprint

HUB_CORPORA = "cais/wmdp-corpora"
HUB_BIO_FORGET = "cais/wmdp-bio-forget-corpus"  # gated: request access from the WMDP authors
TASKS = {"bio": "wmdp_bio", "cyber": "wmdp_cyber"}  # lm-evaluation-harness task per domain
UTILITY_TASKS = ("mmlu",)
SPLITS = ("bio", "cyber", "all")
DEFAULT_SPLIT = "bio"


def corpus_name(domain: str, part: str) -> str:
    return f"{domain}-{part}-corpus"


def _local_corpus(
    directory: Path, name: str, required: bool, max_examples: int | None
) -> list[Example]:
    path = directory / f"{name}.jsonl"
    if path.is_file():
        return load_examples(path, columns=TEXT_COLUMNS, max_examples=max_examples)
    if (directory / "README.md").is_file():  # the hub layout: the corpora are configs
        src = Source("WMDP", str(directory))
        if src.has(name):
            return src.load(name, columns=TEXT_COLUMNS, max_examples=max_examples)
    if required:
        raise DataError(
            f"{directory} lacks {name}.jsonl, WMDP's forget corpus (the bio one is gated: "
            f"its authors hand it out on request)"
        )
    return []


def _hub_corpus(spec: str | None, name: str, max_examples: int | None) -> list[Example]:
    if spec is None and name == corpus_name("bio", "forget"):
        return load_hf_dataset(HUB_BIO_FORGET, "train", TEXT_COLUMNS, None, max_examples)
    return Source("WMDP", spec or HUB_CORPORA).load(
        name, columns=TEXT_COLUMNS, max_examples=max_examples
    )


def load(
    split: str | None = None, source: str | None = None, max_examples: int | None = None
) -> KnowledgeImprint:
    """WMDP's ``split`` domain (bio, cyber or all): its forget/retain corpora and audit tasks."""
    split = split or DEFAULT_SPLIT
    if split not in SPLITS:
        raise ConfigError(
            f"unknown WMDP split {split!r}{suggest(split, list(SPLITS))}; known: {', '.join(SPLITS)}"
        )
    domains = list(TASKS) if split == "all" else [split]
    directory = Path(source).expanduser() if source is not None and is_local(source) else None
    if directory is not None and not directory.is_dir():
        raise DataError(f"WMDP source not found: {source} (a directory or a hub id)")
    forget: list[Example] = []
    retain: list[Example] = []
    for domain in domains:
        for part, into in (("forget", forget), ("retain", retain)):
            name = corpus_name(domain, part)
            if directory is not None:
                into += _local_corpus(directory, name, part == "forget", max_examples)
            else:
                into += _hub_corpus(source, name, max_examples)
    tasks = [TASKS[d] for d in domains] + list(UTILITY_TASKS)
    return KnowledgeImprint(
        scheme="wmdp",
        forget=forget,
        retain=retain,
        benchmark=BenchmarkSource(
            name="wmdp", source=source or HUB_CORPORA, split=split, lm_eval_tasks=tasks
        ),
        origin={"benchmark": "wmdp", "source": source or HUB_CORPORA, "split": split,
                "lm_eval_tasks": tasks, "max_examples": max_examples},
    )  # fmt: skip
