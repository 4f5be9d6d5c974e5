"""Every shipped config in configs/ validates against its schema and says how to run it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from helpers import run_cli_text as run_cli

ROOT = Path(__file__).resolve().parents[1] / "configs"
CONFIGS = sorted(p for p in ROOT.rglob("*.yaml") if p.parent.name != "accelerate")


def test_configs_are_shipped():
    names = {path.name for path in (ROOT / "studies").glob("*.yaml")}
    for paper in ("meraser", "fine_mixing", "sani"):
        assert {f"{paper}_demo.yaml", f"{paper}_paper.yaml"} <= names
    demos = {path.stem for path in (ROOT / "demos").glob("*.yaml")}
    assert {"main", "fingerprint", "secrets", "backdoor", "unlearning", "finetune"} <= demos


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_config_validates(path, capsys):
    """``expunge validate`` dispatches on the file's ``command:`` (run, demo_*, implant, ...)."""
    code, out = run_cli(["validate", str(path)], capsys)
    assert code == 0, out
    assert "valid" in out


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_config_opens_with_how_to_run_it(path):
    lines = path.read_text().splitlines()
    assert lines[0].startswith("# expunge "), f"{path.name}: first line must be the command"
    command = yaml.safe_load(path.read_text())["command"]
    if path.parent.name == "demos":  # `expunge demo NAME` runs configs/demos/NAME.yaml
        assert lines[0].startswith(f"# expunge demo {path.stem}"), path.name
    else:
        assert command in lines[0], f"{path.name}: the first line does not run a {command} config"
    comment = []
    for line in lines[1:]:
        if not line.startswith("#"):
            break
        comment.append(line)
    text = " ".join(" ".join(line.lstrip("#").split()) for line in comment)
    assert len(text.split()) >= 25, f"{path.name}: say what the run should show"
    assert "should show" in text, f"{path.name}: say what the run should show"
