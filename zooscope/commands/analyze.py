"""``zooscope analyze``: run an analyzer plugin on a zoo."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from zooscope.commands.common import (
    QuietOption,
    console,
    err_console,
    fail,
    fmt,
    print_json,
    print_prose,
    reporter,
    rich_table,
)


def analyze(
    zoo: Annotated[Path | None, typer.Argument(help="A zoo: a file (.h5) or a folder of "
                                               "parts (.zoo).", show_default=False)] = None,
    plugin: Annotated[str, typer.Option("--plugin", "-p", help="The analyzer to run "
                                        "(`zooscope plugins --all` lists them).")] = "agreement",
    set_: Annotated[list[str] | None, typer.Option("--set", help="An analyzer option, "
                                                   "NAME=VALUE; repeatable.")] = None,
    members: Annotated[str | None, typer.Option("--members", help="Members to include: factor "
                                                "filters (learning_rate=0.001,seed=0) or "
                                                "ids.")] = None,
    epochs: Annotated[str | None, typer.Option("--epochs", help="Epochs to include, e.g. "
                                               "0,3 (default: all).")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Folder for CSV and PNG files "
                                             "(default: ZOO_analysis/NAME/ beside the zoo, "
                                             "NAME-KEY/ for other options or selections).")] = None,
    json_: Annotated[bool, typer.Option("--json", help="Print the tables as JSON.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Recompute even if this result is "
                                        "stored; replace another result's files in --out.")] = False,
    options: Annotated[bool, typer.Option("--options", help="List the analyzer's options and "
                                          "exit.")] = False,
    quiet: QuietOption = False,
) -> None:
    """Run an analyzer on a zoo: a summary and table here, CSV/PNG files, the result stored beside it.

    Example: zooscope analyze demo.h5 --plugin agreement
    """
    from zooscope import registry
    from zooscope.services.results import run_analysis

    analyzer = registry.get_analyzer(plugin)
    if options:
        rows = [{"option": o.name, "type": o.type.__name__, "default": o.default,
                 "choices": list(o.choices) if o.choices is not None else None,
                 "minimum": o.minimum, "help": o.help} for o in analyzer.options]
        if json_:
            print_json(rows)
        else:
            console.print(f"{analyzer.name}: {analyzer.description}")
            if not rows:
                console.print("no options")
            for r in rows:
                allowed = (f"; one of: {', '.join(fmt(c) for c in r['choices'])}"
                           if r["choices"] else "")
                allowed += f"; at least {fmt(r['minimum'])}" if r["minimum"] is not None else ""
                console.print(f"\n  {r['option']} ({r['type']}, default: {fmt(r['default'])}"
                              f"{allowed})")
                console.print(f"      {r['help']}")
            if rows:
                console.print("\nset one with --set NAME=VALUE (repeatable)")
        return
    if zoo is None:
        fail("missing the zoo file to analyze", hint=f"zooscope analyze ZOO.h5 --plugin {plugin}",
             code=2)
    with reporter(quiet):
        result = run_analysis(zoo, analyzer, set_ or [], members, epochs, out, force)
    if json_:
        print_json({"analyzer": result.name, "key": result.key, "options": result.options,
                    "inputs": result.inputs, "summary": result.summary, "reused": result.reused,
                    "stored": result.stored, "not_stored": result.not_stored,
                    "notes": result.notes, "tables": result.tables,
                    "files": [str(f) for f in result.files]})
        return
    shown = analyzer.display(result.tables)
    if shown is not None and shown[1]:
        title, cols = shown
        n = len(next(iter(cols.values())))
        rows = [{c: cols[c][i] for c in cols} for i in range(min(n, 30))]
        console.print(rich_table(rows, title=f"{result.name}: {title}"
                                 + (f" (first 30 of {n} rows; all in the CSV)" if n > 30 else "")))
    print_prose(result.summary)
    for note in result.notes:
        err_console.print(f"note: {note}", markup=False, highlight=False, soft_wrap=True)
    if quiet and (result.stored or result.reused):
        return
    where = result.where or "the results store"
    state = (f"reused from {where}" if result.reused else f"stored in {where}" if result.stored
             else f"not stored: {result.not_stored}")
    folder = result.files[0].parent if result.files else "-"
    err_console.print(f"{state}; files in {folder}", markup=False, highlight=False,
                      soft_wrap=True)
