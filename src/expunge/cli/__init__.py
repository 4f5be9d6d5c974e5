"""The ``expunge`` command line: one thin function per verb, each calling the library.

Every verb that runs a stage (``finetune``, ``audit``, ``implant``, ``erase``, ``stress``,
``detect``, ``scan``; ``expunge.cli.stages``) builds the stage's typed config from ``--config``,
its flags and ``key=value`` overrides, and hands it to ``expunge.stage.run_stage``; ``run`` and
``demo`` run a study YAML (``expunge.cli.studies``). ``expunge.cli.common`` holds what they share.
"""

from __future__ import annotations

import sys
import warnings

from rich.markup import escape

from expunge.cli import stages, studies  # noqa: F401 (their verbs register on app)
from expunge.cli.common import app, config_class, err_console, one_line
from expunge.errors import ExpungeError, ExpungeWarning

__all__ = ["app", "config_class", "main"]
_default_showwarning = warnings.showwarning


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """expunge's own warnings as one ``warning:`` line; others the usual way."""
    if issubclass(category, ExpungeWarning):
        err_console.print(f"[yellow]warning:[/] {escape(one_line(message))}", highlight=False,
                          soft_wrap=True)  # fmt: skip
    else:
        _default_showwarning(message, category, filename, lineno, file, line)


def main() -> None:
    warnings.showwarning = _show_warning
    try:
        app()
    except ExpungeError as err:
        # soft_wrap: one line however long (rich would wrap at the terminal's width)
        err_console.print(f"[bold red]error:[/] {escape(one_line(err))}", highlight=False,
                          soft_wrap=True)  # fmt: skip
        sys.exit(2)
    except KeyboardInterrupt as err:
        err_console.print(f"[bold red]{escape(one_line(err or 'interrupted'))}[/]",
                          highlight=False, soft_wrap=True)  # fmt: skip
        sys.exit(130)
