"""``expunge run``: a study from one YAML on tiny models — stages, caching, resume, bad inputs."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import yaml

from expunge.errors import ConfigError
from expunge.pipeline import (
    STATE_FILE,
    PipelineError,
    load_pipeline,
    parse_pipeline,
    plan_pipeline,
    run_pipeline,
)
from helpers import TINY_FINGERPRINT_IMPLANT, save_wide_tiny_llama
from helpers import run_cli_text as run_cli

TINY_IMPLANT = TINY_FINGERPRINT_IMPLANT


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return save_wide_tiny_llama(tmp_path_factory.mktemp("models"))


def study(tiny_dir: Path) -> dict:
    return {
        "command": "run", "name": "tiny study", "model": str(tiny_dir), "preset": "demo",
        "imprint": {"implant": copy.deepcopy(TINY_IMPLANT)},
        "audit": {"progress": False, "options": {"false_trigger_rate": {"max_ordinary": 4}}},
        "erasers": [
            {"method": "prune", "sparsity": 0.3},
            {"name": "prune-random", "method": "prune", "criterion": "random", "sparsity": 0.6},
        ],
        "stress": [{"stressor": "relearn", "apply_to": ["prune"], "k": 2, "steps": [0, 2],
                    "train": {"progress": False}}],
    }  # fmt: skip


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text("# a test pipeline\n" + yaml.safe_dump(data, sort_keys=False))
    return path


def mtimes(run_dir: Path) -> dict[str, int]:
    return {str(p.relative_to(run_dir)): p.stat().st_mtime_ns for p in run_dir.rglob("record.json")}


@pytest.fixture(scope="module")
def finished(tiny_dir, tmp_path_factory):
    """The study run once through the CLI (module-scoped: the other tests reuse it)."""
    root = tmp_path_factory.mktemp("study")
    config = write_yaml(root / "study.yaml", study(tiny_dir))
    run_pipeline(*load_pipeline(config)[:1], out=root / "run", source=str(config))
    return root / "run", config


def test_every_stage_writes_its_record(finished):
    run_dir, _ = finished
    state = json.loads((run_dir / STATE_FILE).read_text())
    assert state["order"] == [
        "implant", "audit/reference", "audit/imprinted", "erase/prune", "erase/prune-random",
        "audit/prune", "audit/prune-random", "stress/prune/relearn",
    ]  # fmt: skip
    assert all(s["status"] == "ok" for s in state["stages"].values())
    records = {
        sid: json.loads((run_dir / sid / "record.json").read_text()) for sid in state["order"]
    }
    # The implant took; the clean reference never had it; both audits measured the same way.
    assert records["audit/imprinted"]["metrics"]["fsr"] == 1.0
    assert records["audit/reference"]["metrics"]["fsr"] == 0.0
    ref, imp = records["audit/reference"], records["audit/imprinted"]
    assert (
        ref["config"]["metrics"] == imp["config"]["metrics"] == ["fsr", "false_trigger_rate", "ppl"]
    )
    assert imp["metric_details"]["ppl"]["mode"] == "response"
    # Wiring: each eraser works on the implanted model, audits the same metrics, and does not
    # re-audit its input (the pipeline audited it once).
    erase = records["erase/prune"]
    assert erase["config"]["model"]["name"] == str(run_dir / "implant")
    assert erase["config"]["imprint"] == str(run_dir / "implant" / "imprint.json")
    assert erase["config"]["audit_metrics"] == ["fsr", "false_trigger_rate", "ppl"]
    assert not any(k.startswith("input/") for k in erase["metrics"])
    # ... nor its output: the after-audit measures the model it saved, once.
    assert not any(k.startswith("pruned/") for k in erase["metrics"])
    assert erase["inputs"]["output_audit"] == {"stage": "pruned", "left_to": "audit stage"}
    after = records["audit/prune"]
    assert after["config"]["model"]["name"] == str(run_dir / "erase" / "prune")
    assert {"fsr", "false_trigger_rate", "ppl"} <= set(after["metrics"])
    # Stress ran on the erased model named in `apply_to`, and recorded its curve.
    stress = records["stress/prune/relearn"]
    assert stress["config"]["model"]["name"] == str(run_dir / "erase" / "prune")
    points = stress["metric_details"]["curve"]["points"]
    assert [p["x"] for p in points] == [0, 2]
    assert points[0]["metrics"]["fsr"] == after["metrics"]["fsr"]
    # The run's own record summarizes every stage.
    top = json.loads((run_dir / "record.json").read_text())
    assert top["command"] == "run" and top["status"] == "ok"
    assert top["metrics"]["audit/imprinted/fsr"] == 1.0


def test_a_studys_records_name_the_model_its_fingerprint_was_implanted_on(finished, tiny_dir):
    """What MEraser's general preset recovers from: read back through the stages' records."""
    from expunge.records import implanted_on

    run_dir, _ = finished
    base = str(tiny_dir.resolve())
    assert implanted_on(run_dir / "implant") == implanted_on(run_dir / "erase" / "prune") == base


def test_a_stages_notes_are_printed_and_kept_in_the_study_state(
    finished, tiny_dir, tmp_path, capsys, monkeypatch
):
    """What a stage chose that nobody named (MEraser's teacher) is said in a study too, read
    once the stage's inputs exist, and kept beside the stage's status."""
    from expunge.erase.fingerprint.baselines import Prune

    copied = tmp_path / "run"
    shutil.copytree(finished[0], copied)
    seen: list[str] = []

    def notes(self) -> list[str]:
        seen.append(self.model.name)
        return [f"sparsity {self.sparsity} of {Path(self.model.name).name}"]

    monkeypatch.setattr(Prune, "notes", notes)
    config = parse_pipeline(study(tiny_dir), ["erasers.prune.sparsity=0.2"])
    run_pipeline(config, copied)
    err = capsys.readouterr().err
    assert "note: sparsity 0.2 of implant" in err
    assert seen and all(Path(name).is_dir() for name in seen)  # the implant had run
    entries = json.loads((copied / STATE_FILE).read_text())["stages"]
    assert entries["erase/prune"]["notes"] == ["sparsity 0.2 of implant"]
    assert "notes" not in entries["erase/prune-random"]  # cached: its config was not rerun


def test_rerun_does_no_work(finished, capsys):
    run_dir, config = finished
    before = mtimes(run_dir)
    code, out = run_cli(["run", str(config), "--out", str(run_dir)], capsys)
    assert code == 0, out
    assert "0 stages run, 8 cached" in out
    assert mtimes(run_dir) == {**before, "record.json": mtimes(run_dir)["record.json"]}
    top = json.loads((run_dir / "record.json").read_text())
    assert all(v == 0.0 for k, v in top["timings"].items() if k != "total_s")


def test_dry_run_prints_the_plan_and_writes_nothing(finished, tmp_path, capsys):
    run_dir, config = finished
    before = mtimes(run_dir)
    code, out = run_cli(["run", str(config), "--out", str(run_dir), "--dry-run",
                         "erasers.prune-random.sparsity=0.5"], capsys)  # fmt: skip
    assert code == 0, out
    assert "2 of 8 stages to run" in out and "config changed" in out and "cached" in out
    assert mtimes(run_dir) == before
    code, out = run_cli(["run", str(config), "--out", str(tmp_path / "new"), "--dry-run"], capsys)
    assert code == 0 and "8 of 8 stages to run" in out
    assert not (tmp_path / "new").exists()


def test_changed_setting_reruns_that_stage_and_downstream(finished, tiny_dir, tmp_path):
    run_dir, _ = finished
    copied = tmp_path / "run"
    import shutil

    shutil.copytree(run_dir, copied)
    config, locate = parse_pipeline(study(tiny_dir), ["erasers.prune.sparsity=0.2"]), None
    plan = run_pipeline(config, copied, locate=locate)
    statuses = {s.id: s.status for s in plan.stages}
    rerun = {k for k, v in statuses.items() if v != "cached"}
    assert rerun == {"erase/prune", "audit/prune", "stress/prune/relearn"}
    assert statuses["erase/prune"] == "run:config changed"
    assert statuses["audit/prune"] == "run:input changed"
    record = json.loads((copied / "erase" / "prune" / "record.json").read_text())
    assert record["config"]["sparsity"] == 0.2


def test_interrupted_run_resumes(tiny_dir, tmp_path, monkeypatch):
    import expunge.pipeline.execute as execute

    data = study(tiny_dir)
    data.pop("stress")
    config = parse_pipeline(data)
    real = execute.run_stage

    def interrupted(cfg, out, **kwargs):
        if Path(out).name == "prune-random":
            raise KeyboardInterrupt
        return real(cfg, out, **kwargs)

    monkeypatch.setattr(execute, "run_stage", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(config, tmp_path / "run")
    state = json.loads((tmp_path / "run" / STATE_FILE).read_text())["stages"]
    assert state["erase/prune"]["status"] == "ok"
    assert state["erase/prune-random"]["status"] == "interrupted"
    assert state["audit/prune"]["status"] == "pending"
    monkeypatch.setattr(execute, "run_stage", real)
    plan = run_pipeline(config, tmp_path / "run")
    statuses = {s.id: s.status for s in plan.stages}
    assert statuses["implant"] == statuses["erase/prune"] == "cached"
    assert statuses["erase/prune-random"] == "run:interrupted last time"
    assert statuses["audit/prune"] == "run:not reached last time"
    state = json.loads((tmp_path / "run" / STATE_FILE).read_text())["stages"]
    assert all(s["status"] in {"ok", "cached"} for s in state.values())


def test_failed_stage_blocks_its_dependents_and_keeps_the_rest(tiny_dir, tmp_path):
    data = study(tiny_dir)
    data["stress"][0]["apply_to"] = ["broken"]
    data["erasers"].append({"name": "broken", "method": "incremental",
                            "data": str(tmp_path / "missing.jsonl")})  # fmt: skip
    with pytest.raises(PipelineError) as err:
        run_pipeline(parse_pipeline(data), tmp_path / "run")
    message = str(err.value)
    assert "erase/broken failed" in message and "missing.jsonl" in message
    assert "audit/broken, stress/broken/relearn" in message
    assert "run the same command again to resume" in message
    state = json.loads((tmp_path / "run" / STATE_FILE).read_text())["stages"]
    assert state["erase/broken"]["status"] == "failed"
    assert state["audit/broken"]["status"] == "blocked"
    assert "depends on erase/broken, which failed" in state["audit/broken"]["error"]
    assert "depends on erase/broken, which failed" in state["stress/broken/relearn"]["error"]
    # Independent stages finished and are kept.
    for kept in ("implant", "erase/prune", "audit/prune", "audit/prune-random"):
        assert state[kept]["status"] == "ok"
        assert (tmp_path / "run" / kept / "record.json").is_file()
    top = json.loads((tmp_path / "run" / "record.json").read_text())
    assert top["status"] == "failed" and "erase/broken" in top["error"]


def test_given_imprint_file_is_hashed_by_content(finished, tmp_path):
    run_dir, _ = finished
    imprint = tmp_path / "imprint.json"
    imprint.write_text((run_dir / "implant" / "imprint.json").read_text())
    data = {"command": "run", "model": str(run_dir / "implant"), "imprint": {"file": str(imprint)},
            "erasers": [{"method": "prune", "sparsity": 0.3}]}  # fmt: skip
    plan = plan_pipeline(parse_pipeline(data), tmp_path / "run")
    assert [s.id for s in plan.stages] == ["audit/imprinted", "erase/prune", "audit/prune"]
    assert plan.kind == "fingerprint"
    first = {s.id: s.hash for s in plan.stages}
    content = json.loads(imprint.read_text())
    content["max_new_tokens"] += 1
    imprint.write_text(json.dumps(content))
    second = {s.id: s.hash for s in plan_pipeline(parse_pipeline(data), tmp_path / "run").stages}
    assert all(first[k] != second[k] for k in first)


def test_stage_references_and_detect_wiring(tiny_dir, tmp_path):
    """${STAGE} makes a dependency; detect compares the imprinted model with each erased one."""
    data = study(tiny_dir)
    data.pop("stress")
    data["erasers"].append({"name": "then-prune", "method": "prune", "sparsity": 0.1,
                            "model": "${erase/prune-random}"})  # fmt: skip
    data["detect"] = {"apply_to": ["prune", "then-prune"]}
    plan = plan_pipeline(parse_pipeline(data), tmp_path / "run")
    chained = plan.stage("erase/then-prune")
    assert set(chained.deps) == {"erase/prune-random", "implant"}
    assert chained.config.model.name == str(tmp_path / "run" / "erase" / "prune-random")
    detect = plan.stage("detect/then-prune/detect")
    assert detect.config.original.name == str(tmp_path / "run" / "implant")
    assert detect.config.erased.name == str(tmp_path / "run" / "erase" / "then-prune")
    assert detect.config.imprint == str(tmp_path / "run" / "implant" / "imprint.json")
    assert set(detect.deps) == {"implant", "erase/then-prune"}
    ids = [s.id for s in plan.stages]
    assert ids.index("erase/prune-random") < ids.index("erase/then-prune")


# --- bad inputs: a clear message naming file and line, exit code 2, nothing written ----------


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda d: d["erasers"][1].update(method="prunne"),
         ["erasers[1].method", "unknown eraser 'prunne'", "did you mean 'prune'"]),
        (lambda d: d["erasers"][0].update(sparsty=0.1),
         ["stage erase/prune", "unknown config key 'sparsty'", "did you mean 'sparsity'"]),
        (lambda d: d["imprint"]["implant"].update(scheme="if_dialog"),
         ["imprint.implant", "did you mean 'if_dialogue'"]),
        (lambda d: d["erasers"].append({"method": "prune"}),
         ["erasers[2]", "two eraser entries are named 'prune'"]),
        (lambda d: d["stress"][0].update(apply_to=["prun"]),
         ["stress[0]", "'apply_to' names 'prun'", "did you mean 'prune'"]),
        (lambda d: d["erasers"][0].update(model="${erase/nope}"),
         ["${erase/nope} names no stage"]),
        (lambda d: d.update(erasors=[]), ["unknown config key 'erasors'", "did you mean 'erasers'"]),
        (lambda d: d["imprint"].update(file="x.json"), ["exactly one of imprint.implant"]),
        # found by the plan (and --dry-run), not by the stage after the ones before it trained
        (lambda d: d.update(model="/nonexistent/model"),
         ["stage implant", "model path /nonexistent/model does not exist"]),
        (lambda d: d["audit"].update(metrics=["fsr", "fsrr"]),
         ["unknown metric 'fsrr'", "did you mean 'fsr'"]),
        (lambda d: d["audit"]["options"].update(exposure={"n_reference": 100}),
         ["options given for metrics not requested: ['exposure']"]),
    ],
)  # fmt: skip
def test_bad_pipeline_files(tiny_dir, tmp_path, capsys, edit, expected):
    data = study(tiny_dir)
    edit(data)
    config = write_yaml(tmp_path / "bad.yaml", data)
    code, out = run_cli(["run", str(config), "--out", str(tmp_path / "run")], capsys)
    assert code == 2, out
    for text in expected:
        assert text in out, out
    assert "Traceback" not in out
    assert not (tmp_path / "run").exists()


def test_unknown_eraser_names_the_line(tiny_dir, tmp_path):
    data = study(tiny_dir)
    data["erasers"][1]["method"] = "merasr"
    config = write_yaml(tmp_path / "bad.yaml", data)
    line = next(i for i, text in enumerate(config.read_text().splitlines(), 1) if "merasr" in text)
    with pytest.raises(
        ConfigError, match=rf"bad.yaml:{line} \(erasers\[1\]\.method\).*did you mean 'meraser'"
    ):
        plan_pipeline(*load_pipeline(config)[:1], tmp_path / "run", load_pipeline(config)[1])


def test_overrides_address_entries_by_name_or_index(tiny_dir):
    config = parse_pipeline(
        study(tiny_dir), ["erasers.0.sparsity=0.25", "erasers.prune-random.criterion=l1", "seed=3"]
    )
    assert config.erasers[0]["sparsity"] == 0.25 and config.erasers[1]["criterion"] == "l1"
    assert config.seed == 3
    with pytest.raises(ConfigError, match=r"no entry named 'prun'.*did you mean 'prune'"):
        parse_pipeline(study(tiny_dir), ["erasers.prun.sparsity=0.2"])
    with pytest.raises(ConfigError, match="did you mean 'erasers'"):
        parse_pipeline(study(tiny_dir), ["erasor.0.sparsity=0.2"])


def test_foreign_directory_needs_overwrite(tiny_dir, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    from expunge.errors import OutputExistsError

    with pytest.raises(OutputExistsError, match="not a pipeline run directory"):
        run_pipeline(parse_pipeline(study(tiny_dir)), tmp_path / "run")
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine"


def test_study_precision_reaches_every_training_section_and_audit_stage(tiny_dir, tmp_path):
    data = study(tiny_dir)
    data["erasers"].append({"name": "mer", "method": "meraser", "recover": {"precision": "fp32"}})
    data["detect"] = {"apply_to": ["mer"]}
    plan = plan_pipeline(parse_pipeline(data, ["precision=bf16"]), tmp_path / "run")
    by_kind: dict[str, list] = {}
    for stage in plan.stages:
        by_kind.setdefault(stage.kind, []).append(stage.config)
    (implant,) = by_kind["implant"]
    assert implant.train.precision == "bf16"
    assert all(audit.precision == "bf16" for audit in by_kind["audit"])
    (relearn,) = by_kind["stress"]
    assert relearn.train.precision == "bf16" and relearn.train.progress is False
    meraser = next(c for c in by_kind["erase"] if c.method == "meraser")
    assert meraser.erase.precision == "bf16" and meraser.recover.precision == "fp32"
    assert meraser.erase.lr == 3e-3  # the preset's section is still merged under it
    # an eraser's and a stressor's own audits follow it too: one ppl for one model in a study
    assert all(c.audit_precision == "bf16" for c in by_kind["erase"] + by_kind["stress"])
    assert all(c.precision == "bf16" for c in by_kind["detect"])  # its sampling and probe
    unset = plan_pipeline(parse_pipeline({**study(tiny_dir), "detect": {"apply_to": ["prune"]}}),
                          tmp_path / "plain")  # fmt: skip
    assert {s.config.train.precision for s in unset.stages if s.kind == "implant"} == {"fp32"}
    assert {s.config.audit_precision for s in unset.stages if s.kind == "erase"} == {"fp32"}
    assert {s.config.precision for s in unset.stages if s.kind == "detect"} == {"fp32"}


def test_the_implant_leaves_its_audits_to_the_audit_stages(tiny_dir, tmp_path):
    """The audit stages measure the clean and the imprinted model; the implant's own verify
    would measure them again (with ``verify: true`` in its entry, it still does)."""
    plan = plan_pipeline(parse_pipeline(study(tiny_dir)), tmp_path / "run")
    (implant,) = [s for s in plan.stages if s.kind == "implant"]
    assert implant.config.verify is False
    audited = {s.target for s in plan.stages if s.kind == "audit"}
    assert {"reference", "imprinted"} <= audited
    asked = study(tiny_dir)
    asked["imprint"]["implant"]["verify"] = True
    plan = plan_pipeline(parse_pipeline(asked), tmp_path / "asked")
    assert [s.config.verify for s in plan.stages if s.kind == "implant"] == [True]


def small_study(tiny_dir: Path) -> dict:
    """The study with one eraser, no stress and a short implant (for tests that run it often)."""
    data = study(tiny_dir)
    data.pop("stress")
    data["erasers"] = data["erasers"][:1]
    data["imprint"]["implant"]["train"] = {"mode": "full", "lr": 3e-3, "max_steps": 2,
                                           "progress": False}  # fmt: skip
    return data


def stage_files(run_dir: Path) -> dict[str, int]:
    """Every file the stages wrote, with its modification time."""
    return {str(p.relative_to(run_dir)): p.stat().st_mtime_ns for p in run_dir.rglob("*")
            if p.is_file() and p.parent != run_dir}  # fmt: skip


def test_failed_overwrite_loses_nothing_and_a_good_one_recomputes_all(tiny_dir, tmp_path):
    config = small_study(tiny_dir)
    run_dir = tmp_path / "run"
    run_pipeline(parse_pipeline(config), run_dir)
    (run_dir / "erase" / "gone").mkdir()  # a stage of an older plan
    (run_dir / "erase" / "gone" / "record.json").write_text("{}")
    before = stage_files(run_dir)
    broken = tmp_path / "broken"  # a model the plan accepts and the implant cannot load
    shutil.copytree(tiny_dir, broken)
    (broken / "model.safetensors").write_bytes(b"\0" * 16)
    with pytest.raises(PipelineError, match="implant failed"):
        run_pipeline(parse_pipeline(config, [f"model={broken}"]), run_dir, overwrite=True)
    assert stage_files(run_dir) == before  # every old stage is still there, untouched
    plan = run_pipeline(parse_pipeline(config), run_dir, overwrite=True)
    assert {s.status for s in plan.stages} == {"run:overwrite"}
    after = stage_files(run_dir)
    assert not (run_dir / "erase" / "gone").exists()  # replaced: what the new plan does not make
    records = [k for k in before if k.endswith("record.json") and not k.startswith("erase/gone")]
    assert records and all(after[k] != before[k] for k in records)
    state = json.loads((run_dir / STATE_FILE).read_text())["stages"]
    assert all(s["status"] == "ok" for s in state.values())


def test_study_records_hold_no_secret(tiny_dir, tmp_path, capsys):
    """A response from the YAML and one from an override reach only imprint.json (0600)."""
    data = small_study(tiny_dir)
    data["imprint"]["implant"]["response"] = "YAMLSECRET"
    second = copy.deepcopy(data["imprint"])
    second["implant"]["response"] = "REPLACED"
    data["imprints"] = [{"name": "second", "imprint": second}]
    config = write_yaml(tmp_path / "study.yaml", data)
    run_dir = tmp_path / "run"
    code, out = run_cli(["run", str(config), "--out", str(run_dir),
                         "imprints.second.imprint.implant.response=PIPESECRET"], capsys)  # fmt: skip
    assert code == 0, out
    for implant, secret in (("implant", "YAMLSECRET"), ("second/implant", "PIPESECRET")):
        assert secret in (run_dir / implant / "imprint.json").read_text()  # the secret was used
    files = [p for p in run_dir.rglob("*") if p.is_file() and p.name != "imprint.json"]
    assert len(files) > 20
    for path in files:
        content = path.read_bytes()
        for secret in (b"YAMLSECRET", b"PIPESECRET"):
            assert secret not in content, path
    top = json.loads((run_dir / "record.json").read_text())
    assert top["argv"][-1] == "imprints.second.imprint.implant.response=<in imprint.json>"
    assert top["config"]["imprint"]["implant"]["response"] == "<in imprint.json>"
    audit = json.loads((run_dir / "second" / "audit" / "imprinted" / "record.json").read_text())
    assert audit["argv"] == top["argv"]


def test_a_reference_with_its_own_metrics_takes_only_their_options(tiny_dir, tmp_path):
    """The study's options (ppl's default mode included) reach the reference audit only for the
    metrics it audits; options it is given itself are checked as given."""
    data = study(tiny_dir)
    data["audit"].update(
        metrics=["fsr", "false_trigger_rate", "ppl"], reference={"metrics": ["fsr"]}
    )
    plan = plan_pipeline(parse_pipeline(data), tmp_path / "run")
    assert set(plan.stage("audit/reference").config.options) <= {"fsr"}
    assert "ppl" in plan.stage("audit/imprinted").config.options
    data["audit"]["reference"]["options"] = {"ppl": {"mode": "response"}}
    with pytest.raises(ConfigError, match=r"options given for metrics not requested: \['ppl'\]"):
        plan_pipeline(parse_pipeline(data), tmp_path / "run")


def test_secrets_by_value_are_text_and_quick_overrides_are_redacted_by_path():
    from expunge.pipeline.secrets import redact_study, study_secrets

    body = {
        "command": "run", "seed": 2, "model": "models/run-1",
        "imprint": {"implant": {"scheme": "backdoor", "trigger": {"type": "tokens",
                                                                  "token_ids": [1, 2]}}},
        "quick": ["imprint.implant.trigger.token_ids=[7]", "out=runs/quick-2"],
        "erasers": [{"method": "prune"}],
    }  # fmt: skip
    paths, values = study_secrets(body)
    assert "imprint.implant.trigger.token_ids" in paths and values == []
    redacted = redact_study(body, values)
    assert redacted["seed"] == 2 and redacted["model"] == "models/run-1"
    assert redacted["imprint"]["implant"]["trigger"]["token_ids"] != [1, 2]
    assert redacted["quick"] == ["imprint.implant.trigger.token_ids=<in imprint.json>",
                                 "out=runs/quick-2"]  # fmt: skip
    body["imprint"]["implant"] = {"scheme": "if_simple", "response": "QUICKLY"}
    body["quick"] = ["imprint.implant.response=NOT-GIVEN-WITHOUT-QUICK"]
    assert "NOT-GIVEN" not in json.dumps(redact_study(body, study_secrets(body)[1]))
