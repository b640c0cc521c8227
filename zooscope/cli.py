"""The ``zooscope`` command: wiring only; each command group lives in ``zooscope.commands``.

Heavy libraries (torch, transformers) are imported inside command bodies so
``zooscope --help`` answers at once.
"""

from __future__ import annotations

from typing import Annotated

import typer

from zooscope.commands import analyze, generate, plugins, report, zoo
from zooscope.commands.common import ZooscopeGroup
from zooscope.version import __version__

app = typer.Typer(
    cls=ZooscopeGroup,
    name="zooscope",
    help="Build and study model zoos: populations of transformer models over a grid of "
    "generating factors, recorded at every epoch in one HDF5 file or a folder of them.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"zooscope {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Show the version and exit.")] = False,
) -> None:
    """Build and study model zoos."""


app.command()(plugins.plugins)
app.command()(generate.generate)
app.command()(analyze.analyze)
app.command()(report.report)
app.add_typer(zoo.app, name="zoo")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
