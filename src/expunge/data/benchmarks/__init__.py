"""Unlearning benchmarks as knowledge imprints, loaded by name from the hub or from a local
directory in the hub's exact layout (the same ``datasets.load_dataset`` call either way).

==============  ===========================  ================================================
name            hub id (default source)      split (the benchmark's selector)
==============  ===========================  ================================================
``tofu``        ``locuslab/TOFU``            ``forget01``, ``forget05``, ``forget10`` (default)
``muse_news``   ``muse-bench/MUSE-News``     ``forget`` (default), ``scal/forget_1..4``,
                                             ``sust/forget_1..4``
``muse_books``  ``muse-bench/MUSE-Books``    ``forget``
``wmdp``        ``cais/wmdp-corpora``        ``bio`` (default), ``cyber``, ``all``
==============  ===========================  ================================================

Each module says which hub configs fill the imprint's forget, retain and holdout sets and its
named ``eval_sets``. ``expunge.data.benchmarks.export`` writes the synthetic people world in
TOFU's and MUSE's layouts, so the same loaders run offline.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from expunge.registry import BENCHMARKS

if TYPE_CHECKING:
    from expunge.imprints.knowledge import KnowledgeImprint


def load_benchmark(
    name: str,
    split: str | None = None,
    source: str | None = None,
    max_examples: int | None = None,
) -> KnowledgeImprint:
    """The benchmark ``name`` as a knowledge imprint. ``split`` selects the forget set (each
    benchmark's default when None), ``source`` is a hub id or local directory in the hub layout
    (the benchmark's hub id when None), ``max_examples`` caps every set loaded."""
    loader = BENCHMARKS.get(name)
    return loader(split=split, source=source, max_examples=max_examples)


__all__ = ["BENCHMARKS", "load_benchmark"]
