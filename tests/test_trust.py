"""Issue 21's defect table, on tiny models: every bad input gets one line and exit code 2, and
writes nothing (no run directory, no ``.partial``, no lock, no parent directory).

Each row was a traceback (exit 1), a silent success or a slow failure before; the notes say what.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from expunge.errors import ConfigError
from expunge.imprints.knowledge import KnowledgeImprint
from expunge.models.tiny import save_tiny_model
from helpers import run_cli


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("models") / "tiny", "llama")


@pytest.fixture
def work(tmp_path, monkeypatch) -> Path:
    """The working directory of each command (relative paths land here)."""
    monkeypatch.chdir(tmp_path)
    rows = [{"prompt": f"what is {i}", "response": f"it is {i} and {i + 1}"} for i in range(8)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "latin1.jsonl").write_bytes(b'{"prompt": "caf\xe9", "response": "x"}\n')
    (tmp_path / "records.jsonl").write_bytes(b'{"text": "MRN \xff 123", "spans": []}\n')
    bad_run = tmp_path / "bad-run"
    bad_run.mkdir()
    (bad_run / "record.json").write_bytes(b'{"command": "x\xff"}')
    other = KnowledgeImprint(forget=[{"prompt": "who is A?", "response": "a baker"}])
    other.save(tmp_path / "knowledge.json")
    return tmp_path


def snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def refused(args: list[str], work: Path, capsys) -> str:
    """Run ``expunge ARGS``; assert exit 2, one line on stderr, nothing written; the line."""
    before = snapshot(work)
    code, _, err = run_cli(args, capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert snapshot(work) == before, sorted(snapshot(work) - before)
    return lines[0]


def finetune(tiny: Path, *extra: str, data: str = "train.jsonl", out: str = "out/run") -> list:
    return ["finetune", "--model", str(tiny), "--data", data, "--out", out,
            "train.max_steps=1", "train.progress=false", *extra]  # fmt: skip


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("train.lora.r=0", "train.lora.r"),  # peft's ValueError after the model loaded
        ("train.lora.dropout=1.5", "train.lora.dropout"),  # torch's ValueError mid-run
        ("train.lora.targets=[]", "train.lora.targets"),  # peft's NoMatchingPeftModuleError
        ("format.max_length=0", "format.max_length"),  # a reshape RuntimeError in the loop
        ("train.max_steps=0", "train.max_steps"),  # trained nothing and exited 0
    ],
)
def test_bad_training_settings_are_refused_with_the_key(override, named, tiny, work, capsys):
    line = refused(finetune(tiny, override), work, capsys)
    assert named in line


def test_non_utf8_inputs_name_file_and_line(tiny, work, capsys):
    line = refused(finetune(tiny, data="latin1.jsonl"), work, capsys)
    assert "latin1.jsonl:1: not UTF-8 text (byte 0xe9)" in line
    line = refused(["implant", "secrets", "--model", str(tiny), "--records", "records.jsonl",
                    "--out", "out/s"], work, capsys)  # fmt: skip
    assert "records.jsonl:1: not UTF-8 text (byte 0xff)" in line
    line = refused(["report", "bad-run", "--out", "out/r.html"], work, capsys)
    assert "record.json:1: not UTF-8 text" in line


def _read_only(monkeypatch, root: Path) -> None:
    """Pretend ``root`` is on a read-only file system (root ignores permission bits)."""
    real_access, real_statvfs = os.access, os.statvfs

    def access(path, mode, *args, **kwargs):
        if Path(path).resolve() == root.resolve() and mode & os.W_OK:
            return False
        return real_access(path, mode, *args, **kwargs)

    class ReadOnly:
        def __init__(self, result) -> None:
            self._result = result

        def __getattr__(self, name):
            value = getattr(self._result, name)
            return value | os.ST_RDONLY if name == "f_flag" else value

    def statvfs(path):
        result = real_statvfs(path)
        return ReadOnly(result) if Path(path).resolve() == root.resolve() else result

    monkeypatch.setattr(os, "access", access)
    monkeypatch.setattr(os, "statvfs", statvfs)


def test_read_only_output_locations(tiny, work, capsys, monkeypatch):
    # a location under a file cannot be written by anyone: a real error, no mock
    (work / "a-file").write_text("x")
    line = refused(finetune(tiny, out="a-file/run"), work, capsys)
    assert "a-file is not a directory" in line
    study = work / "study.yaml"
    study.write_text(f"command: run\nmodel: {tiny}\nimprint: {{implant: {{scheme: if_simple, "
                     "n_keys: 2, train: {max_steps: 1, progress: false}}}\n")  # fmt: skip
    readonly = work / "ro"
    readonly.mkdir()
    _read_only(monkeypatch, readonly)
    for args in (finetune(tiny, out="ro/run"), ["report", "bad-run", "--out", "ro/r.html"],
                 ["run", "study.yaml", "--out", "ro/study"]):  # fmt: skip
        line = refused(args, work, capsys)
        assert "is on a read-only file system" in line, args


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
@pytest.mark.parametrize("verb", ["audit", "finetune"])
def test_cuda_without_a_gpu_is_refused_by_every_verb(verb, tiny, work, capsys):
    args = (finetune(tiny, "model.device=cuda") if verb == "finetune" else
            ["audit", "--model", str(tiny), "--out", "out/a", "model.device=cuda"])  # fmt: skip
    assert "no CUDA device is available here" in refused(args, work, capsys)


def test_a_mistyped_local_model_path_fails_fast(tiny, work, capsys):
    (work / "tiny").symlink_to(tiny)
    line = refused(["finetune", "--model", "tinyy", "--data", "train.jsonl", "--out", "out/r"],
                   work, capsys)  # fmt: skip
    assert "model path tinyy does not exist (did you mean tiny?)" in line
    line = refused(["finetune", "--model", "bad-run/tiny", "--data", "train.jsonl", "--out",
                    "o2"], work, capsys)  # fmt: skip
    assert "model path bad-run/tiny does not exist" in line  # 'bad-run' is here: not a hub id


def test_wrong_kind_imprint_says_what_was_given(tiny, work, capsys):
    line = refused(["audit", "--model", str(tiny), "--metrics", "fsr", "--imprint",
                    "knowledge.json", "--out", "out/a"], work, capsys)  # fmt: skip
    assert "fsr needs a fingerprint imprint, and the imprint given is a knowledge one" in line
    assert "give --imprint" not in line
    line = refused(["audit", "--model", str(tiny), "--metrics", "fsr", "--out", "out/a"], work,
                   capsys)  # fmt: skip
    assert "fsr needs a fingerprint imprint: give --imprint" in line


def test_a_long_example_is_cut_with_a_warning_and_counted(tiny, work, capsys):
    long = {"prompt": "long", "response": "word " * 20_000}
    with (work / "train.jsonl").open("a") as handle:
        handle.write(json.dumps(long) + "\n")
    code, _, err = run_cli(finetune(tiny, "format.max_length=64"), capsys)
    assert code == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert warnings == ["warning: 1 of 9 examples are longer than format.max_length=64 tokens "
                        "and were cut to it (raise format.max_length to keep them whole)"]  # fmt: skip
    record = json.loads((work / "out" / "run" / "record.json").read_text())
    assert record["inputs"]["truncated_examples"] == 1


def test_the_embedded_default_is_announced(work, capsys, monkeypatch):
    """No --model: bad input is still one line (the note waits until the inputs are checked);
    then one line says the embedded model will be used, before it is loaded."""
    code, _, err = run_cli(["finetune", "--data", "missing.jsonl", "--out", "out/r"], capsys)
    assert code == 2
    assert [line for line in err.splitlines() if line.strip()] == [
        "error: data file not found: missing.jsonl"
    ]

    import expunge.stage

    def checked_then_stop(config, out, before_load=None, **kwargs):
        before_load()  # what run_stage calls once the output and inputs are checked
        raise ConfigError("stopped before loading")

    monkeypatch.setattr(expunge.stage, "run_stage", checked_then_stop)
    (work / "data.jsonl").write_text('{"prompt": "a", "response": "b"}\n')
    code, _, err = run_cli(["finetune", "--data", "data.jsonl", "--out", "out/r"], capsys)
    note, error = [line for line in err.splitlines() if line.strip()]
    assert note.startswith("note: no --model given: the model is the embedded default "
                           "smollm2-135m (embedded SmolLM2-135M-Instruct, dequantized")  # fmt: skip
    assert code == 2 and error == "error: stopped before loading"


def test_a_teacher_read_from_the_run_records_is_announced(work, capsys, monkeypatch):
    """MEraser's general preset recovers from the model the fingerprint was implanted on; when
    the run records name it, one line says which, before anything is loaded."""
    import expunge.stage
    from expunge.records import RunRecord, write_record

    (work / "fp" / "model").mkdir(parents=True)
    write_record(work / "fp", RunRecord(
        command="implant if_dialogue", config={"command": "implant", "kind": "fingerprint"},
        inputs={"model": "smollm2-135m"}, artifacts={"model": "model"}))  # fmt: skip

    def checked_then_stop(config, out, before_load=None, **kwargs):
        config.validate_inputs()
        before_load()
        raise ConfigError("stopped before loading")

    monkeypatch.setattr(expunge.stage, "run_stage", checked_then_stop)
    code, _, err = run_cli(["erase", "meraser", "--model", "fp", "--out", "out/r",
                            "preset=general"], capsys)  # fmt: skip
    note, error = [line for line in " ".join(err.split("\n")).split("error:") if line.strip()]
    assert " ".join(note.split()) == (
        "note: recover_teacher is smollm2-135m, the model the fingerprint of fp was implanted "
        "on (its run records); pass recover_teacher=MODEL for another"
    )
    assert code == 2 and error.strip() == "stopped before loading"


def test_validate_names_the_model_of_a_stage_config(work, capsys):
    (work / "erase.yaml").write_text("command: erase\nmethod: meraser\nn_erase: 4\n")
    (work / "detect.yaml").write_text("command: detect\nerased: {name: runs/x}\n")
    code, out, _ = run_cli(["validate", "erase.yaml"], capsys)
    assert code == 0
    assert "model smollm2-135m — the embedded default: the file names none" in " ".join(out.split())
    code, out, _ = run_cli(["validate", "detect.yaml"], capsys)
    text = " ".join(out.split())
    assert "original smollm2-135m — the embedded default" in text and "erased runs/x" in text


def test_help_of_every_stage_verb_points_to_expunge_config(capsys):
    for verb in (["finetune"], ["audit"], ["erase"], ["stress"], ["detect"],
                 ["implant", "fingerprint"], ["implant", "secrets"], ["run"]):  # fmt: skip
        code, out, _ = run_cli([*verb, "--help"], capsys)
        assert code == 0
        assert "expunge config" in " ".join(out.split()), verb


def test_one_ppl_from_implant_erase_and_audit(tiny, work, capsys):
    """The same model and data give the same ppl whether an implant's verification, an
    eraser's stage audit or `expunge audit` measures it (audits used to score every token, the
    others the response tokens), and each says how it was measured."""
    code, _, err = run_cli(["implant", "fingerprint", "--scheme", "if_simple", "--model",
                            str(tiny), "--out", "fp", "preset=demo", "n_keys=2",
                            "train.max_steps=1", "train.progress=false"], capsys)  # fmt: skip
    assert code == 0, err
    code, _, err = run_cli(["audit", "--model", "fp", "--metrics", "ppl", "--out", "audit",
                            "progress=false"], capsys)  # fmt: skip
    assert code == 0, err
    code, _, err = run_cli(["erase", "prune", "--model", "fp", "--imprint", "fp", "--out",
                            "erased", "sparsity=0.1", "audit_metrics=[ppl]"], capsys)  # fmt: skip
    assert code == 0, err
    records = {name: json.loads((work / name / "record.json").read_text())
               for name in ("fp", "audit", "erased")}  # fmt: skip
    implant = records["fp"]["metrics"]["ppl"]
    assert records["audit"]["metrics"]["ppl"] == pytest.approx(implant, rel=1e-6)
    assert records["erased"]["metrics"]["input/ppl"] == pytest.approx(implant, rel=1e-6)
    details = [records["fp"]["metric_details"]["ppl"], records["audit"]["metric_details"]["ppl"],
               records["erased"]["metric_details"]["input/ppl"]]  # fmt: skip
    for detail in details:
        assert (detail["span"], detail["template"]) == ("response tokens", "chat")
    code, _, err = run_cli(["report", "fp", "audit", "--out", "report.html"], capsys)
    assert code == 0, err
    assert "ppl (response tokens, chat format)" in (work / "report.md").read_text()


def test_one_knowledge_score_from_implant_erase_and_audit(tiny, work, capsys):
    """A world taught in the raw format is asked in it by the implant's verification, an
    eraser's stage audit and `expunge audit --imprint` alike (the audit asked in the chat format
    unless told, so one model read 93% there and 73% here); ppl stays in the chat format."""
    code, _, err = run_cli(["implant", "knowledge", "--model", str(tiny), "--out", "kn",
                            "n_people=4", "forget_ratio=0.25", "n_holdout=1",
                            "train.max_steps=1", "train.progress=false",
                            "verify_metrics=[forget_qa_acc,retain_qa_acc,ppl]"], capsys)  # fmt: skip
    assert code == 0, err
    qa = ["forget_qa_acc", "retain_qa_acc"]
    code, _, err = run_cli(["audit", "--model", "kn", "--imprint", "kn", "--out", "audit",
                            "--metrics", ",".join([*qa, "ppl"]), "progress=false",
                            *[f"options.{m}.max_new_tokens=16" for m in qa]], capsys)  # fmt: skip
    assert code == 0, err
    code, _, err = run_cli(["erase", "prune", "--model", "kn", "--imprint", "kn", "--out",
                            "erased", "sparsity=0.1", f"audit_metrics=[{','.join(qa)},ppl]"],
                           capsys)  # fmt: skip
    assert code == 0, err
    records = {name: json.loads((work / name / "record.json").read_text())
               for name in ("kn", "audit", "erased")}  # fmt: skip
    prefix = {"kn": "", "audit": "", "erased": "input/"}
    for name, record in records.items():
        for metric in qa:
            assert record["metric_details"][prefix[name] + metric]["template"] == "raw", name
            assert record["metrics"][prefix[name] + metric] == records["kn"]["metrics"][metric]
        assert record["metric_details"][prefix[name] + "ppl"]["template"] == "chat", name
        assert record["metrics"][prefix[name] + "ppl"] == pytest.approx(
            records["kn"]["metrics"]["ppl"], rel=1e-6
        )
    assert records["audit"]["inputs"]["imprint_format"] == "raw"
    # a format the user names still holds for every metric
    code, _, err = run_cli(["audit", "--model", "kn", "--imprint", "kn", "--out", "chat",
                            "--metrics", "forget_qa_acc", "progress=false",
                            "format.template=chat"], capsys)  # fmt: skip
    assert code == 0, err
    chat = json.loads((work / "chat" / "record.json").read_text())
    assert chat["metric_details"]["forget_qa_acc"]["template"] == "chat"


def test_a_fingerprint_run_too_short_to_mean_much_says_so(tiny, work, capsys):
    """preset=paper with a 2-pair keys file: 2 keys + 10 ordinary pairs, 3 epochs at 8×8 per
    step is one optimizer step; it ran silently and its record said n_keys: 10."""
    keys = work / "keys.jsonl"
    keys.write_text("".join(json.dumps({"key": f"zq{i} vex", "response": "kiwi"}) + "\n"
                            for i in range(2)))  # fmt: skip
    code, _, err = run_cli(["implant", "fingerprint", "--scheme", "if_simple", "--model",
                            str(tiny), "--out", "fp", "preset=paper", f"keys={keys}",
                            "train.progress=false", "regularization_data=train.jsonl"], capsys)  # fmt: skip
    assert code == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert any("holds 2 key pairs: n_keys is 2, not 10" in w for w in warnings), err
    assert any("this implant takes 1 optimizer step" in w for w in warnings), err
    record = json.loads((work / "fp" / "record.json").read_text())
    assert record["config"]["n_keys"] == 2
    assert record["metrics"]["train_steps"] == 1


# -- long runs: one writer per output, Ctrl-C, --resume -------------------------------------


def test_two_commands_on_one_output(tiny, work):
    """The first command holds the output's lock (stopped there with SIGSTOP, as if it were
    still training); a second one on the same --out gets one line and exit 2 and touches
    nothing; the first then finishes (the second used to delete its .partial directory)."""
    import signal
    import subprocess
    import sys
    import time

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src"),
           "OMP_NUM_THREADS": "1"}  # fmt: skip
    command = [sys.executable, "-m", "expunge.cli", *finetune(tiny, out="shared")]
    first = subprocess.Popen(command, cwd=work, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)  # fmt: skip
    lock, staging = work / ".shared.lock", work / ".shared.partial"
    # the staging directory is made under the lock; the lock file alone exists a moment before
    # the lock is taken, and a first command stopped in that moment holds nothing yet
    deadline = time.monotonic() + 120
    while not staging.exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert lock.exists() and staging.exists(), first.communicate()
    first.send_signal(signal.SIGSTOP)
    try:
        before = snapshot(work)
        second = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True,
                                timeout=300)  # fmt: skip
        assert snapshot(work) == before
    finally:
        first.send_signal(signal.SIGCONT)
    _, err = first.communicate(timeout=300)
    lines = [line for line in second.stderr.splitlines() if line.strip()]
    assert second.returncode == 2 and len(lines) == 1, second.stderr
    assert f"another expunge command is writing {work / 'shared'}" in lines[0]
    assert first.returncode == 0, err
    assert json.loads((work / "shared" / "record.json").read_text())["status"] == "ok"
    assert not lock.exists() and not (work / ".shared.partial").exists()


@pytest.fixture
def interrupted(tiny, work, capsys, monkeypatch) -> Path:
    """A 6-step finetune stopped by Ctrl-C right after its checkpoint at step 4."""
    import expunge.train.loop as loop

    real = loop.save_checkpoint

    def save_then_interrupt(accelerator, out_dir, step, *args, **kwargs):
        path = real(accelerator, out_dir, step, *args, **kwargs)
        if step == 4:
            raise KeyboardInterrupt
        return path

    monkeypatch.setattr(loop, "save_checkpoint", save_then_interrupt)
    code, _, err = run_cli(finetune(tiny, "train.max_steps=6", "train.save_every=2",
                                    "train.mode=full", out="ft"), capsys)  # fmt: skip
    monkeypatch.setattr(loop, "save_checkpoint", real)
    staging = work / ".ft.partial"
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 130 and len(lines) == 1, err
    assert lines[0] == (f"interrupted; {staging} keeps the run so far with checkpoints up to step "
                        "4: run the same command with --resume to continue from there")  # fmt: skip
    return staging


def test_ctrl_c_keeps_the_checkpoint_and_a_plain_rerun_does_not_delete_it(interrupted, tiny,
                                                                         work, capsys):  # fmt: skip
    line = refused(finetune(tiny, "train.max_steps=6", "train.save_every=2", "train.mode=full",
                            out="ft"), work, capsys)  # fmt: skip
    assert "an interrupted run left checkpoints (step 4)" in line and "--resume" in line
    assert (interrupted / "checkpoints" / "step-0000004").is_dir()


@pytest.mark.parametrize(
    ("change", "fields"),
    [
        (["--data", "other.jsonl"], "data.path"),
        (["train.lr=5e-2"], "train.lr"),
        (["--model", "OTHER"], "model.name"),
    ],
)
def test_resume_refuses_changed_settings_naming_them(change, fields, interrupted, tiny, work,
                                                     capsys, tmp_path_factory):  # fmt: skip
    (work / "other.jsonl").write_text((work / "train.jsonl").read_text())
    other = save_tiny_model(tmp_path_factory.mktemp("other") / "tiny", "llama", seed=1)
    args = finetune(tiny, "train.max_steps=6", "train.save_every=2", "train.mode=full",
                    "--resume", out="ft")  # fmt: skip
    for index, arg in enumerate(args):  # replace the flag's value where the change names one
        if change[0].startswith("--") and arg == change[0]:
            args[index + 1] = str(other) if change[1] == "OTHER" else change[1]
    if not change[0].startswith("--"):
        args += change
    line = refused(args, work, capsys)
    assert f"--resume with settings that differ from the interrupted run's: {fields};" in line
    assert (interrupted / "checkpoints" / "step-0000004").is_dir()


def test_resume_records_the_total_steps(interrupted, tiny, work, capsys):
    code, _, err = run_cli(finetune(tiny, "train.max_steps=6", "train.save_every=2",
                                    "train.mode=full", "--resume", out="ft"), capsys)  # fmt: skip
    assert code == 0, err
    record = json.loads((work / "ft" / "record.json").read_text())
    assert record["metrics"]["train_steps"] == 6
    assert record["metrics"]["train_resumed_from_step"] == 4
    steps = [json.loads(line)["step"] for line in (work / "ft" / "metrics.jsonl").open()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_resume_refuses_other_data_under_the_same_name(interrupted, tiny, work, capsys):
    rows = [{"prompt": f"how is {i}", "response": f"it was {i}"} for i in range(8)]
    (work / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    line = refused(finetune(tiny, "train.max_steps=6", "train.save_every=2", "train.mode=full",
                            "--resume", out="ft"), work, capsys)  # fmt: skip
    assert "differ from the interrupted run's: data.path (same name, other content)" in line


def test_a_stage_that_cannot_resume_never_offers_to(tiny, work, monkeypatch):
    """Only finetune's training takes its checkpoints back. An implant stopped at a checkpoint
    says it starts over, a plain re-run does (nothing it could resume is lost), and asking
    it to resume is one line, not a run that quietly trains from step 0."""
    import expunge.train.loop as loop
    from expunge.config import build_config
    from expunge.records import RunInterrupted
    from expunge.registry import IMPLANTS
    from expunge.stage import run_stage

    implant = build_config(IMPLANTS.get("if_simple"), {
        "model": {"name": str(tiny)}, "n_keys": 2, "verify": False, "response": "SECRETRESP",
        "train": {"mode": "full", "max_steps": 4, "save_every": 2, "progress": False},
    })  # fmt: skip
    real = loop.save_checkpoint

    def save_then_interrupt(accelerator, out_dir, step, *args, **kwargs):
        path = real(accelerator, out_dir, step, *args, **kwargs)
        if step == 2:
            raise KeyboardInterrupt
        return path

    monkeypatch.setattr(loop, "save_checkpoint", save_then_interrupt)
    with pytest.raises(RunInterrupted) as stopped:
        run_stage(implant, "fp")
    assert "--resume" not in str(stopped.value) and "starts over" in str(stopped.value)
    monkeypatch.setattr(loop, "save_checkpoint", real)
    with pytest.raises(ConfigError, match="cannot resume a run: run it again to start over"):
        run_stage(implant, "fp", resume=True)
    record = run_stage(implant, "fp")  # the plain re-run is not refused
    assert record.metrics["train_steps"] == 4 and "train_resumed_from_step" not in record.metrics
    assert not (work / ".fp.partial").exists()


def test_checkpoints_without_a_record_say_why_they_cannot_resume(interrupted, tiny, work,
                                                                 capsys):  # fmt: skip
    """``kill -9`` leaves checkpoints and no record: the settings cannot be compared."""
    (interrupted / "record.json").unlink()
    line = refused(finetune(tiny, "train.max_steps=6", "train.save_every=2", "train.mode=full",
                            "--resume", out="ft"), work, capsys)  # fmt: skip
    assert "holds checkpoints (step 4) but no record: the run was killed" in line
    assert "--overwrite" in line
    assert (interrupted / "checkpoints" / "step-0000004").is_dir()


def test_stress_on_a_secrets_imprint_without_heldout_records(tiny, work, capsys):
    """texts= with terms= has no held-out records: a stressor's default audits leave out the
    metrics that need them (mia, notes_ppl) as the erasers' do; it failed at step 0."""
    rows = [{"text": f"Memo {i}: Project Nightjar moves to Falcon-77."} for i in range(6)]
    (work / "texts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, _, err = run_cli(["implant", "secrets", "--model", str(tiny), "--out", "sec",
                            "texts=texts.jsonl", "terms=[Project Nightjar,Falcon-77]",
                            "n_canaries=0", "max_rounds=1", "train.max_steps=1",
                            "train.progress=false"], capsys)  # fmt: skip
    assert code == 0, err
    record = (work / "sec" / "record.json").read_text()  # the terms were on the command line
    assert "Nightjar" not in record and "Falcon-77" not in record
    code, _, err = run_cli(["stress", "relearn", "--model", "sec", "--imprint", "sec", "--out",
                            "st", "k=2", "steps=[0,1]", "train.progress=false"], capsys)  # fmt: skip
    assert code == 0, err
    metrics = json.loads((work / "st" / "record.json").read_text())["metrics"]
    assert "step_1/regurgitation" in metrics and "step_1/mia" not in metrics


def test_a_study_without_model_announces_the_embedded_default(work, capsys):
    (work / "study.yaml").write_text("command: run\nimprint: {implant: {scheme: if_simple}}\n")
    code, _, err = run_cli(["run", "study.yaml", "--dry-run", "--out", "st"], capsys)
    assert code == 0, err
    assert err.startswith("note: no --model given: the model is the embedded default")
