"""Run a plan: every stage not already done, each through the one stage contract.

A failed stage does not stop stages independent of it; the stages that depend on it are
reported as blocked, and every finished stage is kept. ``pipeline.json`` is rewritten after
every stage, so an interrupted run resumes at the stage it stopped in.
"""

from __future__ import annotations

import json
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from expunge.errors import ConfigError, ExpungeError
from expunge.files import atomic_write_json
from expunge.models.card import model_provenance
from expunge.pipeline.graph import Plan, Stage
from expunge.pipeline.plan import plan_pipeline
from expunge.pipeline.secrets import redact_study, study_secrets
from expunge.pipeline.spec import Locator, PipelineConfig
from expunge.pipeline.state import (
    STATE_FILE,
    STATE_VERSION,
    check_run_dir,
    locked,
    read_state,
    remove_stale,
    stage_status,
)
from expunge.records import RunRecord, redacted_argv, write_record
from expunge.stage import run_stage

console = Console(stderr=True)


class PipelineError(ExpungeError):
    """Some stages failed or were blocked; the finished ones are kept."""


def plan_table(plan: Plan) -> Table:
    table = Table(title=f"pipeline → {plan.run_dir}")
    table.add_column("#", justify="right")
    table.add_column("stage", no_wrap=True)
    table.add_column("what")
    table.add_column("depends on")
    table.add_column("status", no_wrap=True)
    table.add_column("hash", no_wrap=True)
    for number, stage in enumerate(plan.stages, 1):
        status = stage.status.replace("run:", "run: ")
        style = "green" if stage.status == "cached" else "yellow"
        table.add_row(str(number), stage.id, stage.what, ", ".join(stage.deps) or "—",
                      f"[{style}]{status}[/]", stage.hash[:8])  # fmt: skip
    return table


def run_pipeline(
    config: PipelineConfig,
    out: str | Path | None = None,
    overwrite: bool = False,
    dry_run: bool = False,
    locate: Locator | None = None,
    source: str | None = None,
) -> Plan:
    """Plan, then run every stage not already done. Raises ``PipelineError`` if any failed."""
    out = out or config.out
    if out is None:
        raise ConfigError("no run directory: pass --out DIR or set 'out:' in the YAML")
    run_dir = Path(out).resolve()
    started = time.perf_counter()
    plan = plan_pipeline(config, run_dir, locate)
    check_run_dir(run_dir, overwrite)
    fresh = overwrite or not (run_dir / STATE_FILE).is_file()
    state = {"stages": {}} if fresh else read_state(run_dir)
    for stage in plan.stages:
        stage.status = stage_status(run_dir, stage, state.get("stages", {}), overwrite)
    if dry_run:
        console.print(plan_table(plan))
        todo = sum(s.status != "cached" for s in plan.stages)
        console.print(f"{todo} of {len(plan.stages)} stages to run (planned in "
                      f"{time.perf_counter() - started:.2f} s); dry run, nothing written")  # fmt: skip
        return plan
    # Every record of the run (its stages' too) keeps the study's command line, secrets out.
    with locked(run_dir), redacted_argv(*study_secrets(config.model_dump(mode="json"))):
        return Execution(plan, state, source, started, overwrite).run()


class Execution:
    """One pass over a plan, keeping ``pipeline.json`` up to date."""

    def __init__(self, plan: Plan, state: dict[str, Any], source: str | None, started: float,
                 overwrite: bool = False):  # fmt: skip
        self.plan, self.source, self.started, self.overwrite = plan, source, started, overwrite
        config = plan.config.model_dump(mode="json")
        redacted = redact_study(config, study_secrets(config)[1])
        self.record = RunRecord(command="run", config=redacted, seed=plan.config.seed)
        self.record.inputs = {"config_file": source, "imprint_kind": plan.kind}
        source_of = model_provenance(plan.config.model.name)  # what the study's model really is
        if source_of:
            self.record.inputs["model_provenance"] = {"model": source_of}
        self.failed: dict[str, str] = {}  # stage -> its error
        self.blocked: dict[str, str] = {}  # stage -> the failed stage it waits for
        self.entries = {stage.id: self.entry(stage, state["stages"].get(stage.id, {}))
                        for stage in plan.stages}  # fmt: skip
        for orphan in sorted(set(state["stages"]) - set(self.entries)):
            console.print(f"[dim]{orphan}: from an earlier plan, no longer in this one "
                          f"(left on disk)[/]")  # fmt: skip

    @staticmethod
    def entry(stage: Stage, old: dict[str, Any]) -> dict[str, Any]:
        cached = stage.status == "cached"
        return {
            "kind": stage.kind, "what": stage.what, "target": stage.target, "deps": stage.deps,
            "study": stage.study, "hash": old.get("hash") if cached else None,
            "config_hash": old.get("config_hash") if cached else None,
            "status": "cached" if cached else "pending", "wall_s": old.get("wall_s"),
        }  # fmt: skip

    def save(self) -> None:
        plan = self.plan
        atomic_write_json(plan.run_dir / STATE_FILE, {
            "version": STATE_VERSION, "config_file": self.source, "imprint_kind": plan.kind,
            "metrics": plan.metrics, "models": plan.models,
            "studies": [vars(s) for s in plan.studies],
            "report": plan.config.report.model_dump(), "order": [s.id for s in plan.stages],
            "stages": self.entries, "updated_at": datetime.now(timezone.utc).isoformat(),
        })  # fmt: skip

    def run(self) -> Plan:
        self.save()
        total = len(self.plan.stages)
        for number, stage in enumerate(self.plan.stages, 1):
            self.run_one(stage, f"[{number}/{total}] {stage.id} ({stage.kind} {stage.what})")
        self.finish()
        return self.plan

    def run_one(self, stage: Stage, head: str) -> None:
        entry = self.entries[stage.id]
        broken = [d for d in stage.deps if d in self.failed or d in self.blocked]
        if broken:
            dep = broken[0]
            root = self.blocked.get(dep, dep)
            via = "" if dep == root else f" (blocked by {root})"
            message = f"depends on {dep}{via}, which failed"
            entry.update(status="blocked", error=f"{message}: {self.failed[root]}")
            self.blocked[stage.id] = root
            console.print(f"[red]{head}: not run[/] — {message}")
            self.save()
            return
        if stage.status == "cached":
            console.print(f"[green]{head}: cached[/] (hash {stage.hash[:10]}, took "
                          f"{entry.get('wall_s') or 0:.1f} s when run)")  # fmt: skip
            self.record.timings[stage.id] = 0.0
            return
        console.rule(f"[bold]{head}[/] — {stage.status.removeprefix('run:')}")
        entry.update(status="running", hash=None, started_at=datetime.now(timezone.utc).isoformat())
        self.save()
        t0 = time.perf_counter()

        def say_notes() -> None:  # the stage's inputs exist now: its notes can read them
            notes = stage.config.notes()
            for line in notes:
                console.print(f"note: {line}", highlight=False, markup=False, soft_wrap=True)
            if notes:
                entry["notes"] = notes
                self.save()

        try:
            run_stage(stage.config, self.plan.run_dir / stage.id, overwrite=True,
                      before_load=say_notes)  # fmt: skip
        except KeyboardInterrupt:
            entry.update(status="interrupted", wall_s=round(time.perf_counter() - t0, 3))
            self.save()
            raise
        except Exception as err:  # one stage failing must not lose the others
            entry.update(status="failed", wall_s=round(time.perf_counter() - t0, 3),
                         error=f"{type(err).__name__}: {err}")  # fmt: skip
            if not isinstance(err, ExpungeError):
                entry["traceback"] = traceback.format_exc()
            self.failed[stage.id] = entry["error"]
            console.print(f"[bold red]{stage.id} failed:[/] {entry['error']}", highlight=False)
            self.save()
            return
        entry.update(status="ok", hash=stage.hash, config_hash=stage.config_hash,
                     wall_s=round(time.perf_counter() - t0, 3))  # fmt: skip
        self.record.timings[stage.id] = entry["wall_s"]
        self.save()

    def finish(self) -> None:
        plan, record, run_dir = self.plan, self.record, self.plan.run_dir
        for stage in plan.stages:
            path = run_dir / stage.id / "record.json"
            if self.entries[stage.id]["status"] in {"ok", "cached"} and path.is_file():
                metrics = json.loads(path.read_text()).get("metrics", {})
                record.metrics.update({f"{stage.id}/{k}": v for k, v in metrics.items()
                                       if isinstance(v, int | float)})  # fmt: skip
            record.artifacts[stage.id] = stage.id
        record.status = "failed" if self.failed else "ok"
        record.finished_at = datetime.now(timezone.utc).isoformat()
        record.wall_time_s = round(time.perf_counter() - self.started, 3)
        record.timings["total_s"] = record.wall_time_s
        if self.failed:
            record.error = "; ".join(f"{k}: {v}" for k, v in self.failed.items())
        elif self.overwrite:  # only now: a failed run keeps the old study's outputs
            keep = {STATE_FILE, "record.json", ".pipeline.lock"}
            remove_stale(run_dir, keep | {stage.id for stage in plan.stages})
        write_record(run_dir, record)
        ran = sum(e["status"] == "ok" for e in self.entries.values())
        cached = sum(e["status"] == "cached" for e in self.entries.values())
        console.print(f"{ran} stages run, {cached} cached, {len(self.failed)} failed, "
                      f"{len(self.blocked)} not run (blocked), in {record.wall_time_s:.1f} s → "
                      f"{run_dir}")  # fmt: skip
        report_error = render_report(plan) if plan.config.report.html else None
        if self.failed:
            raise PipelineError(self.failure_message())
        if report_error is not None:
            raise report_error

    def failure_message(self) -> str:
        lines = []
        for stage_id, error in self.failed.items():
            lines.append(f"  {stage_id} failed: {error}")
            waiting = [k for k, root in self.blocked.items() if root == stage_id]
            if waiting:
                lines.append(f"    not run, as they depend on it: {', '.join(waiting)}")
        if self.overwrite:  # nothing of the old study was deleted, and none of it is reused
            kept = (
                "the earlier run's other stage folders stay on disk until a run replaces them; "
                "fix the cause and run the command again (without --overwrite it resumes from "
                "the stages this run finished)"
            )
        else:
            kept = "fix the cause and run the same command again to resume"
        return (f"{len(self.failed)} stage(s) failed:\n" + "\n".join(lines) + f"\nfinished "
                f"stages are kept in {self.plan.run_dir}; {kept}")  # fmt: skip


def render_report(plan: Plan) -> ExpungeError | None:
    """Write ``report.html`` (and its Markdown twin) into the run directory from its records.

    Returns the error instead of raising it, so a failed stage's message is not hidden."""
    from expunge.report import write_report

    html = plan.run_dir / str(plan.config.report.html)
    try:
        html_path, md_path = write_report([plan.run_dir], html, overwrite=True)
    except ExpungeError as err:
        console.print(f"[bold red]report not written:[/] {err}", highlight=False)
        return err
    console.print(f"report: {html_path} (and {md_path.name})")
    return None
