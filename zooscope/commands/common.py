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
from rich.console import Console, Group
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
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress and no status "
                                           "lines on stderr; results and errors only.")]
ZooPath = Annotated[Path, typer.Argument(help="A zoo: a file (.h5) or a folder of parts "
                                                "(.zoo).", show_default=False)]


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
        import warnings

        from zooscope.errors import PluginWarning

        def show(message: Any, category: type, *args: Any, **kwargs: Any) -> None:
            if issubclass(category, PluginWarning):
                err_console.print(f"[yellow]warning:[/] {escape(str(message))}", markup=True,
                                  soft_wrap=True)
            else:
                previous(message, category, *args, **kwargs)

        previous = warnings.showwarning
        warnings.showwarning = show
        try:
            from zooscope.environment import check_environment

            check_environment()
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
            from zooscope.extras import missing_extra

            missing = missing_extra(exc)
            if missing is not None:
                fail(missing.message, missing.hint)
            fail(f"unexpected {type(exc).__name__}: {exc}",
                 hint="this is a bug in zooscope or a plugin; rerun with ZOOSCOPE_DEBUG=1 "
                      "for the traceback")
        finally:
            warnings.showwarning = previous


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


def grid_order(config_text: str) -> list[str]:
    """The factor names in the order the config's [grid] lists them."""
    import tomllib

    try:
        grid = tomllib.loads(config_text).get("grid", {})
    except tomllib.TOMLDecodeError:
        return []
    return list(grid) if isinstance(grid, dict) else []


def order_factors(factors: dict[str, Any], grid: list[str]) -> dict[str, Any]:
    """Factors in one order everywhere: the grid's order, the other factors, then the seed."""
    first = [k for k in grid if k in factors]
    rest = sorted(k for k in factors if k not in first and k != "seed")
    return {k: factors[k] for k in [*first, *rest, *(["seed"] if "seed" in factors else [])]}


#: Shorter headers for long factor and metric names, used only where a table is too wide.
_ABBREVIATIONS = {"learning_rate": "lr", "weight_decay": "wd", "checkpoints_from": "from",
                  "accuracy": "acc", "validation": "val", "exact_match": "em"}


def _abbreviate(name: str) -> str:
    if name in _ABBREVIATIONS:
        return _ABBREVIATIONS[name]
    for long, short in _ABBREVIATIONS.items():
        name = name.replace(long, short)
    return name


def _is_prose(cells: list[str]) -> bool:
    """A column of sentences or lists may wrap between words; ids, numbers and names never do."""
    return any(" " in c for c in cells)


def rich_table(rows: list[dict[str, Any]], title: str | None = None,
               columns: list[str] | None = None, width: int | None = None) -> Group:
    """A table that fits the terminal (``width``, default the console's).

    Identifiers, numbers and names never wrap and words never break; a column of
    prose wraps between words. Where that does not fit, long headers are abbreviated
    (the caption says how), then columns whose value is the same in every row are left
    out (the caption gives the value once), then columns from the right, and the caption
    points at ``--json``, which has everything.
    """
    width = width or console.width
    cols = columns or (list(rows[0]) if rows else [])
    cells = {c: [fmt(row.get(c, "")) for row in rows] for c in cols}
    prose = {c for c in cols if _is_prose(cells[c])}

    def need(col: str, header: str) -> int:
        values = cells[col]
        if col in prose:  # wraps: its longest word, or the header
            words = [len(w) for v in values for w in v.split()]
            return max([len(header), *words[:1000]] if words else [len(header)])
        return max([len(header), *(len(v) for v in values)])

    def total(headers: dict[str, str]) -> int:
        return sum(need(c, h) for c, h in headers.items()) + 3 * len(headers) + 1

    headers = {c: c for c in cols}
    if total(headers) > width:
        headers = {c: _abbreviate(c) for c in cols}
    same: list[str] = []
    if len(rows) > 1:
        for c in cols[1:]:  # the first column names the rows
            if total(headers) <= width:
                break
            if len(set(cells[c])) == 1:
                same.append(f"{c} = {cells[c][0]}")
                del headers[c]
    dropped: list[str] = []
    while len(headers) > 1 and total(headers) > width:
        last = list(headers)[-1]
        dropped.insert(0, last)
        del headers[last]
    notes = [", ".join(f"{h} = {c}" for c, h in headers.items() if h != c)]
    if same:
        notes.append(f"every row has {', '.join(same)}")
    if dropped:
        notes.append(f"{len(dropped)} column(s) left out to fit {width} columns "
                     f"({', '.join(dropped)}); --json shows everything")
    # Prose columns share what the others leave, each at least its longest word and
    # at most its natural width; Rich is given exact widths so it cuts nothing.
    widths = {c: need(c, h) for c, h in headers.items()}
    spare = width - total(headers)
    natural = {c: max([len(h), *(len(v) for v in cells[c])]) for c, h in headers.items()
               if c in prose}
    while spare > 0 and any(natural[c] > widths[c] for c in natural):
        for c in natural:
            if spare > 0 and natural[c] > widths[c]:
                widths[c] += 1
                spare -= 1
    table = Table()
    for col, header in headers.items():
        if col in prose:
            table.add_column(header, overflow="fold", width=widths[col])
        else:
            table.add_column(header, no_wrap=True, width=widths[col])
    for i in range(len(rows)):
        table.add_row(*(Text(cells[c][i]) for c in headers))
    # Title and caption as lines of their own, wrapped between words: rich would pad
    # them to the table's width with trailing spaces.
    caption = "; ".join(n for n in notes if n)
    return Group(*(Text(line) for line in prose_lines(title or "", width)), table,
                 *(Text(line) for line in prose_lines(caption, width)))


def prose_lines(text: str, width: int | None = None) -> list[str]:
    """``text`` wrapped between words at ``width`` (the terminal's), without the trailing
    spaces rich leaves where it wraps; paragraphs kept."""
    import textwrap

    width = width or console.width
    out: list[str] = []
    for paragraph in text.splitlines():
        out += textwrap.wrap(paragraph, width=width, break_long_words=False,
                             break_on_hyphens=False) or [""]
    return out


def print_prose(text: str, to: Console | None = None) -> None:
    """Prose on stdout (or ``to``), wrapped as ``prose_lines`` wraps it."""
    target = to or console
    for line in prose_lines(text, target.width):
        target.print(line, markup=False, highlight=False, soft_wrap=True)


def reporter(quiet: bool = False) -> Any:
    """The current progress reporter for a command's work, closed when the block ends:
    bars in a terminal, one line per unit of work in a log, nothing with ``--quiet``."""
    from zooscope.progress import for_console, reporting

    return reporting(for_console(err_console, quiet))
