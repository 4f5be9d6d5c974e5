"""TOFU and WMDP as knowledge imprints, from directories written here by hand in the hub's
layout (TOFU: the ``locuslab/TOFU`` card's configs, one JSON-lines file each; WMDP: the corpora
as the WMDP repository's ``data/`` folder holds them, or as hub configs), so the loaders are
checked against the layouts themselves. MUSE and the round trips through the people world's
exports: ``test_benchmark_export.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest

from expunge.data.benchmarks import BENCHMARKS, load_benchmark
from expunge.data.benchmarks.tofu import truth_ratio_answers
from expunge.data.examples import Example
from expunge.errors import ConfigError, DataError


@pytest.fixture(autouse=True)
def _private_datasets_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))


def qa(question: str, answer: str, **extra) -> dict:
    return {"question": question, "answer": answer, **extra}


def hand_written_tofu(root: Path, skip: str | None = None) -> Path:
    """A tiny TOFU-layout directory written line by line (forget01 has two questions, only the
    first of which its perturbed config covers)."""
    root.mkdir()
    pert = {"paraphrased_answer": "Para.", "perturbed_answer": ["W1.", "W2.", "W3."],
            "paraphrased_question": "Q1 again?"}  # fmt: skip
    rows = {
        "full": [qa("Q1?", "A1."), qa("Q2?", "A2."), qa("Q3?", "A3.")],
        "forget01": [qa("Q1?", "A1."), qa("Q2?", "A2.")],
        "forget01_perturbed": [qa("Q1?", "A1.", **pert)],
        "retain99": [qa("Q3?", "A3.")],
        "retain_perturbed": [qa("Q3?", "A3.", **pert)],
        "real_authors_perturbed": [qa("Who wrote Hamlet?", "Shakespeare", perturbed_answer=["X"])],
        "world_facts_perturbed": [qa("Capital of France?", "Paris", perturbed_answer=["Rome"])],
        "holdout01": [qa("Q9?", "A9.")],
    }
    rows = {name: value for name, value in rows.items() if name != skip}
    card = ["---", "configs:"]
    for name, config_rows in rows.items():
        card += [f"- config_name: {name}", f"  data_files: {name}.json"]
        (root / f"{name}.json").write_text("".join(json.dumps(r) + "\n" for r in config_rows))
    (root / "README.md").write_text("\n".join([*card, "---", ""]))
    return root


# -- TOFU ---------------------------------------------------------------------------------------


def test_tofu_from_a_hand_written_layout(tmp_path):
    imprint = load_benchmark("tofu", "forget01", source=str(hand_written_tofu(tmp_path / "t")))
    first, second = imprint.forget
    assert (first.prompt, first.response) == ("Q1?", "A1.")
    assert first.meta == {"paraphrased_answer": "Para.", "perturbed_answer": ["W1.", "W2.", "W3."],
                          "paraphrased_question": "Q1 again?"}  # fmt: skip
    assert second.meta == {}  # the perturbed config does not cover Q2
    assert imprint.origin["n_with_perturbed"] == 1
    assert [e.prompt for e in imprint.retain] == ["Q3?"]
    assert [e.prompt for e in imprint.holdout] == ["Q9?"]
    assert set(imprint.eval_sets) == {"retain_perturbed", "real_authors", "world_facts"}
    assert imprint.eval_sets["world_facts"][0].meta == {"perturbed_answer": ["Rome"]}
    assert imprint.benchmark is not None
    assert (imprint.benchmark.name, imprint.benchmark.split) == ("tofu", "forget01")


def test_tofu_source_missing_a_config_names_it(tmp_path):
    root = hand_written_tofu(tmp_path / "t", skip="real_authors_perturbed")
    with pytest.raises(DataError) as info:
        load_benchmark("tofu", "forget01", source=str(root))
    assert str(info.value).startswith(f"{root} lacks the TOFU config 'real_authors_perturbed'; ")
    # forget05 is a known TOFU split that this directory does not hold
    with pytest.raises(DataError, match="lacks the TOFU config 'forget05'"):
        load_benchmark("tofu", "forget05", source=str(root))


def test_truth_ratio_answers_without_wrong_answers():
    assert truth_ratio_answers(Example(prompt="Q", response="A")) is None
    assert truth_ratio_answers(Example(text="t", meta={"perturbed_answer": ["x"]})) is None


# -- WMDP ---------------------------------------------------------------------------------------


def write_corpus(path: Path, texts: list[str]) -> None:
    path.write_text("".join(json.dumps({"title": f"t{i}", "text": t}) + "\n"
                            for i, t in enumerate(texts)))  # fmt: skip


def test_wmdp_from_local_corpora(tmp_path):
    write_corpus(tmp_path / "cyber-forget-corpus.jsonl", ["exploit one", "exploit two"])
    write_corpus(tmp_path / "cyber-retain-corpus.jsonl", ["networking"])
    imprint = load_benchmark("wmdp", "cyber", source=str(tmp_path))
    assert [e.text for e in imprint.forget] == ["exploit one", "exploit two"]
    assert imprint.forget[0].meta == {"title": "t0"}
    assert [e.text for e in imprint.retain] == ["networking"]
    assert imprint.benchmark is not None
    assert imprint.benchmark.lm_eval_tasks == ["wmdp_cyber", "mmlu"]
    # the retain corpus is optional; the forget corpus is not, and the message names the file
    (tmp_path / "cyber-retain-corpus.jsonl").unlink()
    assert load_benchmark("wmdp", "cyber", source=str(tmp_path)).retain == []
    with pytest.raises(DataError, match=r"lacks bio-forget-corpus\.jsonl, WMDP's forget corpus"):
        load_benchmark("wmdp", "all", source=str(tmp_path))


def test_wmdp_all_domains_and_hub_layout_directory(tmp_path):
    root = tmp_path / "corpora"
    root.mkdir()
    card = ["---", "configs:"]
    for name, text in [("bio-forget-corpus", "virus"), ("cyber-forget-corpus", "exploit")]:
        card += [f"- config_name: {name}", f"  data_files: {name}/train.jsonl"]
        (root / name).mkdir()
        write_corpus(root / name / "train.jsonl", [text])
    (root / "README.md").write_text("\n".join([*card, "---", ""]))
    imprint = load_benchmark("wmdp", "all", source=str(root))
    assert [e.text for e in imprint.forget] == ["virus", "exploit"]
    assert imprint.benchmark is not None
    assert imprint.benchmark.lm_eval_tasks == ["wmdp_bio", "wmdp_cyber", "mmlu"]


# -- names and selectors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "split", "message"),
    [
        ("tofu5", None, "unknown benchmark 'tofu5' (did you mean 'tofu'?); known: muse_books, "
                        "muse_news, tofu, wmdp"),
        ("tofu", "forget7", "?); known: forget01, forget05, forget10"),
        ("muse_news", "retain", "unknown muse_news split 'retain'; known: forget, scal/forget_1"),
        ("wmdp", "chem", "unknown WMDP split 'chem'; known: bio, cyber, all"),
    ],
)  # fmt: skip
def test_unknown_benchmark_or_split_names_the_known_ones(name, split, message):
    with pytest.raises(ConfigError) as info:
        load_benchmark(name, split, source="./nowhere")
    assert message in str(info.value)


@pytest.mark.parametrize("name", BENCHMARKS.names())
def test_missing_local_source(tmp_path, name):
    with pytest.raises(DataError, match="source not found"):
        load_benchmark(name, source=str(tmp_path / "absent"))
