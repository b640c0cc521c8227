"""What every command shares: consoles, option definitions, the error boundary.

Typer stays in this package; the library below it raises ``ZooscopeError``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text
from typer.core import TyperGroup

from zooscope.errors import ZooscopeError

try:  # typer ≥ 0.26 vendors click; older releases use click itself
    from typer._click.exceptions import TyperException as _UsageException
except ImportError:  # pragma: no cover - depends on the installed typer
    from click.exceptions import ClickException as _UsageException

# Markup off: printed text holds paths and config tables like [zoo], never markup.
console = Console(highlight=False, markup=False)
err_console = Console(stderr=True, highlight=False, markup=False)

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
ZooPath = Annotated[Path, typer.Argument(help="A zoo file (.h5).", show_default=False)]


def debug() -> bool:
    return os.environ.get("ZOOSCOPE_DEBUG", "") not in ("", "0")


def fail(message: str, hint: str | None = None, code: int = 1) -> NoReturn:
    """One red ``error:`` line, an optional ``hint:`` line, and the exit code."""
    # Messages quote config tables like [zoo]: escape them so Rich prints them as text.
    err_console.print(f"[bold red]error:[/] {escape(message)}", markup=True, soft_wrap=True)
    if hint:
        err_console.print(f"[yellow]hint:[/] {escape(hint)}", markup=True, soft_wrap=True)
    raise typer.Exit(code)


class ZooscopeGroup(TyperGroup):
    """Turns domain errors into an ``error:`` line and exit code 1, never a traceback.

    ``ZOOSCOPE_DEBUG=1`` lets exceptions through with their traceback.
    """

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, _UsageException):
            raise
        except ZooscopeError as exc:
            if debug():
                raise
            fail(exc.message, exc.hint, getattr(exc, "exit_code", 1))
        except KeyboardInterrupt:
            fail("interrupted", code=130)
        except (SystemExit, GeneratorExit):
            raise
        except BaseException as exc:  # Rust extensions (tokenizers) panic with a BaseException
            if debug():
                raise
            fail(f"unexpected {type(exc).__name__}: {exc}",
                 hint="this is a bug in zooscope or a plugin; rerun with ZOOSCOPE_DEBUG=1 "
                      "for the traceback")


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=_jsonable) + "\n")


def _jsonable(value: Any) -> Any:
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(fmt(v) for v in value)
    return str(value)


def rich_table(rows: list[dict[str, Any]], title: str | None = None,
               columns: list[str] | None = None) -> Table:
    table = Table(title=title, title_justify="left")
    cols = columns or (list(rows[0]) if rows else [])
    for col in cols:
        table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(*(Text(fmt(row.get(c, ""))) for c in cols))
    return table


class _LazyProgress:
    """A Rich progress display that appears with its first task, so errors before any
    work print nothing else."""

    def __init__(self) -> None:
        self._progress: Any = None

    def __enter__(self) -> _LazyProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def add_task(self, *args: Any, **kwargs: Any) -> Any:
        if self._progress is None:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                      MofNCompleteColumn(), TimeElapsedColumn(),
                                      TimeRemainingColumn(), console=err_console)
            self._progress.start()
        return self._progress.add_task(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._progress, name)


def progress() -> Any:
    """Progress bars on stderr, shown once work starts."""
    return _LazyProgress()
