"""The shipped TOFU and MUSE studies, end to end on a tiny model and small exports: every stage
runs, the audits write open-unlearning's files, forget quality from the retrained model's
TOFU_EVAL.json equals forget quality from its audit record; and the benchmark implant on the
command line, with its bad inputs (one line, exit 2, nothing written)."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest

from expunge.data.benchmarks.export import export_muse, export_tofu
from expunge.imprints.base import load_imprint
from expunge.pipeline import load_pipeline, run_pipeline
from helpers import run_cli, save_wide_tiny_llama

STUDIES = Path(__file__).resolve().parents[1] / "configs" / "studies"
STEPS = ["train.max_steps=1", "train.progress=false"]


@pytest.fixture(autouse=True)
def _private_datasets_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return save_wide_tiny_llama(tmp_path_factory.mktemp("tiny"))


def tiny_overrides(names: list[str], source: Path, tiny: Path, out: Path) -> list[str]:
    overrides = [f"model={tiny}", f"out={out}", f"imprint.implant.source={source}",
                 "imprint.implant.train.max_steps=1", "imprint.implant.train.progress=false",
                 "erasers.RMU.rmu.layer=1", "erasers.RMU.rmu.params=[layers.1.mlp.down_proj]"]  # fmt: skip
    for name in names:
        overrides += [f"erasers.{name}.train.max_steps=1", f"erasers.{name}.train.progress=false"]
    return overrides


def record(run: Path, stage: str) -> dict:
    return json.loads((run / stage / "record.json").read_text())


def test_tofu_study_end_to_end(tmp_path, tiny):
    source = export_tofu(tmp_path / "tofu-layout", n_people=10)
    out = tmp_path / "run"
    erasers = ["GA", "GradDiff", "NPO", "SimNPO", "IdkDPO", "RMU"]
    overrides = [*tiny_overrides(erasers, source, tiny, out), "stages.retrained.train.max_steps=1",
                 "audit.options.model_utility={max_examples: 3}"]  # fmt: skip
    config, locate = load_pipeline(STUDIES / "tofu_demo.yaml", overrides)
    run_pipeline(config, locate=locate)
    for stage in ["audit/imprinted", "audit/reference", *(f"audit/{e}" for e in erasers)]:
        metrics = record(out, stage)["metrics"]
        summary = json.loads((out / stage / "TOFU_SUMMARY.json").read_text())
        assert summary["model_utility"] == pytest.approx(metrics["model_utility"])
        assert summary["forget_Q_A_ROUGE"] == pytest.approx(metrics["forget_rouge_l"])
    logs = json.loads((out / "audit/reference/TOFU_EVAL.json").read_text())
    assert {"forget_truth_ratio", "mia_min_k", "model_utility", "ra_Truth_Ratio"} <= set(logs)
    npo, from_eval = record(out, "audit/NPO"), record(out, "audit/NPO-from-eval")
    assert from_eval["metrics"]["forget_quality"] == npo["metrics"]["forget_quality"]
    assert from_eval["metrics"]["privleak"] == pytest.approx(npo["metrics"]["privleak"])
    assert "TOFU_EVAL.json" in from_eval["metric_details"]["forget_quality"]["reference"]
    assert (out / "report.html").is_file()


def test_muse_study_end_to_end(tmp_path, tiny):
    source = export_muse(tmp_path / "muse-layout", n_people=30, seed=1)
    out = tmp_path / "run"
    erasers = ["GA", "GradDiff", "NPO", "SimNPO", "RMU"]
    overrides = [*tiny_overrides(erasers, source, tiny, out), "stages.retrained.source=" + str(source),
                 "stages.retrained.train.max_steps=1"]  # fmt: skip
    config, locate = load_pipeline(STUDIES / "muse_demo.yaml", overrides)
    run_pipeline(config, locate=locate)
    imprint = load_imprint(out / "implant")
    assert imprint.benchmark is not None and imprint.benchmark.name == "muse_news"
    taught = record(out, "implant")["inputs"]["n_examples"]
    assert taught == len(imprint.forget) + len(imprint.retain) + len(imprint.eval_sets["retain2"])
    for stage in ["audit/imprinted", "audit/reference", *(f"audit/{e}" for e in erasers)]:
        metrics = record(out, stage)["metrics"]
        summary = json.loads((out / stage / "MUSE_SUMMARY.json").read_text())
        assert summary["forget_knowmem_ROUGE"] == pytest.approx(metrics["knowmem_forget"])
        assert summary["retain_knowmem_ROUGE"] == pytest.approx(metrics["knowmem_retain"])
        assert summary["forget_verbmem_ROUGE"] == pytest.approx(metrics["forget_verbatim_rouge_l"])
        if stage != "audit/reference":
            assert summary["privleak"] == pytest.approx(metrics["privleak"])


# -- the command line ----------------------------------------------------------------------------


def test_implant_benchmark_on_the_command_line(tmp_path, tiny, capsys):
    source = export_tofu(tmp_path / "tofu", n_people=10)
    out = tmp_path / "full"
    code, _, err = run_cli(["implant", "knowledge", "--scheme", "benchmark", "--model", str(tiny),
                            "-o", str(out), "benchmark=tofu", "split=forget05",
                            f"source={source}", *STEPS], capsys)  # fmt: skip
    assert code == 0, err
    imprint = load_imprint(out)
    assert imprint.benchmark.split == "forget05" and len(imprint.forget) == 5
    assert (out / "model" / "config.json").is_file()
    rec = json.loads((out / "record.json").read_text())
    assert rec["inputs"]["n_examples"] == len(imprint.forget) + len(imprint.retain)


def test_export_on_the_command_line(tmp_path, capsys):
    code, _, _ = run_cli(["export", "muse", "--out", str(tmp_path / "m"), "--n-people", "6",
                            "--seed", "3"], capsys)  # fmt: skip
    assert code == 0 and (tmp_path / "m" / "raw").is_dir()
    code, _, err = run_cli(["export", "muse", "--out", str(tmp_path / "m"), "--n-people", "6"],
                           capsys)  # fmt: skip
    assert code == 2 and "exists" in err and len(err.strip().splitlines()) == 1


def bad(args: list[str], capsys, out: Path) -> str:
    code, _, err = run_cli(args, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert not out.exists() and not any(
        p.name.startswith(f".{out.name}") for p in out.parent.iterdir()
    )
    return lines[0]


def test_bad_benchmark_inputs_fail_in_one_line_and_write_nothing(tmp_path, capsys):
    source = export_tofu(tmp_path / "tofu", n_people=10)
    out = tmp_path / "out"
    implant = ["implant", "knowledge", "--scheme", "benchmark", "-o", str(out)]
    line = bad([*implant, "benchmark=tofuu", f"source={source}"], capsys, out)
    assert (
        "unknown benchmark 'tofuu'" in line and "known: muse_books, muse_news, tofu, wmdp" in line
    )
    line = bad([*implant, "benchmark=tofu", "split=forget20", f"source={source}"], capsys, out)
    assert "unknown TOFU split 'forget20'" in line and "known: forget01, forget05, forget10" in line
    # a local directory missing a split: MUSE's knowmem without retain_qa
    muse = export_muse(tmp_path / "muse", n_people=12)
    (muse / "knowmem" / "retain_qa-00000-of-00001.parquet").unlink()
    card = (muse / "README.md").read_text()
    (muse / "README.md").write_text(
        card.replace("  - split: retain_qa\n    path: knowmem/retain_qa-*\n", "")
    )
    line = bad([*implant, "benchmark=muse_news", f"source={muse}"], capsys, out)
    assert "lacks the split 'retain_qa' of the MUSE (muse_news) config 'knowmem'" in line
    assert "it has: forget_qa, forget_qa_icl, retain_qa_icl" in line
    # a column mapping to a column that does not exist
    finetune = ["finetune", "-o", str(out), "--data", str(source), "data.config=forget10"]
    line = bad([*finetune, "data.columns.prompt=query", "data.columns.response=answer"], capsys,
               out)  # fmt: skip
    assert "has no column 'query' (mapped to prompt); its columns: question, answer" in line


def test_a_benchmark_imprint_brings_its_own_default_audits(tmp_path):
    """Without audit metrics a MUSE study audits VerbMem and KnowMem (its forget set is text,
    which the knowledge defaults' Q/A accuracy cannot read); erasers' stage audits follow."""
    from expunge.audit.defaults import BENCHMARK_AUDITS, default_metrics
    from expunge.pipeline import parse_pipeline, plan_pipeline

    study = {"command": "run", "imprint": {"implant": {"scheme": "benchmark",
                                                       "benchmark": "muse_news"}},
             "erasers": [{"method": "unlearn", "objective": "ga"}]}  # fmt: skip
    plan = plan_pipeline(parse_pipeline(study), tmp_path / "run")
    assert plan.metrics == BENCHMARK_AUDITS["muse_news"]
    assert plan.stage("erase/unlearn").config.audit_metrics == BENCHMARK_AUDITS["muse_news"]
    tofu = load_benchmark_imprint(tmp_path)
    assert default_metrics("knowledge", tofu) == BENCHMARK_AUDITS["tofu"]
    assert default_metrics("knowledge") == default_metrics("knowledge", None, None)


def load_benchmark_imprint(tmp_path: Path):
    from expunge.data.benchmarks import load_benchmark

    return load_benchmark("tofu", source=str(export_tofu(tmp_path / "t", n_people=10)))
