"""``zooscope report``: one page on a zoo, its learning curves and every stored analysis."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from zooscope.commands.common import QuietOption, err_console, fail, reporter


def report(
    zoo: Annotated[Path | None, typer.Argument(help="A zoo file (.h5).", show_default=False)] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Folder for the page "
                                             "(default: ZOO_analysis/report/ beside the "
                                             "zoo).")] = None,
    format_: Annotated[str, typer.Option("--format", help="html: one self-contained file; "
                                         "md: Markdown with its figures beside it.")] = "html",
    plugin: Annotated[list[str] | None, typer.Option("--plugin", "-p", help="An analyzer to "
                                                     "run where its result is missing; "
                                                     "repeatable (default: agreement, "
                                                     "backbones, weightstats, predict, "
                                                     "umap).")] = None,
    no_run: Annotated[bool, typer.Option("--no-run", help="Run nothing: show only the "
                                         "analyses already stored.")] = False,
    quiet: QuietOption = False,
) -> None:
    """Write one page on a zoo: its card, learning curves and every stored analysis.

    Runs the missing analyses first (with progress), then writes report.html, a single
    file with its figures inside that any browser opens offline.

    Example: zooscope report demo.h5
    """
    from zooscope.files import remove_leftovers, write_atomic
    from zooscope.services.report import build_report, render_html, render_markdown
    from zooscope.services.results import check_out_dir

    if zoo is None:
        fail("missing the zoo file to report on", hint="zooscope report ZOO.h5", code=2)
    if format_ not in ("html", "md"):
        fail(f"--format {format_!r} is neither html nor md", code=2)
    from zooscope.access import store_for

    target = out if out is not None else store_for(zoo).analysis_dir(zoo) / "report"
    check_out_dir(target, given=out is not None)
    with reporter(quiet):
        page = build_report(zoo, plugin, run_missing=not no_run)
    # Each file is written whole and renamed into place: a kill leaves the previous
    # report or the new one, and a link planted at its name is replaced, not followed.
    try:
        target.mkdir(parents=True, exist_ok=True)
        remove_leftovers(target)
        if format_ == "html":
            path = target / "report.html"
            write_atomic(path, render_html(page))
        else:
            text, figures = render_markdown(page)
            for name, png in figures.items():
                write_atomic(target / name, png)
            path = target / "report.md"
            write_atomic(path, text)
    except OSError as exc:
        fail(f"cannot write the report to {target} ({exc.strerror or exc})")
    typer.echo(str(path))
    if not quiet:
        for name, why in page.skipped:
            err_console.print(f"note: {name} not run: {why}", markup=False, highlight=False,
                              soft_wrap=True)
        viewer = "a browser" if format_ == "html" else \
            "a Markdown viewer (its figures are the PNG files beside it)"
        count = len(page.sections)
        err_console.print(f"{count} {'analysis' if count == 1 else 'analyses'} on the page; "
                          f"open {path} in {viewer}", markup=False, highlight=False,
                          soft_wrap=True)
