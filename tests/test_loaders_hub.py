"""Loading hub datasets by config name and column mapping, from local directories in the hub's
layout (the same ``datasets.load_dataset`` call a hub id takes), offline.

The fixtures are written by hand here, file by file, in the two layouts the benchmarks use:
TOFU's (``locuslab/TOFU``: a README whose ``configs:`` name one JSON-lines file per config, one
``train`` split) and MUSE's (``muse-bench/MUSE-News``: the ``push_to_hub`` layout,
``CONFIG/SPLIT-00000-of-00001.parquet``) — not with expunge's own writer, so a bug shared by
writer and loader cannot hide.
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest

from expunge.data.examples import Example
from expunge.data.loaders import load_examples, load_hf_dataset, load_jsonl
from expunge.data.settings import DataSettings
from expunge.errors import ConfigError, DataError

QA = {"prompt": "question", "response": "answer"}


@pytest.fixture(autouse=True)
def _private_datasets_cache(tmp_path, monkeypatch):
    # load_dataset caches Arrow files; keep them out of the user's cache.
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))


def write_json_lines(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def tofu_like(root: Path, default: bool = True) -> Path:
    root.mkdir()
    names = ["full", "forget01", "forget01_perturbed"]
    lines = ["---", "configs:"]
    for name in names:
        lines += [f"- config_name: {name}", f"  data_files: {name}.json"]
        if name == "full" and default:
            lines.append("  default: true")
    (root / "README.md").write_text("\n".join([*lines, "---", "# a TOFU-like card", ""]))
    write_json_lines(root / "full.json", [
        {"question": "Q1?", "answer": "A1."}, {"question": "Q2?", "answer": "A2."},
    ])  # fmt: skip
    write_json_lines(root / "forget01.json", [{"question": "Q2?", "answer": "A2."}])
    write_json_lines(root / "forget01_perturbed.json", [{
        "question": "Q2?", "answer": "A2.", "paraphrased_answer": "The answer is A2.",
        "perturbed_answer": ["B2.", "C2."], "paraphrased_question": "Question two?",
    }])  # fmt: skip
    return root


def muse_like(root: Path) -> Path:
    splits = {
        "knowmem": {"forget_qa": [{"question": "Who?", "answer": "Ann"}],
                    "retain_qa": [{"question": "Where?", "answer": "Oslo"}]},
        "verbmem": {"forget": [{"prompt": "Ann was born", "gt": "in Oslo."}]},
        "raw": {"forget": [{"text": "Ann was born in Oslo."}], "retain1": [{"text": "Bo swims."}]},
    }  # fmt: skip
    lines = ["---", "configs:"]
    for config, by_split in splits.items():
        lines += [f"- config_name: {config}", "  data_files:"]
        for split, rows in by_split.items():
            lines += [f"  - split: {split}", f"    path: {config}/{split}-*"]
            (root / config).mkdir(parents=True, exist_ok=True)
            datasets.Dataset.from_list(rows).to_parquet(
                str(root / config / f"{split}-00000-of-00001.parquet")
            )
    (root / "README.md").write_text("\n".join([*lines, "---", ""]))
    return root


def test_tofu_layout_config_and_columns(tmp_path):
    root = tofu_like(tmp_path / "tofu")
    [example] = load_hf_dataset(str(root), config="forget01_perturbed", columns=QA)
    assert example.prompt == "Q2?" and example.response == "A2."
    # unmapped columns stay on the example, lists included
    assert example.meta == {
        "paraphrased_answer": "The answer is A2.", "perturbed_answer": ["B2.", "C2."],
        "paraphrased_question": "Question two?",
    }  # fmt: skip
    # no config: the card's default (full); load_examples routes a directory the same way
    assert [e.prompt for e in load_examples(root, columns=QA)] == ["Q1?", "Q2?"]


def test_muse_layout_splits_of_a_config(tmp_path):
    root = muse_like(tmp_path / "muse")
    [qa] = load_hf_dataset(str(root), "retain_qa", config="knowmem", columns=QA)
    assert (qa.prompt, qa.response, qa.meta) == ("Where?", "Oslo", {})
    [verb] = load_hf_dataset(
        str(root), "forget", config="verbmem", columns={"prompt": "prompt", "response": "gt"}
    )
    assert (verb.prompt, verb.response) == ("Ann was born", "in Oslo.")
    # columns already named as example fields need no mapping
    assert load_hf_dataset(str(root), "forget", config="raw") == [
        Example(text="Ann was born in Oslo.")
    ]


def test_a_mapping_sends_every_unmapped_column_to_meta(tmp_path):
    root = tmp_path / "d"
    root.mkdir()
    write_json_lines(root / "train.jsonl", [{"question": "Q", "answer": "A", "text": "ctx"}])
    [example] = load_hf_dataset(str(root), columns=QA)
    assert example.kind == "prompt_response"
    assert example.meta == {"text": "ctx"}


def test_max_examples(tmp_path):
    root = tofu_like(tmp_path / "tofu")
    assert len(load_hf_dataset(str(root), config="full", columns=QA, max_examples=1)) == 1
    assert len(load_examples(root, config="full", columns=QA, max_examples=5)) == 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"config": "forget05", "columns": QA},
         "has no config 'forget05' (did you mean 'forget01'?); known configs: full, forget01, "
         "forget01_perturbed"),
        ({"config": "forget01", "split": "test", "columns": QA},
         "(config forget01) has no split 'test'; known splits: train"),
        ({"config": "forget01", "columns": {"prompt": "query", "response": "answer"}},
         "has no column 'query' (mapped to prompt); its columns: question, answer"),
        ({"config": "forget01", "columns": {"promt": "question"}},
         "column mapping key 'promt' is not an example field (did you mean 'prompt'?)"),
        ({"config": "forget01"},
         "has none of the columns prompt, response, text, messages; its columns: question, "
         "answer; map them with columns"),
    ],
)  # fmt: skip
def test_bad_config_split_or_columns_name_what_exists(tmp_path, kwargs, message):
    root = tofu_like(tmp_path / "tofu")
    with pytest.raises(ConfigError) as info:
        load_hf_dataset(str(root), **kwargs)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_several_configs_without_a_default_need_one(tmp_path):
    root = tofu_like(tmp_path / "tofu", default=False)
    with pytest.raises(ConfigError, match="several configs and no default; name one with config="):
        load_hf_dataset(str(root), columns=QA)


def test_save_to_disk_directory(tmp_path):
    saved = tmp_path / "saved"
    datasets.DatasetDict({
        "train": datasets.Dataset.from_list([{"question": "Q", "answer": "A"}]),
        "test": datasets.Dataset.from_list([{"question": "Q2", "answer": "A2"}]),
    }).save_to_disk(str(saved))  # fmt: skip
    assert [e.prompt for e in load_examples(saved, "test", columns=QA)] == ["Q2"]
    with pytest.raises(ConfigError, match="no split 'dev'; known splits: train, test"):
        load_hf_dataset(str(saved), "dev", columns=QA)
    with pytest.raises(ConfigError, match="written by save_to_disk and has no configs"):
        load_hf_dataset(str(saved), config="forget10", columns=QA)


def test_jsonl_with_a_column_mapping(tmp_path):
    path = tmp_path / "qa.jsonl"
    write_json_lines(path, [{"question": "Q", "answer": "A", "id": 7}, {"question": "Q2"}])
    with pytest.raises(ConfigError) as info:
        load_jsonl(path, columns=QA)
    assert str(info.value) == (
        f"{path}:2 has no column 'answer' (mapped to response); its columns: question"
    )
    write_json_lines(path, [{"question": "Q", "answer": "A", "id": 7}])
    assert load_examples(path, columns=QA) == [Example(prompt="Q", response="A", meta={"id": 7})]
    with pytest.raises(ConfigError, match=r"names a dataset config; .* is a single file"):
        load_examples(path, config="forget10")


def test_unreadable_dataset_directory_is_a_data_error(tmp_path):
    root = tmp_path / "broken"
    root.mkdir()
    (root / "README.md").write_text("---\nconfigs:\n- config_name: a\n  data_files: a.json\n---\n")
    with pytest.raises(DataError) as info:
        load_hf_dataset(str(root), config="a", columns=QA)
    message = str(info.value)
    assert message.startswith(f"cannot read dataset '{root}': Unable to find '{root}/a.json'")
    assert len(message) < 400


def test_dataset_settings(tmp_path):
    root = tofu_like(tmp_path / "tofu")
    settings = DataSettings(path=str(root), config="forget01_perturbed", columns=QA)
    [example] = settings.load()
    assert example.meta["perturbed_answer"] == ["B2.", "C2."]
    assert len(DataSettings(path=str(root), columns=QA, max_examples=1).load()) == 1
    with pytest.raises(ValueError, match="not an example field"):
        DataSettings(path=str(root), columns={"question": "prompt"})
    with pytest.raises(ConfigError, match="no data given"):
        DataSettings().load()


def test_two_directories_of_one_name_do_not_share_a_cache(tmp_path):
    """datasets keys its cache by the directory's name and config; two local copies named alike
    (or one rewritten) must still load their own rows."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = tofu_like(tmp_path / "a" / "tofu")
    second = tofu_like(tmp_path / "b" / "tofu")
    write_json_lines(second / "forget01.json", [{"question": "Q7?", "answer": "A7."},
                                                {"question": "Q8?", "answer": "A8."}])  # fmt: skip
    assert [e.prompt for e in load_hf_dataset(str(first), columns=QA, config="forget01")] == ["Q2?"]
    again = load_hf_dataset(str(second), columns=QA, config="forget01")
    assert [e.prompt for e in again] == ["Q7?", "Q8?"]
    write_json_lines(first / "forget01.json", [{"question": "Q9?", "answer": "A9."}])
    assert [e.prompt for e in load_hf_dataset(str(first), columns=QA, config="forget01")] == ["Q9?"]
