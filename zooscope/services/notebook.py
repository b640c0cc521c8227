"""Analyses from Python: ``zooscope.analyze(zoo, "agreement", ...)``.

The result holds the analyzer's tables as pandas DataFrames and its figures as
matplotlib figures, shows itself as tables in Jupyter, and writes nothing unless
``save`` is called.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zooscope.access import open_zoo
from zooscope.analysis import Analyzer, Selection, figure_png
from zooscope.errors import ConfigError
from zooscope.registry import get_analyzer
from zooscope.services.results import (
    check_factor_names,
    parse_epochs,
    parse_members,
    resolve_inputs,
    run_analyzer,
    write_csv,
)
from zooscope.zoo import Member, Zoo


@dataclass
class Analysis:
    """One analysis computed in this process: ``tables`` (name → DataFrame), ``figures``
    (name → matplotlib figure), ``summary`` and the ``options`` it ran with."""

    name: str
    summary: str
    options: dict[str, Any]
    members: list[str]
    epochs: list[int] | None
    tables: dict[str, Any] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        shapes = ", ".join(f"{n} ({len(t)} rows)" for n, t in self.tables.items())
        return (f"<Analysis {self.name}: {len(self.members)} members; tables: {shapes or 'none'}; "
                f"figures: {', '.join(self.figures) or 'none'}>\n{self.summary}")

    def _repr_html_(self) -> str:
        parts = [f"<h4>{html.escape(self.name)}</h4>",
                 f"<pre>{html.escape(self.summary)}</pre>"]
        for name, frame in self.tables.items():
            parts.append(f"<h5>{html.escape(name)} ({len(frame)} rows)</h5>")
            parts.append(frame.to_html(max_rows=20, index=False))
        return "\n".join(parts)

    def save(self, out_dir: str | Path) -> list[Path]:
        """Write every table as CSV and every figure as PNG into ``out_dir``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for name, frame in self.tables.items():
            path = out / f"{name}.csv"
            write_csv(path, {c: frame[c].tolist() for c in frame.columns})
            written.append(path)
        for name, fig in self.figures.items():
            path = out / f"{name}.png"
            path.write_bytes(fig if isinstance(fig, bytes) else figure_png(fig, close=False))
            written.append(path)
        return written


def _option_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def _members(zoo: Zoo, members: Any) -> list[Member]:
    if members is None or isinstance(members, str):
        return parse_members(zoo, members)
    if isinstance(members, Mapping):
        check_factor_names(zoo, members)
        chosen = zoo.members(**members)
        if not chosen:
            raise ConfigError(f"members={dict(members)!r} selects no member")
        return chosen
    if isinstance(members, (Member, Iterable)):
        items = [members] if isinstance(members, Member) else list(members)
        ids = [m.id if isinstance(m, Member) else str(m) for m in items]
        return parse_members(zoo, ",".join(ids))
    raise ConfigError(f"members={members!r}: give ids, Members, a dict of factors or a "
                      "string such as 'seed=0'")


def _epochs(epochs: Any) -> list[int] | None:
    if epochs is None or isinstance(epochs, str):
        return parse_epochs(epochs)
    if isinstance(epochs, int):
        return [epochs]
    return parse_epochs(",".join(str(e) for e in epochs))


def analyze(zoo: Zoo | str | Path, analyzer: str | Analyzer, members: Any = None,
            epochs: Any = None, inputs: Mapping[str, Analysis] | None = None,
            **options: Any) -> Analysis:
    """Run an analyzer on a zoo (open or a path/URL) and return its result in memory.

    ``members``: ids, ``Member`` objects, a dict of factor values (``{"seed": 0}``) or the
    CLI's text (``"learning_rate=1e-3,seed=0"``); ``epochs``: an int, a list, or text.
    ``inputs``: for an analyzer that reads another's result (``predict`` reads
    ``weightstats``), that result computed in this process, by analyzer name; without
    it, the zoo's stored result is used.
    Options are the analyzer's (``zooscope plugins --all`` lists them), as Python values.
    """
    import pandas as pd

    if not isinstance(analyzer, Analyzer):
        analyzer = get_analyzer(analyzer)
    parsed = analyzer.parse_options([f"{k}={_option_text(v)}" for k, v in options.items()])
    own = not isinstance(zoo, Zoo)
    opened: Zoo = open_zoo(zoo) if own else zoo  # type: ignore[arg-type]
    try:
        selection = Selection(members=_members(opened, members), epochs=_epochs(epochs))
        selection.inputs = resolve_inputs(opened, analyzer)
        for name, given in (inputs or {}).items():
            if name not in analyzer.inputs:
                raise ConfigError(f"inputs={{{name!r}: ...}}: {analyzer.name} reads no result "
                                  f"of {name}", hint=f"it reads: {', '.join(analyzer.inputs)}"
                                  if analyzer.inputs else "it reads no other result")
            if not isinstance(given, Analysis) or given.name != name:
                raise ConfigError(f"inputs[{name!r}] must be the Analysis that "
                                  f"zooscope.analyze(zoo, {name!r}) returned")
            selection.inputs[name] = {
                "name": name, "key": "in-memory", "digest": "in-memory",
                "tables": {t: {c: frame[c].to_numpy() for c in frame.columns}
                           for t, frame in given.tables.items()}}
        out = run_analyzer(analyzer, opened, parsed, selection,
                           "check members= and epochs= against zoo.members_frame()")
    finally:
        if own:
            opened.close()
    tables = {name: pd.DataFrame({c: list(v) for c, v in cols.items()})
              for name, cols in out.tables.items()}
    return Analysis(analyzer.name, out.summary, parsed, [m.id for m in selection.members],
                    selection.epochs, tables, dict(out.figures))
