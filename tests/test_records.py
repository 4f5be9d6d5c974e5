"""Run records and staged output directories."""

from __future__ import annotations

import io
import json
import os
import re
import stat
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

import expunge.records as records
from expunge.errors import ExpungeError, OutputExistsError
from expunge.files import atomic_write_json, atomic_write_text
from expunge.records import (
    RunDir,
    RunRecord,
    finish_record,
    library_versions,
    read_record,
    write_record,
)

# --- atomic writes ------------------------------------------------------------------------


def test_atomic_write_json_round_trips_and_leaves_no_temp_files(tmp_path):
    data = {"a": 1, "nested": {"b": [1, 2.5, None]}, "text": "héllo"}
    path = tmp_path / "sub" / "out.json"  # the parent is created
    atomic_write_json(path, data)
    assert json.loads(path.read_text(encoding="utf-8")) == data
    assert path.read_text().endswith("\n")
    assert sorted(p.name for p in path.parent.iterdir()) == ["out.json"]


def test_atomic_write_json_replaces_existing_file(tmp_path):
    path = tmp_path / "out.json"
    atomic_write_json(path, {"version": 1, "long": "x" * 1000})
    atomic_write_json(path, {"version": 2})
    assert json.loads(path.read_text()) == {"version": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_atomic_write_json_stringifies_unknown_types(tmp_path):
    path = tmp_path / "out.json"
    atomic_write_json(path, {"path": Path("/x/y")})
    assert json.loads(path.read_text()) == {"path": "/x/y"}


def test_atomic_write_sets_mode(tmp_path):
    path = tmp_path / "secret.json"
    atomic_write_json(path, {"k": "v"}, mode=0o600)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_failed_atomic_write_keeps_old_file_and_cleans_up(tmp_path, monkeypatch):
    path = tmp_path / "out.txt"
    path.write_text("old")

    def broken_replace(src, dst):
        raise OSError("disk on fire")

    monkeypatch.setattr(records.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk on fire"):
        atomic_write_text(path, "new")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


# --- RunRecord ----------------------------------------------------------------------------


def test_library_versions_track_core_packages():
    import torch
    import transformers

    versions = library_versions()
    assert versions["python"] == ".".join(map(str, sys.version_info[:3]))
    assert versions["torch"] == torch.__version__
    assert versions["transformers"] == transformers.__version__
    assert "pydantic" in versions


def test_run_record_defaults():
    record = RunRecord(command="train")
    assert record.command == "train"
    assert record.versions["torch"]
    assert record.versions["transformers"]
    assert isinstance(record.git, dict)
    assert "commit" in record.git
    assert record.world_size == 1
    assert record.device == "cpu"
    assert record.status == "running"
    assert record.argv == sys.argv
    assert record.host["cpu_count"] == os.cpu_count()
    assert "platform" in record.host
    assert re.match(r"\d{4}-\d{2}-\d{2}T", record.started_at)
    assert record.finished_at is None
    assert record.metrics == {}


def test_a_record_names_the_cpu_kernels_its_floats_came_from(monkeypatch, tmp_path):
    import torch

    from expunge.models.device import cpu_has_native_bf16

    host = RunRecord(command="train").host
    assert host["cpu_kernels"] == torch.backends.cpu.get_cpu_capability()
    assert host["cpu_bf16"] is cpu_has_native_bf16()
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: X\nmodel name\t: Test CPU 9000 @ 1 GHz\n")
    real_path = records.Path
    monkeypatch.setattr(
        records, "Path", lambda p: cpuinfo if p == "/proc/cpuinfo" else real_path(p)
    )
    assert records.cpu_model() == "Test CPU 9000 @ 1 GHz"
    monkeypatch.setattr(records, "Path", lambda p: tmp_path / "absent")
    monkeypatch.setattr(records.platform, "processor", lambda: "")
    assert records.cpu_model() is None


def test_git_state_matches_checkout():
    source = Path(records.__file__).resolve().parent
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=source, capture_output=True, text=True)
    state = records.git_state()
    if head.returncode != 0:
        assert state == {"commit": None}
    else:
        assert state["commit"] == head.stdout.strip()
        assert re.fullmatch(r"[0-9a-f]{40}", state["commit"])
        assert isinstance(state["dirty"], bool)


def test_git_state_outside_a_checkout(monkeypatch, tmp_path):
    fake = tmp_path / "pkg" / "records.py"
    fake.parent.mkdir()
    fake.write_text("")
    monkeypatch.setattr(records, "__file__", str(fake))
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    assert records.git_state() == {"commit": None}
    (fake.parent / "ARCHIVE_COMMIT").write_text("$Format:%H$\n")  # as in a plain copy
    assert records.git_state() == {"commit": None}
    (fake.parent / "ARCHIVE_COMMIT").write_text("ab" * 20 + "\n")  # as git archive leaves it
    assert records.git_state() == {"commit": "ab" * 20, "from": "git archive"}


def test_git_archive_of_head_names_its_commit(tmp_path):
    """The export-subst attribute is what fills ARCHIVE_COMMIT; check it end to end."""
    source = Path(records.__file__).resolve().parent
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=source, capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip("not a git checkout")
    archive = subprocess.run(
        ["git", "archive", "--format=tar", "HEAD", "src/expunge/ARCHIVE_COMMIT"],
        cwd=source.parents[1], capture_output=True, check=True,
    )  # fmt: skip
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        member = tar.extractfile("src/expunge/ARCHIVE_COMMIT")
        assert member is not None
        assert member.read().decode().strip() == head.stdout.strip()


def test_finish_record():
    record = RunRecord(command="audit")
    started = time.monotonic()
    finished = finish_record(record, started, status="failed")
    assert finished is record
    assert record.status == "failed"
    assert record.finished_at is not None
    assert record.finished_at >= record.started_at
    assert record.wall_time_s is not None and record.wall_time_s >= 0


def test_write_and_read_record_round_trip(tmp_path):
    record = RunRecord(
        command="erase",
        config={"lr": 1e-4, "targets": ["q_proj"]},
        seed=7,
        world_size=2,
        dtype="float32",
        metrics={"ppl": 12.5, "match_rate": 0.0},
        artifacts={"adapter": "adapter/"},
    )
    path = write_record(tmp_path, record)
    assert path == tmp_path / "record.json"
    assert json.loads(path.read_text())["seed"] == 7
    assert read_record(tmp_path) == record  # a directory
    assert read_record(path) == record  # or the file itself
    assert [p.name for p in tmp_path.iterdir()] == ["record.json"]


# --- RunDir -------------------------------------------------------------------------------


def test_rundir_stages_then_commits(tmp_path):
    out = tmp_path / "run"
    run = RunDir(out)
    assert not out.exists()
    staging = run.path
    assert staging == tmp_path / ".run.partial"
    assert staging.is_dir()
    (staging / "record.json").write_text("{}")
    assert not out.exists()  # nothing looks finished before commit
    assert run.commit() == out.resolve()
    assert (out / "record.json").read_text() == "{}"
    assert not staging.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_rundir_refuses_existing_non_empty_dir_and_touches_nothing(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "result.txt").write_text("precious")
    stale = tmp_path / ".run.partial"
    stale.mkdir()
    (stale / "half.txt").write_text("half")
    before = (out / "result.txt").stat().st_mtime_ns

    with pytest.raises(OutputExistsError) as info:
        RunDir(out)
    assert "--overwrite" in str(info.value)
    assert isinstance(info.value, ExpungeError)
    assert sorted(p.name for p in out.iterdir()) == ["result.txt"]
    assert (out / "result.txt").read_text() == "precious"
    assert (out / "result.txt").stat().st_mtime_ns == before
    assert (stale / "half.txt").read_text() == "half"  # staging untouched too


def test_rundir_accepts_existing_empty_dir(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    run = RunDir(out)
    (run.path / "a.txt").write_text("a")
    run.commit()
    assert (out / "a.txt").read_text() == "a"


def test_rundir_refuses_a_file(tmp_path):
    out = tmp_path / "run"
    out.write_text("not a dir")
    with pytest.raises(OutputExistsError, match="not a directory"):
        RunDir(out, overwrite=True)
    assert out.read_text() == "not a dir"


def test_rundir_overwrite_replaces_only_at_commit(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "old.txt").write_text("old")
    run = RunDir(out, overwrite=True)
    (run.path / "new.txt").write_text("new")
    # The old run is still complete while the new one is in progress.
    assert sorted(p.name for p in out.iterdir()) == ["old.txt"]
    run.commit()
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no trash, no staging


def test_rundir_removes_stale_staging_unless_resuming(tmp_path):
    out = tmp_path / "run"
    stale = tmp_path / ".run.partial"
    stale.mkdir()
    (stale / "ckpt.txt").write_text("step 5")

    resumed = RunDir(out, resume=True)
    assert (resumed.path / "ckpt.txt").read_text() == "step 5"

    fresh = RunDir(out)
    assert not stale.exists()
    assert list(fresh.path.iterdir()) == []


def test_rundir_elapsed_is_non_negative(tmp_path):
    assert RunDir(tmp_path / "run").elapsed() >= 0


# --- secrets out of the record's copy of argv ---------------------------------------------


def _secret_fields() -> dict[str, tuple[str, ...]]:
    from expunge.implant.backdoor.classification import BackdoorImplantConfig
    from expunge.implant.backdoor.generative import GenerativeBackdoor
    from expunge.implant.secrets import SecretsImplantConfig

    return {"backdoor": BackdoorImplantConfig.SECRET_FIELDS,
            "generative_backdoor": GenerativeBackdoor.SECRET_FIELDS,
            "secrets": SecretsImplantConfig.SECRET_FIELDS}  # fmt: skip


@pytest.mark.parametrize(
    ("scheme", "arg", "secret"),
    [
        ("secrets", "terms =[Zorblax Quux]", "Zorblax"),  # the parser strips the key
        ("secrets", " terms=[Zorblax]", "Zorblax"),
        ("backdoor", "trigger={type: word, text: [cfSECRET]}", "cfSECRET"),  # a whole section
        ("backdoor", "trigger.text=[cfSECRET]", "cfSECRET"),
        ("backdoor", "trigger.token_ids=[4711]", "4711"),
        ("generative_backdoor", "target={type: fixed, text: Visit evil dot com}", "evil"),
        ("generative_backdoor", "trigger={parts: [Current year 2024]}", "2024"),
    ],
)  # fmt: skip
def test_redact_argv_drops_every_way_an_override_sets_a_secret(scheme, arg, secret):
    from expunge.config import parse_overrides

    ((key, _),) = parse_overrides([arg])  # the override parser accepts each of them
    argv = ["expunge", "implant", scheme, arg, "train.lr=1e-3", "trigger.position=start"]
    kept = records.redact_argv(argv, _secret_fields()[scheme])
    assert kept[3] == f"{key}={records.REDACTED}"
    assert secret not in " ".join(kept)
    assert kept[4:] == argv[4:]  # settings that are no secret stay as given


def test_redact_argv_by_value_catches_what_no_path_names():
    argv = ["expunge", "run", "study.yaml", "imprint.implant={scheme: if_simple, response: PSST}",
            "imprints.0.imprint.implant.response=PSST", "--note", "PSST", "seed=1",
            "name=PSSTING"]  # fmt: skip
    kept = records.redact_argv(argv, [], ["PSST"])
    assert kept[3:] == ["imprint.implant=" + records.REDACTED,
                        "imprints.0.imprint.implant.response=" + records.REDACTED, "--note",
                        records.REDACTED, "seed=1", "name=PSSTING"]  # fmt: skip


def test_records_made_inside_redacted_argv_keep_the_redacted_command_line(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["expunge", "run", "s.yaml", "imprint.implant.response=X1"])
    with records.redacted_argv(["imprint.implant.response"], ["X1"]) as argv:
        assert RunRecord(command="run").argv == argv
        assert argv[-1] == "imprint.implant.response=" + records.REDACTED
    assert RunRecord(command="run").argv == sys.argv
