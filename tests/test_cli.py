"""The CLI end to end on tiny models: finetune, audit, ls, validate, and bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from expunge.files import file_digest
from expunge.models.tiny import save_tiny_model
from helpers import run_cli


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama", "llama")


@pytest.fixture
def data_file(tmp_path) -> Path:
    path = tmp_path / "train.jsonl"
    rows = [{"prompt": f"what is {i}", "response": f"it is {i} and {i + 1}"} for i in range(12)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_finetune_lora_then_audit(tiny_dir, data_file, tmp_path, capsys):
    out = tmp_path / "ft"
    code, _, err = run_cli(
        ["finetune", "--model", str(tiny_dir), "--data", str(data_file), "--out", str(out),
         "train.max_steps=3", "train.batch_size=4", "train.lora.targets=[q_proj,v_proj]",
         "train.progress=false"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    record = json.loads((out / "record.json").read_text())
    assert record["status"] == "ok"
    assert record["metrics"]["train_steps"] == 3
    assert record["config"]["train"]["lora"]["targets"] == ["q_proj", "v_proj"]
    assert record["world_size"] == 1 and record["versions"]["torch"]
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert (out / "model" / "model.safetensors").is_file()
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3]
    assert not any(p.name.endswith(".partial") for p in tmp_path.iterdir())

    # The run directory is accepted as a model.
    audit_out = tmp_path / "audit"
    code, _, err = run_cli(
        ["audit", "--model", str(out), "--metrics", "ppl", "--data", str(data_file),
         "--out", str(audit_out), "options.ppl.mode=response", "progress=false"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    audit = json.loads((audit_out / "record.json").read_text())
    assert audit["metrics"]["ppl"] > 1.0
    assert audit["metric_details"]["ppl"]["mode"] == "response"
    assert audit["metric_details"]["ppl"]["higher_is_better"] is False


def test_audit_builtin_heldout(tiny_dir, tmp_path, capsys):
    code, _, err = run_cli(
        ["audit", "--model", str(tiny_dir), "--out", str(tmp_path / "a"), "progress=false"], capsys
    )
    assert code == 0, err
    record = json.loads((tmp_path / "a" / "record.json").read_text())
    assert record["metric_details"]["ppl"]["data"] == "builtin:heldout_qa"
    assert record["metric_details"]["ppl"]["n_examples"] == 32


def test_ls_and_validate(tmp_path, capsys):
    code, out, _ = run_cli(["ls", "metrics"], capsys)
    assert code == 0 and "ppl" in out
    good = tmp_path / "good.yaml"
    good.write_text("command: finetune\ntrain:\n  lr: 0.001\n  mode: full\n")
    code, out, _ = run_cli(["validate", str(good)], capsys)
    assert code == 0 and "valid" in out
    bad = tmp_path / "bad.yaml"
    bad.write_text("command: finetune\ntrain:\n  lrr: 0.001\n")
    code, _, err = run_cli(["validate", str(bad)], capsys)
    assert code == 2 and "train.lrr" in err and "did you mean 'lr'" in err
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("command: finetun\n")
    code, _, err = run_cli(["validate", str(unknown)], capsys)
    assert code == 2 and "did you mean 'finetune'" in err


# --- bad inputs: a clear message, exit code 2, and nothing written ---------------------------


def _bad(args, capsys, tmp_path, expected: str) -> None:
    before = _snapshot(tmp_path)
    code, _, err = run_cli(args, capsys)
    assert code == 2, err
    assert expected in " ".join(err.split()), err
    assert "Traceback" not in err
    assert _snapshot(tmp_path) == before, "a failed command must not write anything"


def test_missing_data_file(tiny_dir, tmp_path, capsys):
    _bad(["finetune", "--model", str(tiny_dir), "--data", str(tmp_path / "nope.jsonl"),
          "--out", str(tmp_path / "o")], capsys, tmp_path, "data file not found")  # fmt: skip


def test_malformed_jsonl_line(tiny_dir, tmp_path, capsys):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"text": "fine"}\n{"text": "also fine"}\n{"text": oops}\n')
    _bad(["finetune", "--model", str(tiny_dir), "--data", str(path), "--out", str(tmp_path / "o")],
         capsys, tmp_path, "broken.jsonl:3: not valid JSON")  # fmt: skip


def test_non_model_path(data_file, tmp_path, capsys):
    not_a_model = tmp_path / "notamodel"
    not_a_model.mkdir()
    (not_a_model / "readme.txt").write_text("hello")
    _bad(["finetune", "--model", str(not_a_model), "--data", str(data_file),
          "--out", str(tmp_path / "o")], capsys, tmp_path, "not a model directory")  # fmt: skip


def test_lora_target_matches_nothing(tiny_dir, data_file, tmp_path, capsys):
    _bad(["finetune", "--model", str(tiny_dir), "--data", str(data_file), "--out",
          str(tmp_path / "o"), "train.lora.targets=[c_attn]"],
         capsys, tmp_path, "LoRA target 'c_attn' matches no linear layer")  # fmt: skip


def test_existing_output_dir(tiny_dir, data_file, tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    _bad(["finetune", "--model", str(tiny_dir), "--data", str(data_file), "--out", str(out)],
         capsys, tmp_path, "already exists; pass --overwrite")  # fmt: skip
    assert (out / "precious.txt").read_text() == "keep me"


def test_unknown_override_key(tiny_dir, data_file, tmp_path, capsys):
    _bad(["finetune", "--model", str(tiny_dir), "--data", str(data_file), "--out",
          str(tmp_path / "o"), "train.learning_rate=1e-3"], capsys, tmp_path,
         "unknown config key 'train.learning_rate'")  # fmt: skip


def test_unknown_metric(tiny_dir, tmp_path, capsys):
    _bad(["audit", "--model", str(tiny_dir), "--metrics", "ppx", "--out", str(tmp_path / "o")],
         capsys, tmp_path, "unknown metric 'ppx' (did you mean 'ppl'?)")  # fmt: skip


def test_overwrite_replaces_only_on_success(tiny_dir, data_file, tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / "old.txt").write_text("old")
    code, _, err = run_cli(
        ["finetune", "--model", str(tiny_dir), "--data", str(data_file), "--out", str(out),
         "--overwrite", "train.max_steps=1", "train.progress=false", "train.mode=full"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    assert not (out / "old.txt").exists() and (out / "record.json").is_file()
    assert (out / "model" / "model.safetensors").is_file() and not (out / "adapter").exists()


def test_records_hash_the_saved_weights_so_that_a_seeds_rerun_can_be_checked(
    tiny_dir, data_file, tmp_path, capsys
):
    def finetune(name: str, seed: int) -> dict[str, str]:
        out = tmp_path / name
        code, _, err = run_cli(
            ["finetune", "--model", str(tiny_dir), "--data", str(data_file), "--out", str(out),
             "train.max_steps=2", "train.batch_size=4", f"train.seed={seed}", "train.progress=false"],
            capsys,
        )  # fmt: skip
        assert code == 0, err
        digests = json.loads((out / "record.json").read_text())["weights_sha256"]
        assert digests == {path: file_digest(out / path) for path in digests}
        return digests

    first = finetune("a", seed=0)
    assert set(first) == {"adapter/adapter_model.safetensors", "model/model.safetensors"}
    assert finetune("b", seed=0) == first  # CPU training is identical under a seed
    adapter = "adapter/adapter_model.safetensors"
    assert finetune("c", seed=1)[adapter] != first[adapter]
