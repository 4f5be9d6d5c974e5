"""The leaderboard of a pipeline study: one row per eraser, read from its records only.

Per eraser: the imprint's strength before (the imprinted model's audit) and after (the erased
model's audit), the utility before and after and their difference (the *utility cost*, signed
so that a positive cost is a loss whichever way the metric points), the eraser's wall time, the
*trace detectability* (the best held-out accuracy any detector reached telling the erased
model's responses from the imprinted model's, over every prompt set; 50% is chance; with the
permutation test's p-value of that detector and set, not corrected for picking the best) and the
*relearning steps to come back*: the first point of the relearning curve at which the imprint's
strength is back to at least ``COME_BACK`` (half) of its strength before erasing. "0" there means
it was never gone, ``None`` with ``relearn_back: false`` that it had not come back by the last
step measured. A relearning run on the clean reference, when the study has one, is a control
row: relearning also *teaches*, so an erased imprint came back only if it does so faster than
the clean model learns it.

Strength metrics are read as "higher = more of the imprint" (FSR, ASR, regurgitation, forget
accuracy). Rows are ranked by strength after erasing, then by utility cost.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from expunge.files import atomic_write_json, atomic_write_text
from expunge.report.blocks import Heading, Report, TableBlock, Text, fmt, is_rate
from expunge.report.collect import (
    Run,
    Study,
    accuracy_metrics,
    curve,
    load_study,
    number,
    p_value,
)
from expunge.report.formats import to_markdown
from expunge.report.redact import Redactor

COME_BACK = 0.5  # "back" = at least this share of the strength before erasing


def _value(run: Run | None, metric: str | None) -> float | None:
    if run is None or run.record is None or metric is None:
        return None
    return number(run.metrics.get(metric))


def utility_cost(
    before: float | None, after: float | None, higher_is_better: bool | None
) -> float | None:
    """``after - before`` for a lower-is-better metric (perplexity), ``before - after`` otherwise."""
    if before is None or after is None:
        return None
    return after - before if higher_is_better is False else before - after


def steps_to_come_back(
    points: list[tuple[float, float]], before: float | None
) -> tuple[float | None, bool]:
    """(first x with strength ≥ COME_BACK·before, whether it came back) on a relearning curve."""
    if before is None or before <= 0 or not points:
        return None, False
    threshold = COME_BACK * before
    for x, y in sorted(points):
        if y >= threshold - 1e-12:
            return x, True
    return None, False


def relearn_curve(
    stages: list[Run], metric: str | None
) -> tuple[Run | None, list[tuple[float, float]]]:
    """The first finished relearning stress among ``stages`` and its (steps, strength) points."""
    for run in stages:
        data = curve(run) if run.record is not None else None
        if data is None or (data.get("stressor") or run.what) != "relearn" or metric is None:
            continue
        points = []
        for point in data["points"]:
            x, y = number(point.get("x")), number(point.get("metrics", {}).get(metric))
            if x is not None and y is not None:
                points.append((x, y))
        return run, sorted(points)
    return None, []


def trace(stages: list[Run]) -> dict[str, Any]:
    """Best erased-vs-original detection accuracy over detectors and prompt sets, and controls."""
    found: dict[str, tuple[float, float | None, float | None]] = {}
    p_values: dict[str, float | None] = {}
    for run in stages:
        if run.record is not None:
            accuracies = accuracy_metrics(run)
            found.update(accuracies)
            p_values.update({key: p_value(run, key) for key in accuracies})
    if not found:
        return {}
    erased = {k: v for k, v in found.items() if k.startswith("erased/")}
    if not erased:  # a record without the comparison prefix: every accuracy is about the eraser
        erased = {k: v for k, v in found.items() if not k.startswith(("positive_", "negative_"))}
    if not erased:
        return {}
    key = max(erased, key=lambda k: erased[k][0])
    value, low, high = erased[key]

    def best(prefix: str) -> float | None:
        values = [v[0] for k, v in found.items() if k.startswith(prefix)]
        return max(values) if values else None

    return {
        "trace_accuracy": value, "trace_ci": [low, high] if low is not None else None,
        "trace_p": p_values.get(key),
        "trace_by": key.removeprefix("erased/").removesuffix("/accuracy"),
        "trace_all": {k: v[0] for k, v in erased.items()},
        "positive_control": best("positive_control/"), "negative_control": best("negative_control/"),
    }  # fmt: skip


def leaderboard(study: Study) -> list[dict[str, Any]]:
    """Rows for every eraser of ``study`` (ranked) and, last, the clean reference's control."""
    strength, utility = study.strength, study.utility
    before = study.stage("audit/imprinted")
    s_before, u_before = _value(before, strength), _value(before, utility)
    u_flag = study.higher_is_better(utility) if utility else None
    imprint = str(study.imprint_summary.get("scheme") or study.kind or "?")
    implant = study.stage("implant")
    if implant is not None and implant.what:
        imprint = implant.what
    base = {
        "study": study.title, "imprint": imprint, "kind": study.kind,
        "strength_metric": strength, "utility_metric": utility,
        "utility_higher_is_better": u_flag, "strength_before": s_before, "utility_before": u_before,
        "strength_reference": _value(study.stage("audit/reference"), strength),
    }  # fmt: skip
    rows = []
    for name in study.erasers:
        erase = study.stage(f"erase/{name}")
        after = study.stage(f"audit/{name}")
        statuses = [s.status for s in (erase, after) if s is not None]
        status = next((s for s in statuses if s not in {"ok", "cached"}), "ok")
        s_after, u_after = _value(after, strength), _value(after, utility)
        cost = utility_cost(u_before, u_after, u_flag)
        run, points = relearn_curve(
            [s for s in study.of_kind("stress") if s.target == name], strength
        )
        steps, back = steps_to_come_back(points, s_before)
        row = {
            **base, "eraser": name, "method": erase.what if erase else name, "status": status,
            "error": (erase.error if erase and erase.error else after.error if after else None),
            "strength_after": s_after, "utility_after": u_after, "utility_cost": cost,
            "utility_cost_relative": cost / abs(u_before) if cost is not None and u_before else None,
            "wall_s": erase.wall_s if erase else None,
            "relearn_steps": steps, "relearn_back": back,
            "relearn_max_steps": max((x for x, _ in points), default=None),
            "relearn_curve": [list(p) for p in points] if run else None,
            **trace([s for s in study.of_kind("detect") if s.target == name]),
        }  # fmt: skip
        rows.append(row)
    rows.sort(key=_rank_key)
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank if row["status"] == "ok" else None
    control, points = relearn_curve(
        [s for s in study.of_kind("stress") if s.target == "reference"], strength
    )
    if control is not None:
        steps, back = steps_to_come_back(points, s_before)
        rows.append({
            **base, "eraser": "reference (control)", "method": "clean model, never imprinted",
            "status": "control", "rank": None, "strength_after": base["strength_reference"],
            "relearn_steps": steps, "relearn_back": back,
            "relearn_max_steps": max((x for x, _ in points), default=None),
            "relearn_curve": [list(p) for p in points],
        })  # fmt: skip
    return rows


def _rank_key(row: dict[str, Any]) -> tuple[int, float, float]:
    strength = row.get("strength_after")
    cost = row.get("utility_cost_relative")
    return (
        0 if row["status"] == "ok" else 1,
        strength if strength is not None and math.isfinite(strength) else math.inf,
        cost if cost is not None else math.inf,
    )


LEADERBOARD_CAPTION = (
    "ranked by imprint strength after erasing, then utility cost; trace detectability: the best "
    "held-out accuracy of a detector telling the erased model's responses from the imprinted "
    "model's (50% is chance), over detectors and prompt sets, with its permutation p-value "
    "against chance (not corrected for picking the best); relearning: steps of fine-tuning on "
    "the imprint's own data until its strength is back to half its value before erasing "
    "('> N': not back after N steps; the clean reference's row is the control, as relearning also "
    "teaches); '—': not measured"
)


def leaderboard_block(rows: list[dict[str, Any]], with_imprint: bool = False) -> TableBlock:
    """The leaderboard rows (``expunge.report.leaderboard``) as a table."""
    first = rows[0] if rows else {}
    strength, utility = first.get("strength_metric") or "strength", first.get("utility_metric")
    columns = ["rank", "eraser (method)", *(["imprint"] if with_imprint else []),
               f"{strength} before → after", f"{utility or 'utility'} after (change)",
               "erase time (s)", "trace detectability", "relearning: steps to come back"]  # fmt: skip
    table = []
    for row in rows:
        strength, utility = row.get("strength_metric") or "", row.get("utility_metric") or ""
        rank = str(row["rank"]) if row.get("rank") is not None else str(row.get("status", ""))
        name = (
            row["eraser"]
            if row.get("status") == "control"
            else f"{row['eraser']} ({row['method']})"
        )
        if row.get("status") == "control":
            s = f"{fmt(row.get('strength_after'), strength)} (never imprinted)"
        else:
            s = f"{fmt(row.get('strength_before'), strength)} → {fmt(row.get('strength_after'), strength)}"
        u_before, u_after = number(row.get("utility_before")), number(row.get("utility_after"))
        if u_after is None:
            u = "—"
        elif u_before is None:
            u = fmt(u_after, utility)
        elif is_rate(utility) and 0 <= u_before <= 1 and 0 <= u_after <= 1:
            u = f"{fmt(u_after, utility)} ({100 * (u_after - u_before):+.1f} pts)"
        else:
            relative = f", {100 * (u_after - u_before) / abs(u_before):+.0f}%" if u_before else ""
            u = f"{fmt(u_after, utility)} ({u_after - u_before:+.4g}{relative})"
        if row.get("trace_accuracy") is None:
            detect = "—"
        else:
            ci = row.get("trace_ci") or [None, None]
            interval = f" [{fmt(ci[0], 'acc')}, {fmt(ci[1], 'acc')}]" if ci[0] is not None else ""
            p = row.get("trace_p")
            tested = f", p {p:.3g}" if p is not None else ""
            detect = (f"{fmt(row['trace_accuracy'], 'acc')}{interval}{tested} "
                      f"({row.get('trace_by', '')})")  # fmt: skip
        if row.get("relearn_curve") is None:
            relearn = "—"
        elif row.get("relearn_back"):
            relearn = (
                "0 (never gone)"
                if row["relearn_steps"] == 0 and row.get("status") != "control"
                else fmt(row["relearn_steps"])
            )
        else:
            relearn = f"> {fmt(row.get('relearn_max_steps'))}"
        cells = [rank, name, *([str(row.get("imprint", ""))] if with_imprint else []), s, u]
        cells += [fmt(row.get("wall_s")) if row.get("wall_s") is not None else "—", detect, relearn]
        table.append(cells)
    return TableBlock(columns, table, LEADERBOARD_CAPTION)


def write_leaderboard(
    out: Path, labels: list[str], left_out: dict[str, str], failed: dict[str, str],
    settings: dict[str, Any],
) -> dict[str, Any]:  # fmt: skip
    """``leaderboard.json``, ``leaderboard.md`` and ``report.html`` from the bench's pipelines'
    records; ``settings`` (model, preset, quick, seed) is written beside the rows."""
    from expunge.report import write_report

    rows: list[dict[str, Any]] = []
    report = Report("expunge bench: leaderboard")
    report.add(Text(f"Model `{settings['model']}`, preset `{settings['preset']}`"
                    f"{', --quick' if settings['quick'] else ''}, seed {settings['seed']}. "
                    f"Every number is read from the run records under `{out}` "
                    f"(one pipeline per imprint type; `expunge report {out}/IMPRINT` for its details)."))  # fmt: skip
    done = []
    for label in labels:
        if not (out / label / "pipeline.json").is_file():
            continue
        study = load_study(out / label)
        board = leaderboard(study)
        for row in board:
            row["imprint_type"] = label
        rows.extend(board)
        done.append(out / label)
        report.add(Heading(2, label))
        if board:
            report.add(leaderboard_block(board))
        if label in failed:
            report.add(Text(f"Not all of it ran: {failed[label].splitlines()[0]}"))
    if left_out:
        report.add(Heading(2, "Not in this leaderboard"),
                   TableBlock(["what", "why"], [[k, v] for k, v in left_out.items()]))  # fmt: skip
    redact = Redactor.for_runs(done)
    markdown, _ = to_markdown(report, redact, None)
    atomic_write_text(out / "leaderboard.md", markdown)
    board = {**{k: settings[k] for k in ("model", "preset", "quick")}, "rows": rows,
             "left_out": left_out, "failed": failed}  # fmt: skip
    atomic_write_json(out / "leaderboard.json", board)
    if done:
        write_report(done, out / "report.html", overwrite=True)
    return board
