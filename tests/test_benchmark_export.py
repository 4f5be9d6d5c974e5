"""The people world exported in TOFU's and MUSE's hub layouts: the files and cards match the
benchmarks' (config names and order from the ``locuslab/TOFU`` and ``muse-bench/MUSE-News``
cards, their columns), and loading an export back through the benchmark loaders gives the
examples that went in (the round trip).
"""

from __future__ import annotations

from pathlib import Path

import datasets
import pytest
import yaml

from expunge.data.benchmarks import load_benchmark
from expunge.data.benchmarks.export import (
    export_benchmark,
    export_muse,
    export_tofu,
    muse_layout,
    tofu_layout,
)
from expunge.data.benchmarks.tofu import truth_ratio_answers
from expunge.data.hub_layout import write_hub_layout
from expunge.data.people import fictitious_people
from expunge.errors import ConfigError, DataError, OutputExistsError
from expunge.imprints.base import load_imprint
from expunge.imprints.knowledge import KnowledgeImprint

# The locuslab/TOFU card's configs in its order; the hub also holds holdout01/05/10 (which
# open-unlearning's configs/data/datasets/TOFU_MIA.yaml loads), and the export appends them.
TOFU_CARD_CONFIGS = [
    "full", "forget01", "forget05", "forget10", "retain90", "retain95", "retain99",
    "world_facts", "real_authors", "forget01_perturbed", "forget05_perturbed",
    "forget10_perturbed", "retain_perturbed", "world_facts_perturbed", "real_authors_perturbed",
]  # fmt: skip


@pytest.fixture(autouse=True)
def _private_datasets_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))


def front_matter(root: Path) -> dict:
    text = (root / "README.md").read_text(encoding="utf-8")
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


# -- TOFU -------------------------------------------------------------------------------------


def test_tofu_export_has_the_cards_configs_and_columns(tmp_path):
    root = export_tofu(tmp_path / "tofu", n_people=20, seed=1)
    configs = front_matter(root)["configs"]
    names = [c["config_name"] for c in configs]
    assert names == [*TOFU_CARD_CONFIGS, "holdout01", "holdout05", "holdout10"]
    assert configs[0] == {"config_name": "full", "data_files": "full.json", "default": True}
    assert all(c["data_files"] == f"{c['config_name']}.json" for c in configs)
    assert sorted(p.name for p in root.iterdir()) == sorted(
        ["README.md"] + [f"{n}.json" for n in names]
    )
    perturbed = datasets.load_dataset(str(root), name="forget10_perturbed", split="train")
    assert perturbed.column_names == [
        "question", "answer", "paraphrased_answer", "perturbed_answer", "paraphrased_question",
    ]  # fmt: skip
    real = datasets.load_dataset(str(root), name="real_authors_perturbed", split="train")
    assert real.column_names == ["question", "answer", "perturbed_answer"]
    assert real[0]["answer"] not in real[0]["perturbed_answer"]


def test_tofu_round_trip(tmp_path):
    n, seed = 20, 3  # forget05 = 1 person, forget10 = 2 people, holdout10 = 2 outsiders
    root = export_tofu(tmp_path / "tofu", n_people=n, seed=seed)
    imprint = load_benchmark("tofu", "forget10", source=str(root))
    everyone = fictitious_people(n + 2, seed)
    world, outsiders = everyone[:n], everyone[n:]
    people_forget = [e for p in world[n - 2 :] for e in p.qa()]
    assert [(e.prompt, e.response) for e in imprint.forget] == [
        (e.prompt, e.response) for e in people_forget
    ]
    for loaded, original in zip(imprint.forget, people_forget, strict=True):
        assert loaded.meta["paraphrased_answer"] == original.meta["paraphrase"]
        assert loaded.meta["perturbed_answer"] == original.meta["perturbed"]
        # one reader for both conventions, TOFU's column names and the people world's
        assert truth_ratio_answers(loaded) == truth_ratio_answers(original)
        assert truth_ratio_answers(loaded) == (
            original.meta["paraphrase"],
            original.meta["perturbed"],
        )
    assert [e.prompt for e in imprint.retain] == [e.prompt for p in world[: n - 2] for e in p.qa()]
    assert [e.prompt for e in imprint.holdout] == [e.prompt for p in outsiders for e in p.qa()]
    retain_eval = imprint.eval_sets["retain_perturbed"]
    assert [e.prompt for e in retain_eval] == [e.prompt for p in world[:2] for e in p.qa()]
    # real authors' wrong answers have no paraphrase: the answer itself is the base
    author = imprint.eval_sets["real_authors"][0]
    assert truth_ratio_answers(author) == (author.response, author.meta["perturbed_answer"])
    assert len(imprint.eval_sets["real_authors"]) == 32
    assert len(imprint.eval_sets["world_facts"]) == 48
    # the imprint file keeps all of it
    loaded = load_imprint(imprint.save(tmp_path / "imprint.json"))
    assert isinstance(loaded, KnowledgeImprint)
    assert loaded == imprint
    assert loaded.summary()["eval_sets"] == {"retain_perturbed": 10, "real_authors": 32,
                                             "world_facts": 48}  # fmt: skip


# -- MUSE ---------------------------------------------------------------------------------------


def test_muse_export_has_the_cards_layout(tmp_path):
    root = export_muse(tmp_path / "muse", n_people=12, seed=0)
    configs = {c["config_name"]: c["data_files"] for c in front_matter(root)["configs"]}
    assert configs["knowmem"] == [
        {"split": s, "path": f"knowmem/{s}-*"}
        for s in ("forget_qa", "forget_qa_icl", "retain_qa", "retain_qa_icl")
    ]
    assert sorted(configs) == ["knowmem", "privleak", "raw", "train", "verbmem"]
    assert (root / "verbmem" / "forget-00000-of-00001.parquet").is_file()
    verbmem = datasets.load_dataset(str(root), name="verbmem", split="forget")
    assert verbmem.column_names == ["prompt", "gt"]
    privleak = datasets.get_dataset_split_names(str(root), config_name="privleak")
    assert sorted(privleak) == ["forget", "holdout", "retain"]


@pytest.mark.parametrize("name", ["muse_news", "muse_books"])
def test_muse_round_trip(tmp_path, name):
    n, seed = 12, 2  # 1 forget person, 11 to retain (6 + 5), 1 holdout, 2 few-shot people
    root = export_muse(tmp_path / "muse", n_people=n, seed=seed)
    imprint = load_benchmark(name, source=str(root))
    everyone = fictitious_people(n + 3, seed)
    world, outsiders = everyone[:n], everyone[n:]
    bios = [p.bio().text for p in world[n - 1 :]]
    assert [e.text for e in imprint.forget] == bios
    assert [e.text for e in imprint.retain] == [p.bio().text for p in world[:6]]
    assert [e.text for e in imprint.holdout] == [outsiders[0].bio().text]
    verbmem = imprint.eval_sets["verbmem_forget"]
    assert [f"{e.prompt} {e.response}" for e in verbmem] == bios
    knowmem = imprint.eval_sets["knowmem_forget"]
    assert [(e.prompt, e.response) for e in knowmem] == [
        (e.prompt, e.meta["answer"]) for e in world[n - 1].qa()
    ]
    assert [e.prompt for e in imprint.eval_sets["knowmem_retain"]] == [
        e.prompt for e in world[6].qa()
    ]
    assert [e.prompt for e in imprint.eval_sets["knowmem_forget_icl"]] == [
        e.prompt for e in outsiders[1].qa()
    ]
    assert [e.text for e in imprint.eval_sets["privleak_forget"]] == bios
    assert imprint.benchmark is not None and imprint.benchmark.name == name


def test_muse_scaled_forget_split_missing_from_the_source(tmp_path):
    root = export_muse(tmp_path / "muse", n_people=12)
    with pytest.raises(DataError, match=r"lacks the MUSE \(muse_news\) config 'scal'; it has: "):
        load_benchmark("muse_news", "scal/forget_2", source=str(root))
    with pytest.raises(
        ConfigError, match=r"unknown muse_books split 'scal/forget_2'.*; known: forget$"
    ):
        load_benchmark("muse_books", "scal/forget_2", source=str(root))


def test_muse_source_missing_a_split_names_it(tmp_path):
    root = export_muse(tmp_path / "muse", n_people=12)
    (root / "knowmem" / "retain_qa_icl-00000-of-00001.parquet").unlink()
    card = (root / "README.md").read_text()
    (root / "README.md").write_text(
        card.replace("  - split: retain_qa_icl\n    path: knowmem/retain_qa_icl-*\n", "")
    )
    with pytest.raises(DataError) as info:
        load_benchmark("muse_news", source=str(root))
    assert str(info.value) == (
        f"{root} lacks the split 'retain_qa_icl' of the MUSE (muse_news) config 'knowmem'; "
        "it has: forget_qa, forget_qa_icl, retain_qa"
    )


def test_max_examples_caps_every_set(tmp_path):
    root = export_tofu(tmp_path / "tofu", n_people=20)
    imprint = load_benchmark("tofu", source=str(root), max_examples=3)
    assert len(imprint.forget) == len(imprint.retain) == 3
    assert all(len(v) == 3 for v in imprint.eval_sets.values())
    assert all("perturbed_answer" in e.meta for e in imprint.forget)


def test_exports_write_nothing_on_bad_input(tmp_path):
    with pytest.raises(ConfigError, match="at least 2 people"):
        export_tofu(tmp_path / "a", n_people=1)
    with pytest.raises(ConfigError, match=r"forget_ratio must be in \(0, 1\)"):
        export_muse(tmp_path / "b", forget_ratio=1.0)
    with pytest.raises(ConfigError, match="needs at least 2 people to retain"):
        export_muse(tmp_path / "c", n_people=2)
    assert list(tmp_path.iterdir()) == []
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "mine.txt").write_text("keep")
    with pytest.raises(OutputExistsError):
        export_tofu(taken, n_people=4)
    assert [p.name for p in taken.iterdir()] == ["mine.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_layouts_are_deterministic():
    assert tofu_layout(10, seed=4) == tofu_layout(10, seed=4)
    assert muse_layout(10, seed=4) == muse_layout(10, seed=4)
    assert tofu_layout(10, seed=4) != tofu_layout(10, seed=5)


@pytest.mark.parametrize(
    ("layout", "fmt", "default", "message"),
    [
        ({"a": {"test": [{"text": "x"}]}}, "json", None, "one 'train' split per config"),
        ({"a": {"train": []}}, "parquet", None, "each split non-empty"),
        ({}, "json", None, "at least one config"),
        ({"a": {"train": [{"text": "x"}]}}, "json", "b", "default config 'b' is not among a"),
    ],
)
def test_hub_layout_refuses_what_the_layout_cannot_hold(tmp_path, layout, fmt, default, message):
    with pytest.raises(ConfigError, match=message):
        write_hub_layout(tmp_path, layout, fmt, default=default)
    assert list(tmp_path.iterdir()) == []


def test_export_by_name(tmp_path):
    root = export_benchmark("muse", tmp_path / "m", n_people=6, forget_ratio=0.2, seed=1)
    assert (root / "raw" / "forget-00000-of-00001.parquet").is_file()
    with pytest.raises(ConfigError, match=r"no export for 'tofu2' .*; known: tofu, muse"):
        export_benchmark("tofu2", tmp_path / "x")
    with pytest.raises(ConfigError, match="export tofu has no option 'forget_ratio'; its options: "
                                          "n_people, seed, overwrite"):  # fmt: skip
        export_benchmark("tofu", tmp_path / "y", forget_ratio=0.2)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
