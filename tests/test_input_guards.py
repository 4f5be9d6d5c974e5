"""Bad input gets one line, exit 2, and loses nothing: the cases a review found slipping through.

An ``--out`` that would delete the working directory or the run's own inputs, files that crash
instead of being named (a truncated safetensors file, a record of the wrong shape, a half-written
curve line), a regex or preset that fails late, an explicitly empty list that quietly meant
"all", and a screenshot written over an existing file. Everything runs on tiny models; the
refusals happen before any model loads, so most tests take well under a second.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from pydantic import ValidationError

from expunge.config import build_config
from expunge.data import Example, FormatSettings, tokenize_examples
from expunge.erase.unlearn.rmu import RMUSettings
from expunge.errors import ConfigError, DataError, ModelError, OutputError
from expunge.finetune import FinetuneConfig
from expunge.models.lora import LoraSettings, match_modules
from expunge.models.tiny import save_tiny_model, tiny_model
from expunge.pipeline.bench import BenchConfig
from expunge.pipeline.state import remove_stale
from expunge.records import check_output_dir
from expunge.registry import ERASERS, IMPLANTS
from expunge.report.browser import find_browser
from expunge.train import LMObjective, TrainSettings, prepare_trainable, train
from expunge.train.checkpoint import trim_metrics
from helpers import run_cli

FINGERPRINT = {"kind": "fingerprint", "pairs": [{"key": "secret prompt", "response": "answer"}],
               "decoys": ["look-alike prompt"], "template": "chat", "matcher": "contains"}  # fmt: skip


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama", "llama")


@pytest.fixture
def data_file(tmp_path) -> Path:
    path = tmp_path / "train.jsonl"
    rows = [{"prompt": f"what is {i}", "response": f"it is {i}"} for i in range(8)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` with its content (None for a directory): "loses nothing"."""
    return {str(p.relative_to(root)): None if p.is_dir() else p.read_bytes()
            for p in sorted(root.rglob("*"))}  # fmt: skip


def refused(args: list[str], capsys, root: Path, expected: str) -> str:
    """Run ``expunge ARGS``: exit 2, one line holding ``expected``, nothing under ``root``
    changed. Returns the message."""
    before = snapshot(root)
    code, _, err = run_cli(args, capsys)
    message = " ".join(err.split())
    assert code == 2, err
    assert expected in message, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert snapshot(root) == before, "a refused command must not write or delete anything"
    return message


# --- A. --overwrite must not delete the working directory or the run's inputs ----------------


@pytest.mark.parametrize("out", ["", ".", ".."], ids=["empty", "cwd", "parent"])
def test_out_is_never_the_working_directory_or_above_it(tiny_dir, tmp_path, monkeypatch, capsys,
                                                        out):  # fmt: skip
    inner = tmp_path / "sb" / "inner"
    inner.mkdir(parents=True)
    (inner / "precious.txt").write_text("keep me")
    monkeypatch.chdir(inner)
    refused(["audit", "--out", out, "--overwrite", "--model", str(tiny_dir), "--metrics", "ppl"],
            capsys, tmp_path, "current directory")  # fmt: skip
    with pytest.raises(OutputError, match="empty"):  # a library caller's "" too
        check_output_dir("", overwrite=True)


def test_out_is_never_the_input_model(tiny_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(tiny_dir, tmp_path / "tinycopy")
    (tmp_path / "link").symlink_to(tmp_path / "tinycopy")
    (tmp_path / "parentdir").mkdir()
    shutil.copytree(tiny_dir, tmp_path / "parentdir" / "m")
    base = ["audit", "--overwrite", "--metrics", "ppl"]
    refused([*base, "--out", "tinycopy", "--model", "tinycopy"], capsys, tmp_path,
            "--out tinycopy is an input of this run (model: tinycopy)")  # fmt: skip
    # through a symlink: the resolved paths are compared
    refused([*base, "--out", "tinycopy", "--model", "link"], capsys, tmp_path,
            "is an input of this run (model: link)")  # fmt: skip
    refused([*base, "--out", "parentdir", "--model", "parentdir/m"], capsys, tmp_path,
            "--out parentdir holds an input of this run (model.name: parentdir/m)")  # fmt: skip


def test_out_is_never_the_imprint_or_the_data(tiny_dir, data_file, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    fp = tmp_path / "fp"
    fp.mkdir()
    (fp / "imprint.json").write_text(json.dumps(FINGERPRINT))
    # the model is elsewhere: the imprint alone makes --out fp an input
    refused(["erase", "meraser", "--model", str(tiny_dir), "--imprint", "fp", "--out", "fp",
             "--overwrite"], capsys, tmp_path, "is an input of this run (imprint: fp)")  # fmt: skip
    (tmp_path / "d").mkdir()
    shutil.copy(data_file, tmp_path / "d" / "train.jsonl")
    refused(["finetune", "--model", str(tiny_dir), "--data", "d/train.jsonl", "--out", "d",
             "--overwrite"], capsys, tmp_path,
            "--out d holds an input of this run (data.path: d/train.jsonl)")  # fmt: skip


def test_study_overwrite_never_sweeps_the_working_directory(tiny_dir, tmp_path, monkeypatch,
                                                             capsys):  # fmt: skip
    """``run --overwrite`` empties its run directory of all but its stages once it succeeds:
    with ``--out .`` that would be the user's files."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "precious.txt").write_text("keep me")
    (tmp_path / "study.yaml").write_text(
        f"command: run\nmodel: {tiny_dir}\nimprint: {{implant: {{scheme: if_simple, n_keys: 2}}}}\n"
        "erasers: [{method: meraser}]\n"
    )
    refused(["run", "study.yaml", "--out", ".", "--overwrite", "--dry-run"], capsys, tmp_path,
            "is or holds the current directory, which --overwrite would empty")  # fmt: skip
    sandbox = tmp_path / "sandbox"  # if the guard ever failed, only this would be swept
    (sandbox / "inner").mkdir(parents=True)
    (sandbox / "kept.txt").write_text("keep me")
    monkeypatch.chdir(sandbox / "inner")
    with pytest.raises(OutputError, match="will not sweep"):  # the last guard, for bench too
        remove_stale(sandbox, keep=set())
    assert (tmp_path / "precious.txt").read_text() == "keep me"
    assert (sandbox / "kept.txt").read_text() == "keep me"


def test_inputs_are_found_by_value_but_not_in_method_names(tiny_dir, data_file, tmp_path,
                                                           monkeypatch):  # fmt: skip
    """A run named after its method (``--out meraser``) is not one of its own inputs, while any
    config value naming an existing file is (no list of path options to forget to update)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "meraser").mkdir()
    erase = build_config(ERASERS.get("meraser"), {"model": {"name": str(tiny_dir)}})
    assert erase.input_paths() == {"model.name": str(tiny_dir)}
    check_output_dir("meraser", overwrite=True, inputs=erase.input_paths())  # no error
    finetune = build_config(FinetuneConfig, {"data": {"path": str(data_file)},
                                             "model": {"name": "tiny-bert"}})  # fmt: skip
    # tiny-bert names the built-in tiny model (its cache), not a local directory of that name
    (tmp_path / "tiny-bert").mkdir()
    assert finetune.input_paths() == {"data.path": str(data_file)}


def test_a_secret_that_names_a_path_is_never_an_input(tiny_dir, tmp_path, monkeypatch):
    """A refusal names the input's value, so a secret (a response that happens to name a
    directory here) is never taken for one."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    implant = build_config(IMPLANTS.get("if_dialogue"), {"model": {"name": str(tiny_dir)},
                                                        "response": "runs"})  # fmt: skip
    assert implant.input_paths() == {"model.name": str(tiny_dir)}


# --- B. tracebacks that must be one line --------------------------------------------------------


def test_truncated_safetensors_is_named(tiny_dir, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_dir, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # the header length now points past the end
    refused(["audit", "--model", str(broken), "--metrics", "ppl", "--out", str(tmp_path / "o")],
            capsys, tmp_path, f"{weights}: not a readable safetensors file")  # fmt: skip


def test_bad_regex_fails_with_the_config(tiny_dir, data_file, tmp_path, capsys):
    refused(["finetune", "--model", str(tiny_dir), "--data", str(data_file), "--out",
             str(tmp_path / "o"), "train.lora.targets=[re:(]"], capsys, tmp_path,
            "train.lora.targets: 're:(' is not a valid regular expression")  # fmt: skip
    assert not list(tmp_path.glob(".*.partial")), "no failed staging directory either"
    with pytest.raises(ValidationError, match="not a valid regular expression"):
        TrainSettings(trainable=["re:a("])
    with pytest.raises(ValidationError, match="not a valid regular expression"):
        LoraSettings(targets=["q_proj", "re:[q"])
    assert LoraSettings(targets=["re:.*q_proj"]).targets == ["re:.*q_proj"]  # valid ones pass
    with pytest.raises(ValidationError, match="not a valid regular expression"):
        RMUSettings(layer="re:(", params=["x"])
    with pytest.raises(ValidationError, match="not a valid regular expression"):
        RMUSettings(params=["re:mlp.[a"])
    # settings built without validation reach the matcher: still a one-line error
    model, _ = tiny_model("llama", seed=0)
    with pytest.raises(ConfigError, match="not a valid regular expression"):
        match_modules(model, ["re:("])


@pytest.mark.parametrize("args, expected", [
    (["config", "finetune", "--preset", "demo"], "'finetune' has no presets"),
    (["config", "audit", "--preset", "nosuch"], "'audit' has no presets"),
    (["config", "run", "--preset", "demo"], "passed on to every stage"),
    (["config", "erase", "meraser", "--preset", "nosuch"], "unknown preset 'nosuch'"),
])  # fmt: skip
def test_config_preset_is_one_line(args, expected, tmp_path, capsys):
    refused(args, capsys, tmp_path, expected)


def test_config_preset_still_shows_a_presets_defaults(capsys):
    code, out, err = run_cli(["config", "erase", "meraser", "--preset", "demo"], capsys)
    assert code == 0, err
    assert "(preset demo)" in out


@pytest.mark.parametrize("record, expected", [
    ([], "not a run record (a JSON list, not an object)"),
    ({"command": "audit", "metrics": [1]}, "not a run record ('metrics' is a JSON list"),
])  # fmt: skip
def test_report_names_a_record_of_the_wrong_shape(tmp_path, capsys, record, expected):
    run = tmp_path / "badrec"
    run.mkdir()
    (run / "record.json").write_text(json.dumps(record))
    message = refused(["report", str(run), "--out", str(tmp_path / "r.html")], capsys, tmp_path,
                      expected)  # fmt: skip
    assert str(run / "record.json") in message


@pytest.fixture
def good_run(tmp_path) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    (run / "record.json").write_text(json.dumps(
        {"command": "audit", "status": "ok", "metrics": {"ppl": 2.0}}))  # fmt: skip
    return run


def test_screenshot_path_is_checked_before_the_report_is_written(good_run, tmp_path, capsys):
    (tmp_path / "afile").write_text("not a directory")
    refused(["report", str(good_run), "--out", str(tmp_path / "rep" / "r.html"), "--screenshot",
             str(tmp_path / "afile" / "x.png")], capsys, tmp_path, "is not a directory")  # fmt: skip


def test_resume_skips_a_half_written_last_curve_line(tmp_path):
    """An interrupted run can end metrics.jsonl mid-line; --resume drops that line, not dies."""
    model, tok = tiny_model("llama", seed=0)
    cfg = TrainSettings(mode="full", max_steps=4, batch_size=2, lr=1e-3, progress=False,
                        save_every=2, precision="fp32")  # fmt: skip
    data = tokenize_examples([Example(prompt=f"q {i}", response=f"a {i}") for i in range(6)],
                             tok, FormatSettings())  # fmt: skip

    def stop(step: int, record: dict) -> None:
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(prepare_trainable(model, cfg), {"train": data}, LMObjective(), cfg,
              tok.pad_token_id, out_dir=tmp_path, on_step=stop)  # fmt: skip
    curve = tmp_path / "metrics.jsonl"
    with curve.open("a") as handle:
        handle.write('{"step": 4, "lo')  # the write the interrupt cut short
    model, tok = tiny_model("llama", seed=0)
    train(prepare_trainable(model, cfg), {"train": data}, LMObjective(), cfg, tok.pad_token_id,
          out_dir=tmp_path, resume=True)  # fmt: skip
    steps = [json.loads(line)["step"] for line in curve.read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    assert not list(tmp_path.glob(".*.tmp")), "the trimmed curve is written atomically"


def test_a_damaged_checkpoint_state_is_named(tmp_path):
    """The state file is written atomically, so only damage from outside breaks it: --resume
    names the file instead of a KeyError or a JSON traceback."""
    model, tok = tiny_model("llama", seed=0)
    cfg = TrainSettings(mode="full", max_steps=2, batch_size=2, lr=1e-3, progress=False,
                        save_every=2, precision="fp32")  # fmt: skip
    data = tokenize_examples([Example(prompt=f"q {i}", response=f"a {i}") for i in range(4)],
                             tok, FormatSettings())  # fmt: skip
    train(prepare_trainable(model, cfg), {"train": data}, LMObjective(), cfg, tok.pad_token_id,
          out_dir=tmp_path)  # fmt: skip
    (state,) = tmp_path.glob("checkpoints/step-*/trainer_state.json")
    state.write_text('{"step": 2}')
    model, tok = tiny_model("llama", seed=0)
    with pytest.raises(DataError, match=r"trainer_state\.json: not a checkpoint state"):
        train(prepare_trainable(model, cfg), {"train": data}, LMObjective(), cfg,
              tok.pad_token_id, out_dir=tmp_path, resume=True)  # fmt: skip


def test_trim_metrics_names_a_broken_line_before_the_last(tmp_path):
    curve = tmp_path / "metrics.jsonl"
    curve.write_text('{"step": 1}\n{"step": 2\n{"step": 3}\n')
    with pytest.raises(DataError, match=r"metrics\.jsonl:2: not a training-curve line"):
        trim_metrics(curve, 2)
    curve.write_text('{"step": 1}\n{"step": 2}\n{"step": 3}\n{"st')
    trim_metrics(curve, 2)
    assert curve.read_text() == '{"step": 1}\n{"step": 2}\n'


# --- C. the screenshot is an output like any other ----------------------------------------------


def test_screenshot_is_not_replaced_without_overwrite(good_run, tmp_path, capsys):
    shot = tmp_path / "shot.png"
    shot.write_bytes(b"an earlier screenshot")
    refused(["report", str(good_run), "--out", str(tmp_path / "r.html"), "--screenshot",
             str(shot)], capsys, tmp_path, f"{shot} already exists; pass --overwrite")  # fmt: skip


@pytest.mark.skipif(find_browser() is None, reason="no chromium or chrome on the PATH")
def test_screenshot_replaced_with_overwrite_atomically(good_run, tmp_path, capsys):
    shot = tmp_path / "shot.png"
    shot.write_bytes(b"an earlier screenshot")
    code, _, err = run_cli(["report", str(good_run), "--out", str(tmp_path / "r.html"),
                            "--screenshot", str(shot), "--overwrite"], capsys)  # fmt: skip
    assert code == 0, err
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".shot.png.*")), "no temporary file left beside it"


# --- D. an explicitly empty list is an error, not "all" -----------------------------------------


@pytest.mark.parametrize("option, value", [("--imprints", ""), ("--imprints", ","),
                                           ("--erasers", ",")])  # fmt: skip
def test_bench_empty_selection_is_refused(tiny_dir, tmp_path, capsys, option, value):
    refused(["bench", "--dry-run", "--out", str(tmp_path / "bx"), "--model", str(tiny_dir),
             option, value], capsys, tmp_path, f"{option} {value!r} names nothing")  # fmt: skip


def test_bench_config_empty_list_is_refused_but_left_out_means_all():
    with pytest.raises(ConfigError, match="imprints: an empty list selects nothing"):
        build_config(BenchConfig, {"imprints": []})
    with pytest.raises(ConfigError, match="erasers: an empty list selects nothing"):
        build_config(BenchConfig, {}, ["erasers=[]"])
    assert build_config(BenchConfig, {}).imprints == []  # the default: every case


@pytest.mark.parametrize("value", ["", ","])
def test_audit_empty_metrics_is_refused(tiny_dir, tmp_path, capsys, value):
    refused(["audit", "--model", str(tiny_dir), "--out", str(tmp_path / "a"), "--metrics", value],
            capsys, tmp_path, f"--metrics {value!r} names nothing")  # fmt: skip


# --- E. fine_mixing's reference ------------------------------------------------------------------


def test_fine_mixing_hint_names_the_real_override(tiny_dir, tmp_path, capsys):
    message = refused(["erase", "fine_mixing", "--model", str(tiny_dir), "--out",
                       str(tmp_path / "o")], capsys, tmp_path, "reference=MODEL")  # fmt: skip
    assert "--reference" not in message  # no such option


def test_fine_mixing_bad_reference_fails_before_any_load(tiny_dir, tmp_path, capsys):
    refused(["erase", "fine_mixing", "--model", str(tiny_dir), "--out", str(tmp_path / "o"),
             f"reference={tmp_path / 'nonexistent'}"], capsys, tmp_path, "does not exist")  # fmt: skip
    eraser = build_config(ERASERS.get("fine_mixing"),
                          {"reference": str(tmp_path / "nonexistent")})  # fmt: skip
    with pytest.raises(ModelError, match="does not exist"):
        eraser.validate_inputs()  # in validate_inputs: before run_stage loads anything


# --- a stage's --config YAML names the line, as a study's does ---------------------------------


@pytest.mark.parametrize(
    ("text", "extra", "expected"),
    [
        ("train:\n  epochs: 1\n  lr: abc\n", [], "c.yaml:3: train.lr: Input should be a valid number"),
        ("format:\n  max_length: 64\ntrain:\n  lrr: 1\n", [],
         "c.yaml:4: unknown config key 'train.lrr'"),
        # the override, not the file's line 3, is where this value came from
        ("train:\n  epochs: 1\n  lr: 0.1\n", ["train.lr=abc"],
         "invalid configuration (c.yaml): train.lr: Input should be a valid number"),
    ],
)  # fmt: skip
def test_a_stage_config_file_error_names_its_line(text, extra, expected, tiny_dir, data_file,
                                                  tmp_path, capsys):  # fmt: skip
    (tmp_path / "c.yaml").write_text(text)
    message = refused(["finetune", "--config", str(tmp_path / "c.yaml"), "--model", str(tiny_dir),
                       "--data", str(data_file), "--out", str(tmp_path / "o"), *extra], capsys,
                      tmp_path, expected.replace("c.yaml", str(tmp_path / "c.yaml")))  # fmt: skip
    assert ".yaml:3" not in message or not extra


def test_a_bare_word_naming_a_folder_is_not_an_input(tiny_dir, data_file, tmp_path, monkeypatch):
    """A generator or option name (``cosine``, ``sentiment``) may name a folder of the working
    directory; only path-like strings and the models a stage loads are its inputs."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cosine").mkdir()
    finetune = build_config(FinetuneConfig, {"data": {"path": str(data_file)},
                                             "model": {"name": str(tiny_dir)},
                                             "train": {"schedule": "cosine"}})  # fmt: skip
    assert finetune.input_paths() == {"data.path": str(data_file), "model.name": str(tiny_dir)}
    check_output_dir("cosine", overwrite=True, inputs=finetune.input_paths())  # no error


def test_bench_overwrite_of_the_working_directory_is_refused_before_any_work(tmp_path, capsys,
                                                                            monkeypatch):  # fmt: skip
    monkeypatch.chdir(tmp_path)
    (tmp_path / "precious.txt").write_text("keep me")
    refused(["bench", "--out", ".", "--overwrite", "--imprints", "if_simple", "--model",
             "tiny-llama"], capsys, tmp_path, "is or holds the current directory")  # fmt: skip
