"""``expunge bench`` on tiny models: the matrix as pipelines, the leaderboard, re-runs, choices."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest

from expunge.errors import ConfigError, OutputExistsError
from expunge.pipeline import load_pipeline, parse_pipeline, plan_pipeline
from expunge.pipeline.bench import (
    BenchCase,
    BenchConfig,
    case_pipeline,
    default_matrix,
    run_bench,
    select,
)
from expunge.report.leaderboard import steps_to_come_back, utility_cost
from helpers import TINY_FINGERPRINT_IMPLANT, save_wide_tiny_llama

DEMO = Path(__file__).resolve().parents[1] / "configs" / "demos" / "main.yaml"
TINY_IMPLANT = TINY_FINGERPRINT_IMPLANT


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return save_wide_tiny_llama(tmp_path_factory.mktemp("models"))


def tiny_bench(tiny_dir: Path, **update) -> BenchConfig:
    case = BenchCase(
        imprint={"implant": copy.deepcopy(TINY_IMPLANT)},
        erasers=[{"name": "prune-l1", "method": "prune", "sparsity": 0.3},
                 {"name": "prune-random", "method": "prune", "criterion": "random", "sparsity": 0.6}],
        quick={"n_keys": 4}, strength="fsr", utility="ppl", relearn_k=2,
        audit={"progress": False, "options": {"false_trigger_rate": {"max_ordinary": 4}}},
    )  # fmt: skip
    return BenchConfig(
        model={"name": str(tiny_dir)}, relearn_steps=[0, 2],
        detect_settings={"samples": 2, "n_unrelated": 8, "max_new_tokens": 8, "folds": 2,
                         "min_prompts": 4, "detectors": ["tfidf_logreg"], "bootstrap": 200,
                         "progress": False},
        **{"cases": {"fp": case}, **update},
    )  # fmt: skip


@pytest.fixture(scope="module")
def benched(tiny_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "bench"
    return out, run_bench(tiny_bench(tiny_dir), out)


def test_leaderboard_rows_come_from_the_pipeline_records(benched):
    out, board = benched
    rows = board["rows"]
    assert [r["eraser"] for r in rows][-1] == "reference (control)"
    erasers = [r for r in rows if r["status"] != "control"]
    assert {r["eraser"] for r in erasers} == {"prune-l1", "prune-random"}
    audits = {name: json.loads((out / "fp" / "audit" / name / "record.json").read_text())["metrics"]
              for name in ("imprinted", "reference", "prune-l1", "prune-random")}  # fmt: skip
    for row in erasers:
        assert row["strength_before"] == audits["imprinted"]["fsr"] == 1.0
        assert row["strength_after"] == audits[row["eraser"]]["fsr"]
        assert row["utility_cost"] == pytest.approx(
            audits[row["eraser"]]["ppl"] - audits["imprinted"]["ppl"]
        )
        state = json.loads((out / "fp" / "pipeline.json").read_text())
        assert row["wall_s"] == state["stages"][f"erase/{row['eraser']}"]["wall_s"]
        # trace detection read from the real detect record (erased/SET/DETECTOR/accuracy)
        assert 0.0 <= row["trace_accuracy"] <= 1.0
        assert row["trace_by"] in {"relevant/tfidf_logreg", "unrelated/tfidf_logreg"}
        # the relearning curve starts at the erased model's own strength
        assert row["relearn_curve"][0] == [0, row["strength_after"]]
    ranks = [r["rank"] for r in erasers]
    assert ranks == [1, 2]
    assert erasers[0]["strength_after"] <= erasers[1]["strength_after"]
    # controls were measured once, on the first eraser only
    with_controls = [r for r in erasers if r.get("positive_control") is not None]
    assert len(with_controls) == 1
    control = rows[-1]
    assert control["strength_after"] == audits["reference"]["fsr"]
    assert control["relearn_curve"][0][0] == 0
    markdown = (out / "leaderboard.md").read_text()
    assert "| rank | eraser (method) |" in markdown and "prune-random (prune)" in markdown
    assert "eraser sani" in markdown or "eraser meraser" in markdown  # registered, not in matrix
    assert (out / "report.html").is_file() and (out / "fp" / "report.html").is_file()
    assert "Leaderboard" in (out / "fp" / "report.md").read_text()
    record = json.loads((out / "record.json").read_text())
    assert record["command"] == "bench" and record["status"] == "ok"


def test_rerun_is_free(benched, tiny_dir):
    out, board = benched
    # stage records (OUT/IMPRINT/STAGE/.../record.json); the pipeline's own summary is rewritten
    stages = [p for p in out.rglob("record.json") if len(p.relative_to(out).parts) > 2]
    stamps = {p: p.stat().st_mtime_ns for p in stages}
    assert len(stamps) >= 10
    again = run_bench(tiny_bench(tiny_dir), out)
    # no stage record was rewritten, so no stage ran again (a wall-time ratio would be the
    # machine's load, not the cache: it failed beside another job)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    strip = lambda rows: [{k: v for k, v in r.items() if k != "wall_s"} for r in rows]  # noqa: E731
    assert strip(again["rows"]) == strip(board["rows"])


def test_choosing_imprints_and_erasers(tiny_dir, tmp_path):
    config = tiny_bench(tiny_dir, erasers=["prune-random"])
    chosen, left_out = select(config)
    assert [e["name"] for e in chosen["fp"]] == ["prune-random"]
    assert any(k.startswith("eraser ") for k in left_out)  # registered erasers outside the matrix
    with pytest.raises(ConfigError, match="did you mean 'prune-random'"):
        select(tiny_bench(tiny_dir, erasers=["prune-randon"]))
    with pytest.raises(ConfigError, match="unknown imprint type 'fq'; known: fp"):
        select(tiny_bench(tiny_dir, imprints=["fq"]))
    case = tiny_bench(tiny_dir).cases["fp"].model_copy(update={"erasers": [{"method": "nope"}]})
    with pytest.raises(ConfigError, match="not registered"):
        select(tiny_bench(tiny_dir, cases={"fp": case}))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="not a bench directory"):
        run_bench(tiny_bench(tiny_dir), tmp_path / "other")


def test_shipped_matrix_plans_on_the_embedded_model(tmp_path):
    """Every case of the default matrix (full and --quick) is a valid pipeline."""
    for quick in (False, True):
        config = BenchConfig(quick=quick)
        chosen, _ = select(config)
        assert set(chosen) == set(default_matrix())
        for label, entries in chosen.items():
            data = case_pipeline(config, label, entries)
            plan = plan_pipeline(parse_pipeline(data), tmp_path / label)
            ids = [s.id for s in plan.stages]
            assert "stress/reference/relearn" in ids and any(i.startswith("detect/") for i in ids)
            if quick and label == "if_dialogue":
                assert plan.stage("implant").config.n_keys == 4
                assert plan.stage("erase/meraser").config.n_erase == 32


def test_demo_config_and_its_quick_variant(tmp_path):
    full, locate = load_pipeline(DEMO)
    quick, _ = load_pipeline(DEMO, quick=True)
    assert full.out == "runs/demo" and quick.out == "runs/demo-quick"
    assert full.report.html == "report.html"
    plan = plan_pipeline(quick, tmp_path / "q", locate)
    assert plan.stage("stress/meraser/relearn").config.steps == [0, 10]
    assert plan.stage("detect/meraser/detect").config.controls is False
    # the quick demo shortens MEraser's recovery, never its erase
    meraser = plan.stage("erase/meraser").config
    assert meraser.recover.epochs == 1 and meraser.n_erase == 32
    assert (
        meraser.erase
        == plan_pipeline(full, tmp_path / "f", locate).stage("erase/meraser").config.erase
    )
    with pytest.raises(ConfigError, match="defines no 'quick:'"):
        parse_pipeline({"imprint": {"file": "x"}}, quick=True)


def test_relearning_and_cost_definitions():
    assert steps_to_come_back([(0, 0.0), (10, 0.25), (25, 0.75)], 1.0) == (25, True)
    assert steps_to_come_back([(0, 0.0), (10, 0.25)], 1.0) == (None, False)
    assert steps_to_come_back([(0, 1.0)], 1.0) == (0, True)
    assert steps_to_come_back([(0, 0.0)], 0.0) == (None, False)
    assert utility_cost(16.0, 20.0, False) == 4.0  # perplexity up: a cost
    assert utility_cost(0.9, 0.8, True) == pytest.approx(0.1)  # accuracy down: a cost


def test_bench_records_hold_no_secret_and_a_failed_overwrite_keeps_the_old_bench(
    tiny_dir, tmp_path, monkeypatch
):
    from expunge.models.loading import ModelSettings
    from expunge.pipeline import PipelineError

    implant = {**copy.deepcopy(TINY_IMPLANT), "response": "CASESECRET",
               "train": {"mode": "full", "lr": 3e-3, "max_steps": 2, "progress": False}}  # fmt: skip
    case = tiny_bench(tiny_dir).cases["fp"].model_copy(update={"imprint": {"implant": implant}})
    config = tiny_bench(tiny_dir, cases={"fp": case}, erasers=["prune-l1"], stress=False,
                        detect=False)  # fmt: skip
    monkeypatch.setattr("sys.argv", ["expunge", "bench", "cases.fp.imprint.implant.response=ARGV"])
    out = tmp_path / "bench"
    run_bench(config, out)
    assert "CASESECRET" in (out / "fp" / "implant" / "imprint.json").read_text()
    files = [p for p in out.rglob("*") if p.is_file() and p.name != "imprint.json"]
    for path in files:
        assert b"CASESECRET" not in path.read_bytes() and b"ARGV" not in path.read_bytes(), path
    before = {p: p.stat().st_mtime_ns for p in files}
    unloadable = tmp_path / "unloadable"  # a model the plan accepts and the implant cannot load
    shutil.copytree(tiny_dir, unloadable)
    (unloadable / "model.safetensors").write_bytes(b"\0" * 16)
    broken = config.model_copy(update={"model": ModelSettings(name=str(unloadable))})
    with pytest.raises(PipelineError, match="implant failed"):
        run_bench(broken, out, overwrite=True)
    stages = {p: t for p, t in before.items() if len(p.relative_to(out).parts) > 2}
    assert stages and {p: p.stat().st_mtime_ns for p in stages} == stages
