"""One page on one zoo: its card, its members' learning curves and every stored analysis.

``build_report`` gathers what the page shows (running the analyses that are missing);
``render_html`` writes it as one self-contained HTML file (figures as data URIs, CSS
inline, no script, nothing fetched), ``render_markdown`` as Markdown with its figures
as files beside it. Both read as plain documents without zooscope.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zooscope import markdown as md
from zooscope.access import open_zoo
from zooscope.analysis import figure_png, varying_factors
from zooscope.errors import ZooscopeError
from zooscope.progress import task
from zooscope.services.results import run_analysis
from zooscope.zoo import SAFE_NAME, Zoo

#: The analyzers a report runs where their result is missing, in this order (predict
#: reads weightstats). ``sparsify`` re-evaluates every model at ten sparsities, so a
#: report runs it only when asked (``--plugin sparsify``).
DEFAULT_ANALYZERS = ("curves", "agreement", "backbones", "weightstats", "predict", "umap")

#: Rows of a table shown on the page; the whole table is in the analysis's CSV.
MAX_ROWS = 30


@dataclass
class Section:
    """One stored analysis as the page shows it."""

    name: str
    key: str
    options: dict[str, Any]
    summary: str
    figures: dict[str, bytes]
    title: str
    table: dict[str, list[Any]]
    rows: int  # rows in the whole table; ``table`` holds at most MAX_ROWS


@dataclass
class Report:
    zoo: Path
    card: list[tuple[str, str]]
    config: str
    curves: bytes | None
    sections: list[Section] = field(default_factory=list)
    #: Analyses that were not run, each with the reason (they do not apply to this zoo).
    skipped: list[tuple[str, str]] = field(default_factory=list)
    created: str = ""


def build_report(zoo_path: Path, plugins: Sequence[str] | None = None,
                 run_missing: bool = True) -> Report:
    """Everything the page shows. Analyses in ``plugins`` (default: DEFAULT_ANALYZERS)
    that are not stored for the whole zoo with their default options are run and stored
    first; an analyzer that does not apply to the zoo is listed with its reason, unless
    it was asked for by name, when its error stands."""
    from zooscope import registry

    asked = plugins is not None
    names = list(dict.fromkeys(plugins if plugins is not None else DEFAULT_ANALYZERS))
    analyzers = [registry.get_analyzer(n) for n in names]  # unknown names fail here, at once
    skipped: list[tuple[str, str]] = []
    if run_missing:
        progress = task("report: analyses", len(analyzers))
        for analyzer in analyzers:
            try:
                run_analysis(zoo_path, analyzer, [], None, None, None, force=False)
            except ZooscopeError as exc:
                if asked:
                    raise
                skipped.append((analyzer.name, exc.message))
            progress.advance()
    with open_zoo(zoo_path) as zoo:
        card, config = zoo_card(zoo, zoo_path)
        curves = learning_curves(zoo)
        stored = zoo.analyses()
        sections = [_section(zoo, a) for a in _ordered(stored, names)]
    if not run_missing:
        have = {a["name"] for a in stored}
        skipped += [(n, "not stored, and --no-run runs nothing") for n in names
                    if n not in have]
    return Report(zoo=zoo_path, card=card, config=config,
                  curves=figure_png(curves) if curves is not None else None,
                  sections=sections, skipped=skipped,
                  created=_dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"))


def _ordered(stored: list[dict[str, Any]], names: Sequence[str]) -> list[dict[str, Any]]:
    """Stored analyses, the report's own first in its order, then the rest by name."""
    rank = {n: i for i, n in enumerate(names)}
    return sorted(stored, key=lambda a: (rank.get(a["name"], len(rank)), a["name"],
                                         a.get("created", ""), a["key"]))


def _section(zoo: Zoo, stored: Mapping[str, Any]) -> Section:
    from zooscope import registry

    name, key = str(stored["name"]), str(stored["key"])
    tables = {t: {c: _plain_list(v) for c, v in cols.items()}
              for t, cols in zoo.analysis_tables(name, key).items()}
    figures = zoo.analysis_figures(name, key)
    try:
        shown = registry.get_analyzer(name).display(tables)
    except ZooscopeError:  # an analyzer no longer installed: its first table
        shown = None
    if shown is None or not shown[1]:
        first = next(iter(tables), None)
        shown = (first or "", tables.get(first, {}) if first else {})
    title, cols = shown
    rows = len(next(iter(cols.values()))) if cols else 0
    return Section(name=name, key=key, options=dict(stored.get("options") or {}),
                   summary=str(stored.get("summary", "")), figures=figures, title=title,
                   table={c: list(v)[:MAX_ROWS] for c, v in cols.items()}, rows=rows)


def _plain_list(values: Any) -> list[Any]:
    import numpy as np

    out = []
    for v in np.asarray(values).tolist():
        out.append(v.decode() if isinstance(v, bytes) else v)
    return out


def zoo_card(zoo: Zoo, path: Path) -> tuple[list[tuple[str, str]], str]:
    """The zoo's identity as label/value rows, and its config verbatim."""
    info = zoo.info
    members = zoo.members()
    checkpoints = zoo.checkpoints()
    factors: dict[str, list[Any]] = {}
    for m in members:
        for k, v in m.factors.items():
            if v not in factors.setdefault(k, []):
                factors[k].append(v)
    data = info.get("data") or {}
    rows = [
        ("zoo", f"{info.get('name', path.stem)} ({path.name}, {_size(path)})"),
        ("generator", f"{info.get('generator')} {info.get('generator_version', '')}".strip()),
        ("created", str(info.get("created", ""))),
        ("members", f"{len(members)}; {len(checkpoints)} checkpoints "
                    f"(epochs {_range(sorted({c.epoch for c in checkpoints}))})"),
    ]
    backbones = factors.pop("backbone", [])
    rows.append(("backbone" if len(backbones) == 1 else "backbones",
                 ", ".join(map(str, backbones)) or "-"))
    for k, values in sorted(factors.items()):
        rows.append((f"factor {k}", ", ".join(map(str, sorted(values, key=str)))))
    for k in ("source", "test_source", "validation_source"):
        if data.get(k):
            rows.append((f"data {k.replace('_', ' ')}", str(data[k])))
    sizes = data.get("sizes") or {}
    if sizes:
        rows.append(("split sizes", ", ".join(f"{k} {v:,}" for k, v in sizes.items())))
    for split, digest in (data.get("fingerprints") or {}).items():
        rows.append((f"fingerprint {split}", str(digest)))
    rows.append(("metrics", ", ".join(zoo.metric_columns)))
    rows.append(("stored as", f"{info.get('storage_dtype', '?')}, compression "
                              f"{info.get('compression', '?')}"))
    versions = info.get("versions") or {}
    if versions:
        rows.append(("library versions", ", ".join(f"{k} {v}" for k, v in sorted(versions.items()))))
    return rows, zoo.config_text


def _range(epochs: list[int]) -> str:
    if not epochs:
        return "none"
    if epochs == list(range(epochs[0], epochs[-1] + 1)):
        return f"{epochs[0]}-{epochs[-1]}" if len(epochs) > 1 else str(epochs[0])
    return ", ".join(map(str, epochs))


def _size(path: Path) -> str:
    from zooscope.access import store_for

    n = float(store_for(path).size(path))
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def learning_curves(zoo: Zoo) -> Any:
    """Loss and the task's metrics per epoch on every split: one panel per metric and
    split, one line per member, coloured by the first factor that varies (the seed
    last), so a reader sees at once which settings learn and which do not."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    columns = list(zoo.metric_columns)
    splits = [s for s in ("train", "validation", "test") if any(c.startswith(f"{s}_")
                                                                 for c in columns)]
    metrics = list(dict.fromkeys(c.split("_", 1)[1] for c in columns if "_" in c
                                 and c.split("_", 1)[0] in splits))
    members = zoo.members()
    checkpoints = zoo.checkpoints()
    if not splits or not metrics or not checkpoints:
        return None
    varying = varying_factors(members)
    colour_by = next((k for k in varying if k != "seed"), varying[0] if varying else None)
    values = sorted({m.factors.get(colour_by) for m in members}, key=_sort_key) \
        if colour_by else [None]
    palette = plt.cm.viridis(np.linspace(0, 0.9, max(len(values), 1)))
    colour = {str(v): palette[i] for i, v in enumerate(values)}
    by_member: dict[str, list[Any]] = {}
    for c in checkpoints:
        by_member.setdefault(c.member, []).append(c)
    fig, axes = plt.subplots(len(metrics), len(splits),
                             figsize=(3.3 * len(splits) + 0.6, 2.5 * len(metrics) + 0.9),
                             squeeze=False, layout="constrained", sharex=True)
    for r, metric in enumerate(metrics):
        for s, split in enumerate(splits):
            ax = axes[r][s]
            column = f"{split}_{metric}"
            if column not in columns:
                ax.set_visible(False)
                continue
            for m in members:
                cps = by_member.get(m.id, [])
                ys = [c.metrics.get(column, math.nan) for c in cps]
                if not cps or all(y != y for y in ys):
                    continue
                ax.plot([c.epoch for c in cps], ys, marker="o", markersize=2.5, linewidth=1,
                        alpha=0.75, color=colour[str(m.factors.get(colour_by))])
            ax.set_title(f"{split} {metric}", fontsize=9)
            ax.tick_params(labelsize=8)
            ax.xaxis.get_major_locator().set_params(integer=True)
            if r == len(metrics) - 1:
                ax.set_xlabel("epoch", fontsize=8)
    if colour_by:
        from matplotlib.lines import Line2D

        handles = [Line2D([], [], color=colour[str(v)], marker="o", markersize=3, label=str(v))
                   for v in values]
        fig.legend(handles=handles, title=colour_by, loc="outside lower center",
                   ncol=min(len(values), 6), fontsize=8, title_fontsize=8, frameon=False)
    fig.suptitle(f"learning curves: {len(by_member)} members, one line each", fontsize=10)
    return fig


def _sort_key(value: Any) -> tuple[int, Any]:
    return (0, value) if isinstance(value, int | float) else (1, str(value))


# -- rendering -------------------------------------------------------------------------------

def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if value != value:
            return "NaN"
        if value == 0 or 1e-3 <= abs(value) < 1e5:
            return f"{value:.4g}"
        return f"{value:.3e}"
    return str(value)


def _reading(section: Section) -> str:
    """The first sentence-or-two of the summary: the line a reader takes away."""
    return section.summary.strip()


def _caption(section: Section) -> str:
    options = ", ".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={_fmt(v)}"
                        for k, v in sorted(section.options.items()))
    return f"key {section.key[:8]}" + (f"; options {options}" if options else "")


CSS = """
body { font: 15px/1.45 -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #1a1a1a;
       max-width: 1100px; margin: 2em auto; padding: 0 1.2em; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { margin-top: 2em; border-bottom: 1px solid #ddd; }
.meta { color: #555; } .reading { background: #f4f7fb; border-left: 4px solid #4a7ab8;
        padding: 0.5em 0.8em; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.6em 0; }
th, td { border: 1px solid #ddd; padding: 0.2em 0.55em; text-align: right; }
th { background: #f2f2f2; } td.l, th.l { text-align: left; }
table.card td { text-align: left; vertical-align: top; } table.card td:first-child { color: #555; }
img { max-width: 100%; height: auto; border: 1px solid #eee; margin: 0.4em 0; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
.note { color: #555; font-size: 0.9em; } code { font-size: 0.92em; }
"""


def _html_table(cols: Mapping[str, Sequence[Any]]) -> str:
    names = list(cols)
    n = len(next(iter(cols.values()))) if cols else 0
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in names)
    body = []
    for i in range(n):
        cells = []
        for c in names:
            v = cols[c][i]
            cls = "" if isinstance(v, int | float) and not isinstance(v, bool) else ' class="l"'
            cells.append(f"<td{cls}>{html.escape(_fmt(v))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def render_html(report: Report) -> str:
    """The page: one file, figures embedded, nothing fetched."""
    name = html.escape(report.zoo.name)
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>zooscope report: {name}</title><style>{CSS}</style></head><body>",
        f"<h1>Zoo report: {name}</h1>",
        f'<p class="meta">Written by zooscope on {html.escape(report.created)}. '
        f"{len(report.sections)} stored analyses. Every table shows at most {MAX_ROWS} rows; "
        "the analyses' CSV files beside the zoo hold all of them.</p>",
        "<h2>The zoo</h2>", '<table class="card"><tbody>',
        *(f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>" for k, v in report.card),
        "</tbody></table>",
        "<details><summary>The config, as given to <code>zooscope generate</code></summary>"
        f"<pre>{html.escape(report.config)}</pre></details>",
        "<h2>Learning curves</h2>",
    ]
    if report.curves is not None:
        parts.append(_img(report.curves, "learning curves: each split's loss and metrics per "
                                         "epoch, one line per member"))
    else:
        parts.append('<p class="note">No committed checkpoints with metrics.</p>')
    parts.append("<h2>Analyses</h2>")
    if not report.sections:
        parts.append('<p class="note">No analysis is stored for this zoo.</p>')
    for s in report.sections:
        parts.append(f'<h3 id="{html.escape(s.name)}-{html.escape(s.key[:8])}">'
                     f"{html.escape(s.name)}</h3>")
        parts.append(f'<p class="reading">{html.escape(_reading(s))}</p>')
        for fname, png in s.figures.items():
            parts.append(_img(png, f"{s.name}: {fname}"))
        if s.table:
            more = f" (first {MAX_ROWS} of {s.rows} rows)" if s.rows > MAX_ROWS else ""
            parts.append(f'<p class="note">{html.escape(s.title)}{more}</p>')
            parts.append(_html_table(s.table))
        parts.append(f'<p class="note">{html.escape(_caption(s))}</p>')
    if report.skipped:
        parts.append("<h3>Not run</h3><ul>")
        parts += [f"<li><b>{html.escape(n)}</b>: {html.escape(why)}</li>"
                  for n, why in report.skipped]
        parts.append("</ul>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _md_cell(value: Any) -> str:
    return md.text(_fmt(value))


def _md_table(cols: Mapping[str, Sequence[Any]]) -> list[str]:
    names = list(cols)
    n = len(next(iter(cols.values()))) if cols else 0
    lines = ["| " + " | ".join(_md_cell(c) for c in names) + " |",
             "|" + "|".join("---" for _ in names) + "|"]
    lines += ["| " + " | ".join(_md_cell(cols[c][i]) for c in names) + " |" for i in range(n)]
    return lines


def render_markdown(report: Report) -> tuple[str, dict[str, bytes]]:
    """The page as Markdown, and its figures as files (name to PNG) to write beside it.
    What the zoo and its results hold is escaped as text; the config sits in a fence
    longer than any run of backticks in it."""
    files: dict[str, bytes] = {}
    lines = [f"# Zoo report: {md.text(report.zoo.name)}", "",
             f"Written by zooscope on {md.text(report.created)}. Tables show at most "
             f"{MAX_ROWS} rows; the analyses' CSV files beside the zoo hold all of them.", "",
             "## The zoo", "", "| | |", "|---|---|"]
    lines += [f"| {_md_cell(k)} | {_md_cell(v)} |" for k, v in report.card]
    lines += ["", "The config, as given to `zooscope generate`:", "",
              *md.fence(report.config, "toml"), "", "## Learning curves", ""]
    if report.curves is not None:
        files["learning_curves.png"] = report.curves
        lines.append("![learning curves](learning_curves.png)")
    else:
        lines.append("No committed checkpoints with metrics.")
    lines += ["", "## Analyses", ""]
    if not report.sections:
        lines.append("No analysis is stored for this zoo.")
    for s in report.sections:
        reading = md.paragraphs(_reading(s)).split("\n")
        lines += [f"### {md.text(s.name)}", "", *(f"> {line}" for line in reading), ""]
        for fname, png in s.figures.items():
            file = f"{s.name}-{s.key[:8]}-{fname}.png"
            if not SAFE_NAME.match(file):
                continue  # a name a results store should never hold: not a file name here
            files[file] = png
            lines += [f"![{md.text(s.name)}: {md.text(fname)}]({file})", ""]
        if s.table:
            more = f" (first {MAX_ROWS} of {s.rows} rows)" if s.rows > MAX_ROWS else ""
            lines += [f"{md.text(s.title)}{more}:", "", *_md_table(s.table), ""]
        lines += [f"_{md.text(_caption(s))}_", ""]
    if report.skipped:
        lines += ["### Not run", ""] + [f"- **{md.text(n)}**: {md.text(why)}"
                                        for n, why in report.skipped] + [""]
    return "\n".join(lines), files
