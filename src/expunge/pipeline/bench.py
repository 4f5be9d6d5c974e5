"""``expunge bench``: every imprint type against every eraser that applies to it, one leaderboard.

The matrix (``MATRIX``) pairs each implantable imprint type with the registered erasers made for
its kind — fingerprints (``if_simple``, ``if_dialogue``, ``utf``, ``chain_hash``): MEraser, clean
incremental fine-tuning, 20% L1 pruning; the ``backdoor``: Fine-mixing, E-PUR, clean
fine-tuning, fine-pruning; ``secrets``: SANI, repair-only, scrubbed retraining, span gradient
ascent. Each imprint type is one ordinary pipeline (``expunge run``) in ``OUT/IMPRINT/``:
implant → audit the clean and the imprinted model → each eraser → audit → relearn each erased
model and the clean one (the control) → trace detection on each erased model. So a re-run does
no work twice, an interrupted bench resumes, and ``expunge report OUT/IMPRINT`` shows any of them.

From the records, ``OUT/leaderboard.md`` and ``OUT/leaderboard.json`` hold one row per imprint
type and eraser (``expunge.report.leaderboard``): imprint strength before/after, utility cost,
erase wall time, trace detectability, relearning steps to come back; ``OUT/report.html`` is the
report of every pipeline. ``--quick`` uses smaller implants and fewer relearning steps; the
matrix is sized for the embedded model at ``preset=demo`` (CPU: expect an hour or more for all
of it; one imprint type with ``--quick`` takes minutes). Knowledge unlearning has no implant
(its imprint is a fine-tuned world, see ``expunge demo unlearning``): add a case with
``imprint: {file: ...}`` and ``model:`` in a ``--config`` YAML to bench it.
"""

from __future__ import annotations

import copy
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from expunge.config import StrictModel, deep_merge, suggest
from expunge.errors import ConfigError, ExpungeError, OutputError, OutputExistsError
from expunge.files import atomic_write_json
from expunge.models.loading import ModelSettings
from expunge.records import (
    RunRecord,
    holds_working_directory,
    record_argv,
    redact_argv,
    redacted_argv,
    write_record,
)
from expunge.report.leaderboard import write_leaderboard

MARKER = "bench.json"


class BenchCase(StrictModel):
    """One imprint type: how to implant it, its erasers, and what the leaderboard ranks on."""

    imprint: dict[str, Any]  # a pipeline imprint section: {implant: {scheme, ...}} or {file}
    model: str | None = None  # the imprinted model when `imprint` is a file
    erasers: list[dict[str, Any]]  # pipeline eraser entries (name, method, settings)
    quick: dict[str, Any] = Field(default_factory=dict)  # merged into imprint.implant by --quick
    quick_erasers: dict[str, dict[str, Any]] = Field(default_factory=dict)  # per eraser name
    strength: str  # the imprint-strength metric
    utility: str  # the utility metric
    audit: dict[str, Any] = Field(default_factory=dict)  # the pipeline's audit section
    relearn_k: int = Field(default=4, ge=1)  # own-data examples the relearning stress uses


def _erasers(kind: str) -> list[dict[str, Any]]:
    """The registered erasers made for ``kind``, each with the settings it is benched with."""
    from expunge.registry import ERASERS

    return [
        {"method": m, **ERASERS.meta(m).get("bench", {})} for m in ERASERS.with_meta("kinds", kind)
    ]


def _quick_erasers(kind: str) -> dict[str, dict[str, Any]]:
    from expunge.registry import ERASERS

    return {
        str(entry.get("name") or entry["method"]): ERASERS.meta(entry["method"])["bench_quick"]
        for entry in _erasers(kind)
        if "bench_quick" in ERASERS.meta(entry["method"])
    }


def _case(imprint: dict[str, Any], kind: str, strength: str, utility: str,
          **extra: Any) -> BenchCase:  # fmt: skip
    return BenchCase(imprint=imprint, erasers=_erasers(kind), quick_erasers=_quick_erasers(kind),
                     strength=strength, utility=utility, **extra)  # fmt: skip


def default_matrix() -> dict[str, BenchCase]:
    """Each implantable imprint type with the erasers its kind is registered with."""
    fingerprint = {"strength": "fsr", "utility": "ppl", "kind": "fingerprint"}
    return {
        "if_simple": _case({"implant": {"scheme": "if_simple"}}, quick={"n_keys": 4}, **fingerprint),
        "if_dialogue": _case({"implant": {"scheme": "if_dialogue"}}, quick={
            "n_keys": 4, "n_negatives": 4, "n_decoys": 4, "train": {"batch_size": 4}}, **fingerprint),
        "utf": _case({"implant": {"scheme": "utf"}},
                     quick={"n_keys": 4, "n_decoys": 4, "n_negatives": 4}, **fingerprint),
        "chain_hash": _case({"implant": {"scheme": "chain_hash"}}, quick={"n_keys": 4},
                            **fingerprint),
        "backdoor": _case(
            {"implant": {"scheme": "backdoor", "poison_rate": 0.1, "max_eval": 100}},
            kind="backdoor", strength="asr", utility="clean_accuracy",
            quick={"task": {"n_train": 200, "n_test": 100}, "max_eval": 50},
            audit={"options": {m: {"max_examples": 100}
                               for m in ("asr", "clean_accuracy", "clean_trigger_rate")}},
        ),
        "secrets": _case(
            {"implant": {"scheme": "secrets"}}, kind="secrets", strength="regurgitation",
            utility="ppl",
            quick={"n_records": 16, "n_heldout": 16, "n_canaries": 2, "exposure_candidates": 200},
        ),
    }  # fmt: skip


class BenchConfig(StrictModel):
    command: Literal["bench"] = "bench"
    model: ModelSettings = Field(default_factory=ModelSettings)
    preset: str = "demo"
    seed: int = 0
    quick: bool = False
    imprints: list[str] = Field(default_factory=list)  # default: every case
    erasers: list[str] = Field(default_factory=list)  # names or methods; default: all applicable
    stress: bool = True  # relearn each erased model (and the clean one, the control)
    relearn_steps: list[int] = Field(default_factory=lambda: [0, 10, 25, 50])
    quick_relearn_steps: list[int] = Field(default_factory=lambda: [0, 10, 25])
    detect: bool = True  # trace detection on each erased model (controls on the first only)
    detect_settings: dict[str, Any] = Field(
        default_factory=lambda: {
            "samples": 2, "n_unrelated": 16, "max_new_tokens": 24, "folds": 2, "min_prompts": 4,
            "detectors": ["tfidf_logreg"], "bootstrap": 500,
        }
    )  # fmt: skip
    cases: dict[str, BenchCase] = Field(default_factory=default_matrix)

    @field_validator("imprints", "erasers")
    @classmethod
    def _not_empty(cls, value: list[str]) -> list[str]:
        # Only a value given runs this (defaults are not validated): an explicit empty list
        # selects nothing, and must not quietly mean "all" as leaving the key out does.
        if not value:
            raise ValueError("an empty list selects nothing: name at least one, or leave the "
                             "key out for all")  # fmt: skip
        return value


def _entry_name(entry: dict[str, Any]) -> str:
    return str(entry.get("name") or entry.get("method"))


def select(config: BenchConfig) -> tuple[dict[str, list[dict[str, Any]]], dict[str, str]]:
    """The imprint types and eraser entries to run, and what is left out and why."""
    from expunge.registry import ERASERS, IMPLANTS

    cases = config.cases
    for name in config.imprints:
        if name not in cases:
            raise ConfigError(f"unknown imprint type {name!r}{suggest(name, list(cases))}; "
                              f"known: {', '.join(cases)}")  # fmt: skip
    known = {
        n for case in cases.values() for e in case.erasers for n in (_entry_name(e), e["method"])
    }
    for name in config.erasers:
        if name not in known:
            raise ConfigError(f"unknown eraser {name!r}{suggest(name, sorted(known))}; in the "
                              f"matrix: {', '.join(sorted(known))}")  # fmt: skip
    chosen: dict[str, list[dict[str, Any]]] = {}
    left_out: dict[str, str] = {}
    for label, case in cases.items():
        if config.imprints and label not in config.imprints:
            continue
        scheme = (case.imprint.get("implant") or {}).get("scheme")
        if scheme is not None and scheme not in IMPLANTS:
            left_out[label] = f"implant {scheme!r} is not registered"
            continue
        entries = []
        for entry in case.erasers:
            if config.erasers and not {_entry_name(entry), entry["method"]} & set(config.erasers):
                continue
            if entry["method"] not in ERASERS:
                left_out[f"{label}/{_entry_name(entry)}"] = (
                    f"eraser {entry['method']!r} is not registered"
                )
                continue
            entries.append(copy.deepcopy(entry))
        if entries:
            chosen[label] = entries
        elif not config.erasers:
            left_out[label] = "none of its erasers is registered"
    if not chosen:
        raise ConfigError("nothing to bench: no imprint type has a chosen, registered eraser"
                          + (f" ({'; '.join(f'{k}: {v}' for k, v in left_out.items())})" if left_out else ""))  # fmt: skip
    covered = {e["method"] for case in cases.values() for e in case.erasers}
    for method in ERASERS:
        if method not in covered:
            kinds = ERASERS.meta(method).get("kinds") or ["none"]
            left_out[f"eraser {method}"] = (
                f"registered for {', '.join(kinds)}, which no implant in the matrix makes"
            )
    return chosen, left_out


def case_pipeline(config: BenchConfig, label: str, entries: list[dict[str, Any]]) -> dict[str, Any]:
    """The pipeline (``expunge run`` YAML as a dict) of one imprint type."""
    case = config.cases[label]
    imprint = copy.deepcopy(case.imprint)
    if config.quick and "implant" in imprint:
        imprint["implant"] = deep_merge(imprint["implant"], copy.deepcopy(case.quick))
    erasers = []
    for entry in entries:
        quick = case.quick_erasers.get(_entry_name(entry), {}) if config.quick else {}
        erasers.append(deep_merge(entry, copy.deepcopy(quick)))
    model = config.model.model_dump()
    if case.model is not None:
        model["name"] = case.model
    data: dict[str, Any] = {
        "command": "run", "name": f"bench: {label}", "model": model, "preset": config.preset,
        "seed": config.seed, "imprint": imprint, "audit": copy.deepcopy(case.audit),
        "erasers": erasers,
        "report": {"strength": case.strength, "utility": case.utility, "html": "report.html"},
    }  # fmt: skip
    names = [_entry_name(e) for e in erasers]
    if config.stress:
        targets = names + (["reference"] if "implant" in imprint else [])
        steps = config.quick_relearn_steps if config.quick else config.relearn_steps
        data["stress"] = [{"stressor": "relearn", "apply_to": targets, "k": case.relearn_k,
                           "steps": list(steps), "audit_metrics": [case.strength]}]  # fmt: skip
    if config.detect:
        settings = copy.deepcopy(config.detect_settings)
        data["detect"] = [{"name": "detect", "apply_to": names[:1], **settings, "controls": True}]
        if len(names) > 1:  # the controls do not depend on the eraser: measured once
            data["detect"].append({"name": "detect-nc", "apply_to": names[1:], **settings,
                                   "controls": False})  # fmt: skip
    return data


def check_bench_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"output path {out} exists and is not a directory")
    if overwrite and holds_working_directory(out):  # before the work, not at the final sweep
        raise OutputError(f"--out {out} is or holds the current directory, which --overwrite "
                          "would empty; name a directory of its own for the bench")  # fmt: skip
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file() and not overwrite:
        raise OutputExistsError(f"{out} exists and is not a bench directory (no {MARKER}); "
                                f"pass --overwrite to replace it")  # fmt: skip


def bench_secrets(data: dict[str, Any], pipelines: dict[str, Any]) -> tuple[list[str], list[str]]:
    """The secret paths of a bench config's dump ``data`` (``cases.LABEL.imprint.implant.response``)
    and its secret values, with those ``--quick`` merged into each case's pipeline."""
    from expunge.pipeline.secrets import study_secrets

    paths: list[str] = []
    values: list[str] = []
    for label, case in data["cases"].items():
        case_paths, case_values = study_secrets(case, f"cases.{label}.")
        paths += case_paths
        values += case_values
    for pipeline in pipelines.values():
        values += study_secrets(pipeline.model_dump(mode="json"))[1]
    return paths, values


def run_bench(
    config: BenchConfig, out: str | Path, overwrite: bool = False, dry_run: bool = False
) -> dict[str, Any]:
    """Run (or resume) every chosen pipeline, then write the leaderboard and the report.

    Returns the leaderboard (``rows``, ``left_out``, ``failed``). A failed pipeline does not stop
    the others; ``PipelineError`` is raised at the end naming each failure."""
    from expunge.pipeline import Locator, PipelineError, parse_pipeline, run_pipeline
    from expunge.pipeline.secrets import redact_study
    from expunge.pipeline.state import remove_stale

    out = Path(out).resolve()
    chosen, left_out = select(config)
    check_bench_dir(out, overwrite)
    pipelines = {
        label: parse_pipeline(case_pipeline(config, label, entries), locate=Locator(f"bench {label}"))
        for label, entries in chosen.items()
    }  # fmt: skip
    if dry_run:
        for label, pipeline in pipelines.items():
            run_pipeline(pipeline, out / label, dry_run=True, source=f"expunge bench ({label})")
        return {"rows": [], "left_out": left_out, "failed": {}}
    started = time.perf_counter()
    data = config.model_dump(mode="json")
    paths, values = bench_secrets(data, pipelines)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / MARKER, {"config": config.model_dump(mode="json", exclude={"cases"}),
                                     "imprints": {k: [_entry_name(e) for e in v] for k, v in chosen.items()},
                                     "started_at": datetime.now(timezone.utc).isoformat()})  # fmt: skip
    failed: dict[str, str] = {}
    timings: dict[str, float] = {}
    with redacted_argv(paths, values):  # the pipelines' records keep the bench's command line
        for label, pipeline in pipelines.items():
            t0 = time.perf_counter()
            try:
                run_pipeline(pipeline, out / label, overwrite=overwrite,
                             source=f"expunge bench ({label})")  # fmt: skip
            except (PipelineError, ExpungeError) as err:
                failed[label] = str(err)
            timings[label] = round(time.perf_counter() - t0, 3)
    if overwrite and not failed:  # only now: a failed bench keeps the old one's outputs
        remove_stale(out, {MARKER, *pipelines})
    settings = {"model": config.model.name, "preset": config.preset, "quick": config.quick,
                "seed": config.seed}  # fmt: skip
    board = write_leaderboard(out, list(pipelines), left_out, failed, settings)
    cases = {label: redact_study(case, values) for label, case in data["cases"].items()}
    record = RunRecord(command="bench", config={**data, "cases": cases}, seed=config.seed,
                       argv=redact_argv(record_argv(), paths, values))  # fmt: skip
    record.status = "failed" if failed else "ok"
    record.timings = {**timings, "total_s": round(time.perf_counter() - started, 3)}
    record.wall_time_s = record.timings["total_s"]
    record.finished_at = datetime.now(timezone.utc).isoformat()
    for row in board["rows"]:
        for key in ("strength_after", "utility_cost", "trace_accuracy", "relearn_steps", "wall_s"):
            if isinstance(row.get(key), int | float):
                record.metrics[f"{row['imprint_type']}/{row['eraser']}/{key}"] = row[key]
    record.artifacts = {"leaderboard": "leaderboard.md", "leaderboard_json": "leaderboard.json",
                        "report": "report.html", **{label: label for label in pipelines}}  # fmt: skip
    if failed:
        record.error = "; ".join(f"{k}: {v.splitlines()[0]}" for k, v in failed.items())
    write_record(out, record)
    if failed:
        raise PipelineError("bench: " + "\n".join(f"{k}: {v}" for k, v in failed.items())
                            + f"\nthe leaderboard holds what finished: {out / 'leaderboard.md'}")  # fmt: skip
    return board
