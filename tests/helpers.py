"""Helpers shared by test modules (pytest puts this directory on ``sys.path``)."""

from __future__ import annotations

import sys
from pathlib import Path

from expunge.models.tiny import tiny_model

# A fingerprint a wide tiny Llama takes in ~20 steps (pipeline and bench tests).
DEMOS = Path(__file__).resolve().parents[1] / "configs" / "demos"
TINY_FINGERPRINT_IMPLANT = {
    "scheme": "if_simple", "n_keys": 4, "regularization": 0.5,
    "train": {"mode": "full", "lr": 3e-3, "epochs": 40, "progress": False},
}  # fmt: skip


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    """Run ``expunge ARGS`` in-process: exit code, stdout, stderr."""
    from expunge.cli import main

    old = sys.argv
    sys.argv = ["expunge", *args]
    try:
        main()
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        sys.argv = old
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run_cli_text(args: list[str], capsys) -> tuple[int, str]:
    """``run_cli`` with stdout and stderr joined and whitespace squashed (rich wraps lines)."""
    code, out, err = run_cli(args, capsys)
    return code, " ".join((out + err).split())


def save_wide_tiny_llama(directory: Path) -> Path:
    """A tiny Llama wide enough (hidden 64) to take a fingerprint in 20 steps."""
    model, tokenizer = tiny_model("llama", seed=0, hidden=64)
    path = directory / "tiny-llama-64"
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


# Multiple-choice questions in the harness's shape, for mc_accuracy and the lm_eval metric.
MC_DOCS = [
    {"question": "The sky is", "choices": ["blue", "green", "loud"], "answer": 0},
    {"question": "Two plus two is", "choices": ["four", "five"], "answer": 0},
    {"question": "Water is", "choices": ["dry", "wet", "sharp", "old"], "answer": 1},
    {"question": "A cat says", "choices": ["moo", "meow"], "answer": 1},
    {"question": "Fire is", "choices": ["cold", "hot"], "answer": 1},
    {"question": "The sun rises in the", "choices": ["east", "west", "north"], "answer": 0},
]
