"""Report figures (matplotlib, rendered off-screen to PNG bytes). Each takes only what records
hold and returns ``None`` when there is nothing to draw, so a report shows a plot only when its
data is present.

Each figure has a ``*_figure`` builder (returns the matplotlib figure, so tests can measure
where its texts landed) and a wrapper that renders it to PNG. Nothing is printed over anything
else: point labels are placed by ``place_labels`` (greedy, measured with the renderer), many
points get numbers and a legend, legends sit outside the axes, and long category names go on
the y axis of horizontal bars instead of being rotated under crowded vertical ones.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Sequence
from typing import Any

Label = Callable[[str], str]

# More labelled points than this and the scatter numbers its points and names them in a legend.
MAX_INLINE_LABELS = 8
# Concentric open markers, largest first, so lines through the same point all stay visible.
LINE_STYLES = [("o", 9.0, "-"), ("s", 7.0, "--"), ("D", 5.5, "-."), ("^", 4.5, ":"),
               ("v", 4.0, "-"), ("P", 3.5, "--")]  # fmt: skip


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    _pyplot().close(fig)
    return buffer.getvalue()


def _axis_label(metric: str, higher_is_better: bool | None) -> str:
    arrow = {True: " (higher is better)", False: " (lower is better)"}.get(higher_is_better, "")
    return f"{metric}{arrow}"


def _wrap(text: str, width: int) -> str:
    """Lines of at most ``width`` characters, broken after '/', ':' or a space (metric keys are
    slash paths); a piece longer than ``width`` stays whole rather than be cut mid-word."""
    lines = [""]
    for piece in re.split(r"(?<=[/:\s])", text):
        if lines[-1] and len(lines[-1]) + len(piece.rstrip()) > width:
            lines.append("")
        lines[-1] += piece
    return "\n".join(line.rstrip() for line in lines)


def _legend_outside(ax: Any, **kwargs: Any) -> Any:
    """A legend right of the axes, where it cannot cover points or lines."""
    return ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0,
                     fontsize=8, **kwargs)  # fmt: skip


def place_labels(
    ax: Any, xy: Sequence[tuple[float, float]], texts: Sequence[str], marker_pt: float = 8.0
) -> list[Any]:
    """Annotate each point with its text where it overlaps no other label and no marker.

    Greedy: for each point in turn, offsets around it are tried at growing distances and the
    first whose rendered box (``get_window_extent`` with the figure's renderer) clears every
    label placed so far, every marker (a ``marker_pt`` square) and the axes' edge wins; when
    none does, the least-overlapping one is kept. A label moved away from its point gets a thin
    leader line. Axis limits must be final before this is called.
    """
    from matplotlib.transforms import Bbox

    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    half = marker_pt / 2 * fig.dpi / 72
    screen = ax.transData.transform(list(xy)) if xy else []
    markers = [Bbox.from_extents(x - half, y - half, x + half, y + half) for x, y in screen]
    frame = ax.get_window_extent(renderer)
    directions = [(1, 0.5, "left", "bottom"), (1, -0.5, "left", "top"),
                  (-1, 0.5, "right", "bottom"), (-1, -0.5, "right", "top"),
                  (0, 1, "center", "bottom"), (0, -1, "center", "top")]  # fmt: skip
    candidates = [(dx * 6 * r, dy * 8 * r, ha, va, r)
                  for r in (1, 2, 3, 4, 5) for dx, dy, ha, va in directions]  # fmt: skip
    placed: list[Any] = []
    annotations = []
    for (x, y), text in zip(xy, texts, strict=True):
        ann = ax.annotate(text, (x, y), textcoords="offset points", xytext=(0, 0), fontsize=8,
                          arrowprops={"arrowstyle": "-", "color": "0.5", "linewidth": 0.6,
                                      "shrinkA": 1, "shrinkB": 4})  # fmt: skip
        best = None
        for dx, dy, ha, va, r in candidates:
            ann.xyann = (dx, dy)
            ann.set_horizontalalignment(ha)
            ann.set_verticalalignment(va)
            box = _text_box(ann, renderer)
            overlaps = sum(box.overlaps(b) for b in placed + markers)
            outside = not (frame.x0 <= box.x0 and box.x1 <= frame.x1
                           and frame.y0 <= box.y0 and box.y1 <= frame.y1)  # fmt: skip
            cost = (overlaps * 10 + outside * 5, r)
            if best is None or cost < best[0]:
                best = (cost, dx, dy, ha, va, r)
            if cost[0] == 0:
                break
        assert best is not None
        _, dx, dy, ha, va, r = best
        ann.xyann = (dx, dy)
        ann.set_horizontalalignment(ha)
        ann.set_verticalalignment(va)
        ann.arrow_patch.set_visible(r > 1)  # a leader line only where the label moved away
        placed.append(_text_box(ann, renderer))
        annotations.append(ann)
    return annotations


def _text_box(ann: Any, renderer: Any) -> Any:
    """The box of an annotation's text alone (``Annotation.get_window_extent`` adds the arrow).
    An annotation computes where its text goes only when drawn: do that step first."""
    from matplotlib.text import Text

    ann.update_positions(renderer)
    return Text.get_window_extent(ann, renderer)


def strength_vs_utility_figure(
    points: list[tuple[str, float, float, str]],
    strength: str,
    utility: str,
    flags: tuple[bool | None, bool | None],
) -> Any:
    """One point per model: (label, utility, strength, role) with role eraser|imprinted|reference."""
    if not any(p[3] == "eraser" for p in points):
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    styles = {"eraser": ("o", "tab:blue"), "imprinted": ("X", "tab:red"),
              "reference": ("s", "tab:green")}  # fmt: skip
    # the imprinted and reference models are few and often sit under an eraser: draw them on top
    layer = {"eraser": 3, "imprinted": 4, "reference": 4}
    numbered = len(points) > MAX_INLINE_LABELS
    handles = []
    for index, (label, x, y, role) in enumerate(points, 1):
        marker, color = styles[role]
        name = f"{index}  {label} ({role})" if numbered else role
        handles.append(ax.scatter([x], [y], marker=marker, color=color, s=60, zorder=layer[role],
                                  alpha=0.85, label=name))  # fmt: skip
    ax.margins(0.12)
    ax.set_xlabel(_axis_label(utility, flags[1]))
    ax.set_ylabel(_axis_label(strength, flags[0]))
    ax.set_title("Imprint strength after erasing vs utility")
    ax.grid(alpha=0.3)
    if numbered:
        _legend_outside(ax, handles=handles)
        texts = [str(i) for i in range(1, len(points) + 1)]
    else:
        roles = {}
        for handle, point in zip(handles, points, strict=True):
            roles.setdefault(point[3], handle)
        _legend_outside(ax, handles=list(roles.values()))
        texts = [p[0] for p in points]
    fig.tight_layout()
    place_labels(ax, [(p[1], p[2]) for p in points], texts)
    return fig


def strength_vs_utility(
    points: list[tuple[str, float, float, str]],
    strength: str,
    utility: str,
    flags: tuple[bool | None, bool | None],
) -> bytes | None:
    fig = strength_vs_utility_figure(points, strength, utility, flags)
    return None if fig is None else _png(fig)


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
        ax.set_title(_wrap(name, 40), fontsize=9)  # long stage ids would run into the next panel
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
        if len(phases) > 1:
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(runs) :]:
        ax.set_visible(False)
    fig.tight_layout()
    return _png(fig)


def stress_curves_figure(
    curves: dict[str, dict[str, list[tuple[float, float]]]], metric: str, x_label: dict[str, str]
) -> Any:
    """``metric`` against the stressor's x (relearning steps, temperature...): one panel per
    stressor, one line per stressed model. Lines often coincide (every model at 0% before
    relearning), so each has its own open marker, size and dash: coinciding points show as
    concentric rings. The legend goes under the panel, off the data."""
    curves = {s: lines for s, lines in curves.items() if any(len(v) >= 1 for v in lines.values())}
    if not curves:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(curves), figsize=(4.4 * len(curves), 3.3), squeeze=False)
    for ax, (stressor, lines) in zip(axes[0], curves.items(), strict=True):
        for index, (target, pts) in enumerate(lines.items()):
            marker, size, dash = LINE_STYLES[index % len(LINE_STYLES)]
            pts = sorted(pts)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, markersize=size,
                    fillstyle="none", linestyle=dash, label=target)  # fmt: skip
        ax.set_title(stressor)
        ax.set_xlabel(x_label.get(stressor, "x"))
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.22),
                  ncol=min(3, len(lines)), frameon=False)  # fmt: skip
    fig.tight_layout()
    return fig


def stress_curves(
    curves: dict[str, dict[str, list[tuple[float, float]]]], metric: str, x_label: dict[str, str]
) -> bytes | None:
    fig = stress_curves_figure(curves, metric, x_label)
    return None if fig is None else _png(fig)


def detection_figure(bars: list[tuple[str, float, float | None, float | None]]) -> Any:
    """Held-out detection accuracy per detector and prompt set, with its interval; 0.5 = chance.
    Horizontal bars: the names (``model: detector/prompts/accuracy``) are long, and a dozen of
    them rotated under vertical bars ran into each other."""
    if not bars:
        return None
    plt = _pyplot()
    names = [_wrap(b[0], 34) for b in bars]
    lines = sum(name.count("\n") + 1 for name in names)
    fig, ax = plt.subplots(figsize=(6.4, max(2.4, 0.16 * lines + 0.1 * len(bars) + 1.0)))
    ys = list(range(len(bars)))[::-1]  # first bar on top, in reading order
    values = [b[1] for b in bars]
    low = [b[1] - b[2] if b[2] is not None else 0.0 for b in bars]
    high = [b[3] - b[1] if b[3] is not None else 0.0 for b in bars]
    ax.barh(ys, values, color="tab:purple", xerr=[low, high], capsize=3, height=0.6)
    ax.axvline(0.5, color="grey", linestyle="--", linewidth=1, label="chance")
    ax.set_yticks(ys, names, fontsize=8)
    ax.set_xlim(0, 1.05)
    ax.set_xlabel("held-out accuracy")
    ax.set_title("Can the erasure be detected?")
    _legend_outside(ax)
    fig.tight_layout()
    return fig


def detection(bars: list[tuple[str, float, float | None, float | None]]) -> bytes | None:
    fig = detection_figure(bars)
    return None if fig is None else _png(fig)
