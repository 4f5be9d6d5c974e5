"""``expunge report RUN_DIR [RUN_DIR ...] --out report.html``: render run records for people.

Reads only records (``record.json``, ``pipeline.json``, the ``metrics.jsonl`` training logs a
run keeps) and recomputes nothing. For each pipeline: the reference / before / after table of
its audits, the eraser's internal stages, and figures — imprint strength against utility per
method, sweeps over one setting (e.g. Fine-mixing's ρ), training curves, stress curves
(relearning), detection accuracy — each drawn only when the records hold its data. Imprint
secrets are redacted unless ``redact=False``. Writes ``report.html`` (self-contained: figures
as base64 PNG, no scripts) and a Markdown twin ``report.md`` with its figures in
``report_files/``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from expunge.errors import DataError, OutputExistsError
from expunge.files import atomic_write_text
from expunge.records import check_writable
from expunge.report.blocks import Report
from expunge.report.collect import Run, load_run_dir
from expunge.report.formats import to_html, to_markdown
from expunge.report.redact import Redactor
from expunge.report.render import run_section, study_section
from expunge.report.tables import declared_tables


def build_report(run_dirs: Sequence[str | Path], redact: Redactor) -> Report:
    if not run_dirs:
        raise DataError("no run directories given")
    names = ", ".join(Path(p).name for p in run_dirs)
    report = Report(f"expunge report: {redact(names)}")
    index = 0
    for path in run_dirs:
        item = load_run_dir(path)
        if isinstance(item, Run):
            run_section(item, report, redact, index)
            index += 1
            continue
        report.add(*declared_tables(Path(path), redact))
        for study in item:
            study_section(study, report, redact, index)
            index += 1
    return report


def write_report(
    run_dirs: Sequence[str | Path],
    out: str | Path = "report.html",
    redact: bool = True,
    overwrite: bool = False,
) -> tuple[Path, Path]:
    """Write ``out`` (HTML) and its Markdown twin (same name, ``.md``); returns both paths."""
    out = Path(out)
    if out.suffix.lower() not in {".html", ".htm"}:
        raise DataError(f"--out must name an .html file, got {out}")
    md_path = out.with_suffix(".md")
    figure_dir = out.parent / f"{out.stem}_files"
    for path in (out, md_path):
        if path.exists() and not overwrite:
            raise OutputExistsError(f"{path} already exists; pass --overwrite to replace it")
    check_writable(out.parent, out)  # before the records are read and the figures drawn
    redactor = Redactor.for_runs([Path(p) for p in run_dirs], enabled=redact)
    report = build_report(run_dirs, redactor)
    html_text = to_html(report, redactor)
    markdown, figures = to_markdown(report, redactor, figure_dir)
    for relative, png in figures.items():
        path = out.parent / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".png.tmp")
        tmp.write_bytes(png)
        tmp.replace(path)
    atomic_write_text(md_path, markdown)
    atomic_write_text(out, html_text)
    return out, md_path
