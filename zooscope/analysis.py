"""What an analyzer is, how its options are typed, and how a result is stored and written out.

Analyzers themselves are plugins (``zooscope.plugins.*`` and third-party packages);
they read the zoo only through ``zooscope.zoo.Zoo``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zooscope.errors import ConfigError, PluginError, ZooFileError, ZooscopeError
from zooscope.zoo import Checkpoint, Member, Zoo, canonical_json


@dataclass(frozen=True)
class Option:
    """One typed analyzer option, set with ``--set NAME=VALUE``."""

    name: str
    type: type
    default: Any
    help: str
    choices: tuple[Any, ...] | None = None

    def parse(self, text: str) -> Any:
        try:
            if self.type is bool:
                if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(text)
                value: Any = text.lower() in ("true", "1", "yes")
            elif self.type is list:
                value = [v.strip() for v in text.split(",") if v.strip()]
            else:
                value = self.type(text)
        except ValueError:
            raise ConfigError(f"option {self.name} takes {self.type.__name__}, not {text!r}") from None
        if self.choices is not None and value not in self.choices:
            raise ConfigError(f"option {self.name} = {text!r} is not one of "
                              f"{', '.join(map(str, self.choices))}")
        return value


def option_pattern(name: str, text: str) -> re.Pattern[str]:
    """An option that holds a regular expression, compiled; a bad one is the user's to fix."""
    try:
        return re.compile(text)
    except re.error as exc:
        raise ConfigError(f"option {name} = {text!r} is not a regular expression ({exc})",
                          hint=f"e.g. --set {name}='attention|ffn' or {name}='weight$'") from None


def select_tensors(zoo: Zoo, member: Member | str, name: str, text: str) -> list[str]:
    """The state-dict names the regex option ``name`` selects (searched anywhere in a name);
    an error naming the option where it selects none."""
    pattern = option_pattern(name, text)
    every = zoo.tensor_names(member)
    names = [n for n in every if pattern.search(n)]
    if not names:
        raise ConfigError(f"option {name} = {text!r} matches no tensor of this zoo",
                          hint=f"its {len(every)} tensors are named like "
                          f"{', '.join(every[:3])}" if every else "this zoo stores no tensors")
    return names


def member_labels(members: Sequence[Member]) -> tuple[dict[str, str], str]:
    """Figure labels: each member by the factors that vary among ``members`` (id → label),
    and the factors they share, once, for a title."""
    keys = sorted({k for m in members for k in m.factors})
    varying = [k for k in keys if len({str(m.factors.get(k)) for m in members}) > 1]
    constant = ", ".join(f"{k}={members[0].factors.get(k)}" for k in keys if k not in varying)
    labels = {m.id: ", ".join(f"{k}={m.factors.get(k)}" for k in varying) or m.id
              for m in members}
    return labels, constant


@dataclass
class Selection:
    """Which members and epochs an analysis covers."""

    members: list[Member]
    epochs: list[int] | None  # None: every epoch each member has

    def checkpoints(self, zoo: Zoo) -> list[Checkpoint]:
        return zoo.checkpoints(self.members, self.epochs)


@dataclass
class AnalysisResult:
    """Tables (name → column → values), figures (name → matplotlib figure) and a summary."""

    tables: dict[str, dict[str, Sequence[Any]]]
    summary: str
    figures: dict[str, Any] = field(default_factory=dict)


class Analyzer(ABC):
    """Reads a zoo and returns a result. Registered through ``zooscope_register_analyzers``."""

    name: str
    description: str = ""
    options: tuple[Option, ...] = ()

    @abstractmethod
    def analyze(self, zoo: Zoo, options: dict[str, Any], selection: Selection) -> AnalysisResult:
        """Compute the analysis on the selected members and epochs."""

    def display(self, tables: Mapping[str, Mapping[str, Sequence[Any]]]
                ) -> tuple[str, dict[str, Sequence[Any]]] | None:
        """The table ``zooscope analyze`` prints, as (title, heading → values), or None.

        The console shows what a person reads at 80 columns; CSV and ``--json`` carry
        every table in full. It is computed from the tables alone, so a result reused
        from the zoo prints the same. By default: the ``groups`` table, else the first,
        at its last epoch where it has an ``epoch`` column.
        """
        name = "groups" if tables.get("groups") else next((t for t in tables if tables[t]), None)
        if name is None:
            return None
        cols = tables[name]
        n = len(next(iter(cols.values())))
        keep = list(range(n))
        if "epoch" in cols and n:  # per-epoch tables: the last epoch tells the story
            last = max(cols["epoch"])
            keep = [i for i in keep if cols["epoch"][i] == last]
        return name, {c: [cols[c][i] for i in keep] for c in cols}

    def parse_options(self, sets: Sequence[str]) -> dict[str, Any]:
        known = {o.name: o for o in self.options}
        values = {o.name: o.default for o in self.options}
        for item in sets:
            name, sep, text = item.partition("=")
            if not sep:
                raise ConfigError(f"--set {item!r} is not NAME=VALUE")
            if name not in known:
                import difflib

                close = difflib.get_close_matches(name, list(known), n=1)
                raise ConfigError(
                    f"analyzer {self.name!r} has no option {name!r}",
                    hint=f"did you mean {close[0]!r}?" if close else
                    f"its options: {', '.join(known) or 'none'}")
            values[name] = known[name].parse(text)
        return values


_FILTER = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.+)$")


def parse_members(zoo: Zoo, spec: str | None) -> list[Member]:
    """``learning_rate=1e-3,seed=0`` (factor filters) or ``id1,id2``; None means all."""
    if not spec:
        return zoo.members()
    wanted: dict[str, list[Any]] = {}
    ids: list[str] = []
    for part in spec.split(","):
        part = part.strip()
        m = _FILTER.match(part)
        if m:
            key, raw = m.groups()
            try:
                value: Any = int(raw)
            except ValueError:
                try:
                    value = float(raw)
                except ValueError:
                    value = raw
            wanted.setdefault(key, []).append(value)
        elif part:
            ids.append(part)
    members = zoo.members(**wanted)
    if ids:
        members = [m for m in members if m.id in ids]
        unknown = set(ids) - {m.id for m in zoo.members()}
        if unknown:
            raise ConfigError(f"no member {sorted(unknown)[0]!r} in the zoo",
                              hint="`zooscope zoo ls` lists members")
    if not members:
        raise ConfigError(f"--members {spec!r} selects no member",
                          hint="filter by factors, e.g. --members learning_rate=0.001,seed=0")
    return members


def parse_epochs(spec: str | None) -> list[int] | None:
    if not spec or spec == "all":
        return None
    try:
        return sorted({int(e) for e in spec.split(",")})
    except ValueError:
        raise ConfigError(f"--epochs {spec!r} is not a list of integers, e.g. 0,3") from None


def analysis_key(options: Mapping[str, Any], members: Sequence[Member],
                 epochs: Sequence[int] | None) -> str:
    """Results are keyed by analyzer options and selection; same key, same result."""
    payload = canonical_json({"options": dict(options), "members": sorted(m.id for m in members),
                              "epochs": list(epochs) if epochs is not None else None})
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def figure_png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def write_csv(path: Path, columns: Mapping[str, Sequence[Any]]) -> None:
    names = list(columns)
    length = len(next(iter(columns.values()))) if columns else 0
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(names)
        for i in range(length):
            w.writerow([_cell(columns[n][i]) for n in names])


def _cell(value: Any) -> Any:
    import numpy as np

    if isinstance(value, (float, np.floating)):
        return f"{float(value):.6g}"
    if isinstance(value, np.generic):
        return value.item()
    return value


@dataclass
class StoredAnalysis:
    name: str
    key: str
    options: dict[str, Any]
    summary: str
    tables: dict[str, dict[str, Sequence[Any]]]
    figures: dict[str, bytes]
    reused: bool
    stored: bool
    files: list[Path] = field(default_factory=list)


def run_analysis(zoo_path: Path, analyzer: Analyzer, sets: Sequence[str], members: str | None,
                 epochs: str | None, out_dir: Path | None, force: bool) -> StoredAnalysis:
    """Run (or reuse) an analysis, store it in the zoo and write CSV/PNG files."""
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    from zooscope.store import store_for
    from zooscope.zoo import open_zoo

    options = analyzer.parse_options(sets)
    with open_zoo(zoo_path) as zoo:
        selection = Selection(members=parse_members(zoo, members), epochs=parse_epochs(epochs))
        key = analysis_key(options, selection.members, selection.epochs)
        stored = next((a for a in zoo.analyses() if a["name"] == analyzer.name and a["key"] == key),
                      None)
        if stored is not None and not force:
            tables = zoo.analysis_tables(analyzer.name, key)
            figures = zoo.analysis_figures(analyzer.name, key)
            result = StoredAnalysis(analyzer.name, key, options, stored["summary"], tables,
                                    figures, reused=True, stored=True)
        else:
            if not selection.checkpoints(zoo):
                raise ConfigError("the selection holds no checkpoints",
                                  hint="check --members and --epochs against `zooscope zoo ls`")
            try:
                out = analyzer.analyze(zoo, options, selection)
            except ZooscopeError:
                raise
            except Exception as exc:
                # A broken plugin is named; the zoo is untouched (nothing is written yet).
                raise PluginError(
                    f"analyzer {analyzer.name!r} (from {type(analyzer).__module__}) failed: "
                    f"{type(exc).__name__}: {exc}",
                    hint="report it to the plugin's authors; the zoo was not changed",
                ) from exc
            figures = {name: figure_png(fig) if not isinstance(fig, bytes) else fig
                       for name, fig in out.figures.items()}
            result = StoredAnalysis(analyzer.name, key, options, out.summary,
                                    {k: dict(v) for k, v in out.tables.items()}, figures,
                                    reused=False, stored=False)
    if not result.reused:
        try:
            store_for(zoo_path).write_analysis(
                zoo_path, analyzer.name, key, options, result.summary,
                {t: {c: np.asarray(v) for c, v in cols.items()} for t, cols in result.tables.items()},
                result.figures)
            result.stored = True
        except ZooFileError:
            result.stored = False  # being written by generate: results still go to --out
    target = out_dir or zoo_path.with_name(f"{zoo_path.stem}_analysis") / analyzer.name
    target.mkdir(parents=True, exist_ok=True)
    for tname, columns in result.tables.items():
        path = target / f"{tname}.csv"
        write_csv(path, columns)
        result.files.append(path)
    for fname, png in result.figures.items():
        path = target / f"{fname}.png"
        path.write_bytes(png)
        result.files.append(path)
    return result


def zoo_task(zoo: Zoo) -> tuple[Any, Any, Any]:
    """The generator, config and data of a zoo, rebuilt from the file, to re-evaluate models.

    Data sources are taken as the zoo recorded them (resolved paths or hub ids), and the
    test split must have the fingerprint the zoo stored: the same examples, or an error.
    """
    from zooscope import registry
    from zooscope.config import parse_config

    info = zoo.info
    generator = registry.get_generator(info["generator"])
    cfg = parse_config(zoo.config_text)
    for key in ("source", "test_source"):
        if info["data"].get(key):
            cfg.data[key] = info["data"][key]
    task = generator.prepare(cfg)
    want = info["data"].get("fingerprints", {}).get("test")
    if want and task.info.get("fingerprints", {}).get("test") != want:
        raise ZooFileError("the test data differs from the data this zoo was trained on",
                           hint=f"restore {info['data'].get('source')} as it was")
    return generator, cfg, task
