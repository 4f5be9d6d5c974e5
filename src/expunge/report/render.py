"""The sections of a report, from run records: a pipeline study (before/after table, the
strength-vs-utility figure, leaderboard, eraser stages, sweeps, training, stress and detection)
and a single run. The blocks are in ``blocks.py``; ``formats.py`` writes HTML and Markdown."""

from __future__ import annotations

from collections import Counter
from typing import Any

from expunge.report import plots
from expunge.report.blocks import (
    Figure,
    Heading,
    Report,
    TableBlock,
    Text,
    arrow,
    cost,
    fmt,
)
from expunge.report.collect import (
    Run,
    Study,
    accuracy_metrics,
    curve,
    describe_model,
    environment,
    metric_label,
    number,
    p_value,
    run_model,
    stage_metrics,
    training_logs,
)
from expunge.report.leaderboard import leaderboard, leaderboard_block
from expunge.report.redact import Redactor

# Settings that differ between runs of one method without being what was swept.
NOT_SWEPT = {"seed", "model", "imprint", "reference", "audit_metrics", "audit_input",
             "audit_output", "audit_precision", "adapter"}  # fmt: skip


def study_section(study: Study, report: Report, redact: Redactor, index: int) -> None:
    # The model comes from the record, not the study's name: a name written for the default
    # ("... on the embedded model") stays in the config when `model=` overrides the model.
    model = describe_model(study.model_name) if study.model_name else "?"
    report.add(Heading(2, f"{study.title} — model {study.model_name or '?'}"))
    summary = ", ".join(f"{k}: {v}" for k, v in study.imprint_summary.items())
    counts: dict[str, int] = {}
    for stage in study.stages:
        counts[stage.status] = counts.get(stage.status, 0) + 1
    report.add(Text(
        f"Run directory `{study.path}`. Model `{model}`; imprint {summary or study.kind}. "
        f"Stages: " + ", ".join(f"{n} {s}" for s, n in counts.items()) + "."
    ))  # fmt: skip
    places = Counter(environment(stage.record) for stage in study.stages if stage.record)
    if len(places) == 1:
        report.add(Text(f"Ran with {next(iter(places))}."))
    elif places:
        each = [f"{where} ({n} stage{'s' if n > 1 else ''})" for where, n in places.items()]
        report.add(Text(f"The stages ran in {len(places)} environments (results under a seed "
                        f"repeat only within one): {'; '.join(each)}."))  # fmt: skip
    rows = model_rows(study)
    if rows:
        report.add(Heading(3, "Imprint strength and utility: reference, before, after"))
        report.add(before_after_table(study, rows))
        flags = (
            study.higher_is_better(study.strength or ""),
            study.higher_is_better(study.utility or ""),
        )
        if study.strength and study.utility:
            points = []
            for label, role, run in rows:
                x, y = (
                    number(run.metrics.get(study.utility)),
                    number(run.metrics.get(study.strength)),
                )
                if x is not None and y is not None:
                    points.append((redact(label), x, y, role))
            png = plots.strength_vs_utility(points, study.strength, study.utility, flags)
            if png:
                report.add(Figure(f"s{index}-strength-utility", png,
                                  f"{study.strength} after each eraser against {study.utility}; "
                                  f"the imprinted model before erasing and the clean reference for "
                                  f"comparison."))  # fmt: skip
    board = leaderboard(study)
    if board:
        report.add(Heading(3, "Leaderboard"), leaderboard_block(board))
    report.add(*eraser_stages(study))
    report.add(*sweeps(study, index, redact))
    report.add(*training_section(study.stages, f"s{index}", redact))
    report.add(*stress_section(study, index, redact))
    report.add(*detect_section(study.of_kind("detect"), f"s{index}", redact))
    report.add(Heading(3, "Stages"))
    report.add(TableBlock(
        ["stage", "what", "status", "time (s)", "note"],
        [[s.id, s.what, s.status, fmt(s.wall_s), s.error or ""] for s in study.stages],
        "time: wall time when the stage ran (a cached stage took no time in the last run)",
    ))  # fmt: skip


def model_rows(study: Study) -> list[tuple[str, str, Run]]:
    rows = []
    for target, role in (("reference", "reference"), ("imprinted", "imprinted")):
        run = study.stage(f"audit/{target}")
        if run is not None and run.record is not None:
            rows.append((target, role, run))
    for name in study.erasers:
        run = study.stage(f"audit/{name}")
        if run is not None and run.record is not None:
            rows.append((name, "eraser", run))
    return rows


def before_after_table(study: Study, rows: list[tuple[str, str, Run]]) -> TableBlock:
    metrics = [m for m in study.metrics if any(m in r.metrics for _, _, r in rows)]
    before = study.stage("audit/imprinted")
    runs = [r for _, _, r in rows]
    columns = ["model", "role", *[metric_label(m, runs) + arrow(study.higher_is_better(m))
                                  for m in metrics]]  # fmt: skip
    utility = study.utility
    if utility and before is not None and before.record is not None:
        columns.append(f"{utility} vs before")
    columns.append("erase time (s)")
    roles = {"reference": "clean reference", "imprinted": "before (imprinted)",
             "eraser": "after"}  # fmt: skip
    table_rows = []
    for label, role, run in rows:
        cells = [label, roles[role] + (f": {_method(study, label)}" if role == "eraser" else "")]
        cells += [fmt(run.metrics.get(m), m) for m in metrics]
        if len(columns) > len(cells) + 1:
            b = number(before.metrics.get(utility)) if before and before.record else None
            cells.append(cost(b, number(run.metrics.get(utility)), utility or "")
                         if role != "imprinted" else "")  # fmt: skip
        erase = study.stage(f"erase/{label}") if role == "eraser" else None
        cells.append(fmt(erase.wall_s) if erase is not None else "")
        table_rows.append(cells)
    return TableBlock(columns, table_rows,
                      "↑ higher is better, ↓ lower is better; every row is an audit run with the "
                      "same metrics and settings")  # fmt: skip


def _method(study: Study, name: str) -> str:
    erase = study.stage(f"erase/{name}")
    return erase.what if erase is not None else name


def eraser_stages(study: Study) -> list[Any]:
    rows = []
    metrics = study.metrics
    for erase in study.of_kind("erase"):
        name = erase.id.removeprefix("erase/")
        for stage, values in stage_metrics(erase, metrics).items():
            rows.append([name, stage, *[fmt(values.get(m), m) for m in metrics]])
        # the model it saved, measured once by its audit stage (the eraser's audit_output=false)
        output = (erase.record or {}).get("inputs", {}).get("output_audit")
        after = study.stage(f"audit/{name}")
        if output and after is not None and after.record is not None:
            rows.append([name, f"{output['stage']} (audit/{name})",
                         *[fmt(after.metrics.get(m), m) for m in metrics]])  # fmt: skip
    if not rows:
        return []
    return [Heading(3, "Inside each eraser"),
            TableBlock(["eraser", "stage", *metrics], rows,
                       "the eraser's own audits between its phases (e.g. erased, then recovered)")]  # fmt: skip


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, child in value.items():
            out.update(_flatten(child, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): value}


def sweep_groups(runs: list[Run]) -> list[tuple[str, list[Run], list[float]]]:
    """Runs of one method that differ in exactly one numeric setting: (setting, runs, values).

    Every setting is tried as the swept one; runs are grouped by all their other settings, and a
    group of two or more with distinct numeric values of it is a sweep (so ρ is swept among the
    Fine-mixing runs without E-PUR even when one with E-PUR sits beside them).
    """
    flat = [_flatten(r.record.get("config", {})) for r in runs]  # type: ignore[union-attr]
    keys = sorted({k for f in flat for k in f if k.split(".")[0] not in NOT_SWEPT})
    found = []
    for key in keys:
        groups: dict[str, list[int]] = {}
        for i, f in enumerate(flat):
            if number(f.get(key)) is None:
                continue
            rest = {k: v for k, v in f.items() if k != key and k.split(".")[0] not in NOT_SWEPT}
            groups.setdefault(repr(sorted(rest.items())), []).append(i)
        for members in groups.values():
            values = [float(flat[i][key]) for i in members]
            if len(members) >= 2 and len(set(values)) == len(values):
                order = sorted(range(len(members)), key=lambda j: values[j])
                found.append((key, [runs[members[j]] for j in order], sorted(values)))
    return found


def sweeps(study: Study, index: int, redact: Redactor) -> list[Any]:
    """A plot per method run with several values of one numeric setting, the rest fixed."""
    blocks: list[Any] = []
    by_method: dict[str, list[Run]] = {}
    for erase in study.of_kind("erase"):
        if erase.record is not None:
            by_method.setdefault(erase.what, []).append(erase)
    for method, runs in by_method.items():
        for key, group, values in sweep_groups(runs) if len(runs) >= 2 else []:
            audits = [study.stage(f"audit/{r.id.removeprefix('erase/')}") for r in group]
            series = {}
            for metric in [m for m in (study.strength, study.utility) if m]:
                series[metric] = [
                    number(a.metrics.get(metric)) if a is not None else None for a in audits
                ]
            png = plots.sweep(redact(method), key, values, series)
            if png:
                blocks.append(Figure(f"s{index}-sweep-{method}-{key}", png,
                                     f"{method}: {', '.join(series)} after erasing, against "
                                     f"{key}"))  # fmt: skip
    if blocks:
        blocks.insert(0, Heading(3, "Sweeps"))
    return blocks


def training_section(runs: list[Run], prefix: str, redact: Redactor) -> list[Any]:
    logs = {redact(r.id): training_logs(r) for r in runs}
    png = plots.training_curves(logs)
    if png is None:
        return []
    return [Heading(3, "Training curves"),
            Figure(f"{prefix}-training", png, "training loss per step of every run that trained "
                                               "(one line per phase)")]  # fmt: skip


def stress_section(study: Study, index: int, redact: Redactor) -> list[Any]:
    runs = [r for r in study.of_kind("stress") if r.record is not None and curve(r)]
    if not runs:
        return []
    metric = study.strength or study.metrics[0]
    lines: dict[str, dict[str, list[tuple[float, float]]]] = {}
    x_names: dict[str, str] = {}
    rows = []
    for run in runs:
        data = curve(run) or {}
        stressor = run.id.rsplit("/", 1)[-1]
        x_names[stressor] = str(data.get("x", "x"))
        for point in data["points"]:
            values = point.get("metrics", {})
            rows.append([run.target or "", stressor, str(point.get("x")), str(point.get("stage", "")),
                         *[fmt(values.get(m), m) for m in study.metrics]])  # fmt: skip
            x, y = number(point.get("x")), number(values.get(metric))
            if x is not None and y is not None:
                lines.setdefault(stressor, {}).setdefault(redact(run.target or run.id), []).append(
                    (x, y)
                )
        for skipped in data.get("skipped", []):
            rows.append([run.target or "", stressor, str(skipped.get("x")), "skipped: " + str(skipped.get("reason", "")),
                         *["" for _ in study.metrics]])  # fmt: skip
    blocks: list[Any] = [Heading(3, "Stress: does the imprint come back?"),
                         TableBlock(["model", "stressor", "x", "point", *study.metrics], rows)]  # fmt: skip
    png = plots.stress_curves(lines, metric, x_names)
    if png:
        blocks.append(Figure(f"s{index}-stress", png, f"{metric} under each stressor (relearning "
                                                      f"curves: against training steps)"))  # fmt: skip
    return blocks


def detect_section(runs: list[Run], prefix: str, redact: Redactor) -> list[Any]:
    bars, rows = [], []
    for run in runs:
        for key, (value, low, high) in accuracy_metrics(run).items():
            label = f"{run.target or run.id}: {key}" if run.target else key
            bars.append((redact(label), value, low, high))
            interval = f"[{fmt(low)}, {fmt(high)}]" if low is not None and high is not None else ""
            p = p_value(run, key)
            rows.append([run.target or run.id, key, fmt(value), interval,
                         f"{p:.3g}" if p is not None else "—"])  # fmt: skip
    if not rows:
        return []
    blocks: list[Any] = [Heading(3, "Trace detection: can anyone tell it was erased?"),
                         TableBlock(["model", "metric", "accuracy", "interval", "p vs chance"],
                                    rows, "held-out accuracy of telling the erased model's "
                                    "outputs (or activations) from the original's; 0.5 is "
                                    "chance. The interval is over prompts only; whether an "
                                    "accuracy is above chance is the permutation test's p")]  # fmt: skip
    png = plots.detection(bars)
    if png:
        blocks.append(Figure(f"{prefix}-detect", png, "detection accuracy with its interval"))
    return blocks


# ---------------------------------------------------------------------------------------------
# A single run


def run_section(run: Run, report: Report, redact: Redactor, index: int) -> None:
    record = run.record or {}
    report.add(Heading(2, f"{run.id}: {record.get('command', '?')}"))
    report.add(Text(f"Run directory `{run.path}`; status {run.status}; wall time "
                    f"{fmt(run.wall_s)} s; model `{describe_model(run_model(record))}`."))  # fmt: skip
    if run.record:
        report.add(Text(f"Ran with {environment(run.record)}."))
    flat = {k: v for k, v in run.metrics.items() if "/" not in k}
    if flat:
        report.add(TableBlock(["metric", "value"],
                              [[metric_label(k, [run]) + arrow(run.higher_is_better(k)), fmt(v, k)]
                               for k, v in flat.items()]))  # fmt: skip
    staged = stage_metrics(run)
    if staged:
        metrics = list(dict.fromkeys(m for values in staged.values() for m in values))
        report.add(TableBlock(["stage", *metrics],
                              [[s, *[fmt(v.get(m), m) for m in metrics]] for s, v in staged.items()]))  # fmt: skip
    report.add(*training_section([run], f"r{index}", redact))
    if curve(run):
        data = curve(run) or {}
        metrics = list(dict.fromkeys(m for p in data["points"] for m in p.get("metrics", {})))
        lines: dict[str, dict[str, list[tuple[float, float]]]] = {}
        if metrics:
            pts = [
                (number(p.get("x")), number(p.get("metrics", {}).get(metrics[0])))
                for p in data["points"]
            ]
            lines = {str(data.get("stressor", run.id)): {run.id: [(x, y) for x, y in pts if x is not None and y is not None]}}  # fmt: skip
        png = plots.stress_curves(
            lines, metrics[0] if metrics else "", {k: str(data.get("x")) for k in lines}
        )
        if png:
            report.add(Figure(f"r{index}-curve", png, f"{metrics[0]} along the stressor's curve"))
    report.add(*detect_section([run], f"r{index}", redact))


# ---------------------------------------------------------------------------------------------
# Output
