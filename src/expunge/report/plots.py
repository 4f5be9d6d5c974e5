"""Report figures (matplotlib, rendered off-screen to PNG bytes). Each takes only what records
hold and returns ``None`` when there is nothing to draw, so a report shows a plot only when its
data is present."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

Label = Callable[[str], str]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    _pyplot().close(fig)
    return buffer.getvalue()


def _axis_label(metric: str, higher_is_better: bool | None) -> str:
    arrow = {True: " (higher is better)", False: " (lower is better)"}.get(higher_is_better, "")
    return f"{metric}{arrow}"


def label_rows(points: list[tuple[str, float, float, str]], near: float = 0.04) -> list[int]:
    """Per point, how many earlier points lie within ``near`` of it (as a share of each axis's
    span): their labels are stacked one line lower instead of printed over each other."""
    xs, ys = [p[1] for p in points], [p[2] for p in points]
    span_x, span_y = (max(xs) - min(xs)) or 1.0, (max(ys) - min(ys)) or 1.0
    rows = []
    for i, (_, x, y, _) in enumerate(points):
        rows.append(sum(
            abs(x - points[j][1]) <= near * span_x and abs(y - points[j][2]) <= near * span_y
            for j in range(i)
        ))  # fmt: skip
    return rows


def strength_vs_utility(
    points: list[tuple[str, float, float, str]],
    strength: str,
    utility: str,
    flags: tuple[bool | None, bool | None],
) -> bytes | None:
    """One point per model: (label, utility, strength, role) with role eraser|imprinted|reference."""
    erased = [p for p in points if p[3] == "eraser"]
    if not erased:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    styles = {"eraser": ("o", "tab:blue"), "imprinted": ("X", "tab:red"),
              "reference": ("s", "tab:green")}  # fmt: skip
    for (label, x, y, role), row in zip(points, label_rows(points), strict=True):
        marker, color = styles[role]
        ax.scatter([x], [y], marker=marker, color=color, s=60, zorder=3)
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(6, 4 - 10 * row),
                    fontsize=8)  # fmt: skip
    ax.set_xlabel(_axis_label(utility, flags[1]))
    ax.set_ylabel(_axis_label(strength, flags[0]))
    ax.set_title("Imprint strength after erasing vs utility")
    ax.grid(alpha=0.3)
    handles = [ax.scatter([], [], marker=m, color=c, label=r) for r, (m, c) in styles.items()
               if any(p[3] == r for p in points)]  # fmt: skip
    ax.legend(handles=handles, fontsize=8, loc="best")
    return _png(fig)


def sweep(
    method: str, key: str, xs: list[float], series: dict[str, list[float | None]]
) -> bytes | None:
    """Metrics against one swept setting of a method (e.g. Fine-mixing's reserve ratio ρ)."""
    if len(xs) < 2 or not series:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(series), figsize=(3.6 * len(series), 3.2), squeeze=False)
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    for ax, (metric, values) in zip(axes[0], series.items(), strict=True):
        pts = [(xs[i], values[i]) for i in order if values[i] is not None]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o")
        ax.set_xlabel(key)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{method}: sweep over {key}")
    fig.tight_layout()
    return _png(fig)


def training_curves(runs: dict[str, dict[str, list[dict[str, Any]]]]) -> bytes | None:
    """Loss against step, one panel per run, one line per training phase."""
    runs = {name: phases for name, phases in runs.items() if phases}
    if not runs:
        return None
    plt = _pyplot()
    columns = min(3, len(runs))
    rows = -(-len(runs) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.0 * rows), squeeze=False)
    for ax, (name, phases) in zip(axes.flat, runs.items(), strict=False):
        for phase, logs in phases.items():
            pts = [(r["step"], r["loss"]) for r in logs if isinstance(r.get("loss"), int | float)]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], label=phase)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
        if len(phases) > 1:
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(runs) :]:
        ax.set_visible(False)
    fig.tight_layout()
    return _png(fig)


def stress_curves(
    curves: dict[str, dict[str, list[tuple[float, float]]]], metric: str, x_label: dict[str, str]
) -> bytes | None:
    """``metric`` against the stressor's x (relearning steps, temperature...): one panel per
    stressor, one line per stressed model."""
    curves = {s: lines for s, lines in curves.items() if any(len(v) >= 1 for v in lines.values())}
    if not curves:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(curves), figsize=(4.4 * len(curves), 3.3), squeeze=False)
    for ax, (stressor, lines) in zip(axes[0], curves.items(), strict=True):
        for target, pts in lines.items():
            pts = sorted(pts)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=target)
        ax.set_title(stressor)
        ax.set_xlabel(x_label.get(stressor, "x"))
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


def detection(bars: list[tuple[str, float, float | None, float | None]]) -> bytes | None:
    """Held-out detection accuracy per detector and prompt set, with its interval; 0.5 = chance."""
    if not bars:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(4.0, 0.7 * len(bars) + 2), 3.6))
    xs = list(range(len(bars)))
    values = [b[1] for b in bars]
    low = [b[1] - b[2] if b[2] is not None else 0.0 for b in bars]
    high = [b[3] - b[1] if b[3] is not None else 0.0 for b in bars]
    ax.bar(xs, values, color="tab:purple", yerr=[low, high], capsize=3)
    ax.axhline(0.5, color="grey", linestyle="--", linewidth=1, label="chance")
    ax.set_xticks(xs, [b[0] for b in bars], rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("held-out accuracy")
    ax.set_title("Can the erasure be detected?")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)
