"""A report's blocks as a self-contained HTML page (figures embedded as base64 PNG, no scripts,
nothing fetched) and as its Markdown twin (figures written beside it as PNG files)."""

from __future__ import annotations

import base64
import html
import re
from datetime import datetime, timezone
from pathlib import Path

from expunge.report.blocks import Figure, Heading, Report, TableBlock, Text
from expunge.report.redact import Redactor

CSS = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 2rem auto;
       max-width: 72rem; padding: 0 1rem; color: #1d1d1f; line-height: 1.45; }
h1 { border-bottom: 2px solid #ddd; padding-bottom: .3rem; }
h2 { margin-top: 2.5rem; border-bottom: 1px solid #eee; }
table { border-collapse: collapse; margin: .8rem 0; font-size: .9rem; }
th, td { border: 1px solid #d0d0d0; padding: .3rem .6rem; text-align: right; }
th:first-child, td:first-child, td.text, th.text { text-align: left; }
th { background: #f4f4f6; }
caption { caption-side: bottom; font-size: .8rem; color: #666; text-align: left; padding-top: .3rem; }
figure { margin: 1rem 0; }
figcaption { font-size: .85rem; color: #555; }
img { max-width: 100%; height: auto; }
code { background: #f4f4f6; padding: 0 .2rem; }
.meta { color: #666; font-size: .85rem; }
"""


TEXT_CELL = ' class="text"'


def _inline(text: str) -> str:
    """Escape, then `code` spans."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def to_html(report: Report, redact: Redactor) -> str:
    parts = [f"<h1>{html.escape(report.title)}</h1>",
             f"<p class=\"meta\">Rendered from run records on "
             f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC} by expunge report; "
             f"{'imprint secrets redacted' if redact.enabled else 'imprint secrets NOT redacted'}.</p>"]  # fmt: skip
    images: dict[str, str] = {}
    for block in report.blocks:
        if isinstance(block, Heading):
            parts.append(f"<h{block.level}>{html.escape(block.text)}</h{block.level}>")
        elif isinstance(block, Text):
            parts.append(f"<p>{_inline(block.text)}</p>")
        elif isinstance(block, TableBlock):
            head = "".join(
                f"<th{TEXT_CELL if i < 2 else ''}>{html.escape(c)}</th>"
                for i, c in enumerate(block.columns)
            )
            body = "".join(
                "<tr>" + "".join(f"<td{TEXT_CELL if i < 2 else ''}>{html.escape(c)}</td>"
                                 for i, c in enumerate(row)) + "</tr>"
                for row in block.rows
            )  # fmt: skip
            caption = f"<caption>{html.escape(block.caption)}</caption>" if block.caption else ""
            parts.append(
                f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
            )
        elif isinstance(block, Figure):
            token = f"@@figure:{block.name}@@"
            images[token] = base64.b64encode(block.png).decode("ascii")
            parts.append(f'<figure><img alt="{html.escape(block.caption)}" src="data:image/png;base64,{token}">'
                         f"<figcaption>{html.escape(block.caption)}</figcaption></figure>")  # fmt: skip
    body = redact("\n".join(parts))  # figures go in after redaction: base64 is not text
    for token, data in images.items():
        body = body.replace(token, data)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<link rel="icon" href="data:,">\n'
        f"<title>{html.escape(report.title)}</title>\n<style>{CSS}</style>\n</head>\n"
        f"<body>\n{body}\n</body>\n</html>\n"
    )


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(
    report: Report, redact: Redactor, figure_dir: Path | None
) -> tuple[str, dict[str, bytes]]:
    """The Markdown twin and the figure files it links (``{relative path: png}``)."""
    lines = [f"# {report.title}", "",
             f"Rendered from run records on {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC} by "
             f"expunge report.", ""]  # fmt: skip
    files: dict[str, bytes] = {}
    for block in report.blocks:
        if isinstance(block, Heading):
            lines += ["#" * block.level + " " + block.text, ""]
        elif isinstance(block, Text):
            lines += [block.text, ""]
        elif isinstance(block, TableBlock):
            lines.append("| " + " | ".join(_md_cell(c) for c in block.columns) + " |")
            lines.append(
                "|" + "|".join("---" if i < 2 else "---:" for i in range(len(block.columns))) + "|"
            )
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in block.rows]
            lines += (["", f"*{block.caption}*"] if block.caption else []) + [""]
        elif isinstance(block, Figure) and figure_dir is not None:
            relative = f"{figure_dir.name}/{block.name}.png"
            files[relative] = block.png
            lines += [f"![{block.caption}]({relative})", ""]
    return redact("\n".join(lines)), files
