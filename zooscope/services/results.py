"""Running an analyzer over a zoo: choosing members and epochs, keying the result by
its options and inputs, storing it beside the zoo, and writing its output folder
(tables as CSV, figures as PNG, ``result.json``)."""

from __future__ import annotations

import csv
import datetime as _dt
import hashlib
import io
import json
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zooscope.access import open_zoo, store_for
from zooscope.analysis import Analyzer, Selection, figure_png, plotting
from zooscope.environment import results_wait
from zooscope.errors import ConfigError, PluginError, ZooFileError, ZooscopeError
from zooscope.extras import missing_extra
from zooscope.files import UnsafeFile, read_json_object, remove_leftovers, write_atomic
from zooscope.zoo import Member, Zoo, canonical_json

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
    check_factor_names(zoo, wanted)
    members = zoo.members(**wanted)
    if ids:
        members = [m for m in members if m.id in ids]
        unknown = set(ids) - {m.id for m in zoo.members()}
        if unknown:
            raise ConfigError(f"no member {sorted(unknown)[0]!r} in the zoo",
                              hint="`zooscope zoo ls` lists members")
    if not members:
        raise ConfigError(f"--members {spec!r} selects no member", hint=_values_hint(zoo, wanted))
    return members


def _values_hint(zoo: Zoo, wanted: Mapping[str, Any]) -> str:
    """What the zoo holds of the factors a selection filtered on (or of all of them)."""
    members = zoo.members()
    keys = [k for k in wanted if k != "id"] or sorted({k for m in members for k in m.factors})
    parts = []
    for key in keys[:4]:
        values = sorted((json.loads(v) for v in
                         {canonical_json(m.factors.get(key)) for m in members}),
                        key=lambda v: (0, v, "") if isinstance(v, int | float)
                        and not isinstance(v, bool) else (1, 0, str(v)))
        shown = values[:8]
        more = f", ... ({len(values)} values)" if len(values) > 8 else ""
        parts.append(f"{key} " + ", ".join(
            f"{v:g}" if isinstance(v, float) else str(v) for v in shown) + more)
    return "the zoo's values: " + "; ".join(parts) if parts else \
        "`zooscope zoo ls` lists the members"


def check_factor_names(zoo: Zoo, wanted: Mapping[str, Any]) -> None:
    """A filter on a factor the zoo does not have is a mistake, not an empty selection."""
    import difflib

    known = sorted({k for m in zoo.members() for k in m.factors})
    for key in wanted:
        if key != "id" and key not in known:
            # The tables abbreviate the two most common factors.
            alias = {"lr": "learning_rate", "wd": "weight_decay"}.get(key)
            close = [alias] if alias in known else difflib.get_close_matches(key, known, n=1)
            raise ConfigError(f"the zoo has no factor {key!r}",
                              hint=f"did you mean {close[0]!r}?" if close else
                              f"its factors: {', '.join(known)}")


def parse_epochs(spec: str | None) -> list[int] | None:
    if not spec or spec == "all":
        return None
    try:
        return sorted({int(e) for e in spec.split(",")})
    except ValueError:
        raise ConfigError(f"--epochs {spec!r} is not a list of integers, e.g. 0,3") from None


def analysis_key(options: Mapping[str, Any], members: Sequence[Member],
                 epochs: Sequence[int] | None,
                 inputs: Sequence[Mapping[str, str]] = ()) -> str:
    """Results are keyed by analyzer options, selection and the stored results read;
    same key, same result."""
    content: dict[str, Any] = {"options": dict(options), "members": sorted(m.id for m in members),
                               "epochs": list(epochs) if epochs is not None else None}
    if inputs:  # keys of analyses that read no other result stay as they always were
        content["inputs"] = [dict(i) for i in inputs]
    return hashlib.sha256(canonical_json(content).encode()).hexdigest()[:12]


def resolve_inputs(zoo: Zoo, analyzer: Analyzer) -> dict[str, dict[str, str]]:
    """The stored result each declared input stands for: the newest one of that analyzer.

    It is identified by its key and a digest of its content (its creation time where an
    older zoo recorded no digest), so recomputing an input changes the reader's key.
    """
    chosen: dict[str, dict[str, str]] = {}
    stored = zoo.analyses()
    for name in analyzer.inputs:
        candidates = [a for a in stored if a["name"] == name]
        if candidates:
            latest = max(candidates, key=lambda a: a["created"])
            chosen[name] = {"name": name, "key": latest["key"],
                            "digest": latest.get("digest") or f"created {latest['created']}"}
    return chosen


def write_csv(path: Path, columns: Mapping[str, Sequence[Any]]) -> None:
    """A table as CSV, written whole or not at all (``zooscope.files.write_atomic``)."""
    names = list(columns)
    length = len(next(iter(columns.values()))) if columns else 0
    text = io.StringIO(newline="")
    w = csv.writer(text)
    w.writerow(names)
    for i in range(length):
        w.writerow([_cell(columns[n][i]) for n in names])
    write_atomic(path, text.getvalue())


def _cell(value: Any) -> Any:
    import numpy as np

    if isinstance(value, (float, np.floating)):
        return repr(float(value))  # the shortest text that reads back as the same number
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
    #: The stored results it was computed from (``resolve_inputs``).
    inputs: list[dict[str, str]] = field(default_factory=list)
    #: Why it was not stored, when it was not.
    not_stored: str | None = None
    #: Things the user should know: results beside the zoo that belong to another zoo.
    notes: list[str] = field(default_factory=list)
    #: The results store it was read from or written to.
    where: Path | None = None


RESULT_FILE = "result.json"


def check_out_dir(out: Path, given: bool) -> None:
    """Refuse an output folder that cannot be used, before any work is done."""
    flag = "--out " if given else ""
    if not given:
        for folder in (out, out.parent):
            if folder.is_symlink():
                raise ZooFileError(f"{folder} is a link; results are written only into real "
                                   "folders beside the zoo",
                                   hint="remove the link, or give --out FOLDER")
    if out.exists() and not out.is_dir():
        raise ZooFileError(f"{flag}{out} is a file, not a folder",
                           hint="give a folder for the CSV and PNG files")
    existing = out
    while not existing.exists():
        if given and existing == out.parent:
            raise ZooFileError(f"--out {out}: the folder {existing} does not exist",
                               hint="create it first, or choose another --out")
        existing = existing.parent
    if not existing.is_dir():
        raise ZooFileError(f"{flag}{out}: {existing} is a file, not a folder")
    try:  # what a write would do, also where permissions do not tell (root, read-only mounts)
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".zooscope-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ZooFileError(
            f"{flag}{out} cannot be written ({exc.strerror or exc})",
            hint="choose a writable folder" if given else
            "give --out FOLDER for the CSV and PNG files") from None


def default_out_dir(zoo_path: Path, analyzer: Analyzer, options: Mapping[str, Any],
                    members: str | None, epochs: str | None, key: str) -> Path:
    """``ZOO_analysis/NAME/`` for the default options over the whole zoo, else
    ``ZOO_analysis/NAME-KEY/``: results of different selections never share a folder."""
    from zooscope.access import store_for

    base = store_for(zoo_path).analysis_dir(zoo_path)
    defaults = {o.name: o.default for o in analyzer.options}
    if dict(options) == defaults and not members and (not epochs or epochs == "all"):
        return base / analyzer.name
    return base / f"{analyzer.name}-{key[:8]}"


def _check_out_owner(target: Path, name: str, key: str, given: bool, force: bool) -> list[str]:
    """Refuse a folder holding another result's files (unless ``force``); returns the files
    an earlier result there listed, to remove before writing this one."""
    record = target / RESULT_FILE
    if not target.is_dir():
        return []
    if os.path.lexists(record):
        try:
            earlier = read_json_object(record)
        except UnsafeFile as exc:  # a link, a FIFO or device, huge, invalid or deep JSON
            if not force:
                raise ZooFileError(f"{record} cannot be used: it is {exc}",
                                   hint="remove it (analyze writes it anew), or add --force "
                                        "to replace it") from None
            return []
        except OSError as exc:
            raise ZooFileError(f"{record} cannot be read ({exc.strerror or exc})") from None
        theirs = (str(earlier.get("analyzer", "?")), str(earlier.get("key", "?")))
        files = earlier.get("files", [])
        files = [str(f) for f in files] if isinstance(files, list) else []
        if theirs == (name, key):
            return files
        # Without --out the folder is this analyzer's default one, replaced by a newer
        # result of it (its inputs changed); anything else is another result's.
        if force or (not given and theirs[0] == name):
            return files
        raise ZooFileError(
            f"{target} holds the result of {theirs[0]} (key {theirs[1]}), not {name} (key {key})",
            hint="choose another --out, or add --force to replace its files")
    foreign = sorted(p.name for p in target.iterdir() if p.suffix in (".csv", ".png"))
    if foreign and given and not force:
        raise ZooFileError(f"--out {target} holds files of unknown origin ({foreign[0]})",
                           hint="choose another --out, or add --force to overwrite them")
    return []


def run_analyzer(analyzer: Analyzer, zoo: Zoo, options: dict[str, Any], selection: Selection,
                 hint: str) -> Any:
    """The analyzer's result on the selection: an empty selection, a missing extra and
    a broken plugin each become one clear error (nothing has been written yet)."""
    if not selection.checkpoints(zoo):
        raise ConfigError("the selection holds no checkpoints", hint=hint)
    try:
        return analyzer.analyze(zoo, options, selection)
    except ZooscopeError:
        raise
    except ImportError as exc:
        missing = missing_extra(exc)
        if missing is None:
            raise
        raise missing from None
    except Exception as exc:
        raise PluginError(
            f"analyzer {analyzer.name!r} (from {type(analyzer).__module__}) failed: "
            f"{type(exc).__name__}: {exc}",
            hint="report it to the plugin's authors; the zoo was not changed",
        ) from exc


def run_analysis(zoo_path: Path, analyzer: Analyzer, sets: Sequence[str], members: str | None,
                 epochs: str | None, out_dir: Path | None, force: bool) -> StoredAnalysis:
    """Run (or reuse) an analysis, store it beside the zoo and write CSV/PNG files.

    The zoo is only read. The result goes to its results store (``ZOO_analysis/results.h5``);
    where that cannot be written the result is still returned and written out, with
    ``not_stored`` saying why.
    """
    import numpy as np

    if plotting():
        import matplotlib

        matplotlib.use("Agg")
    options = analyzer.parse_options(sets)
    epoch_list = parse_epochs(epochs)
    results_wait()  # a bad ZOOSCOPE_RESULTS_WAIT is an error now, not after the analysis
    given = out_dir is not None
    if out_dir is not None:
        check_out_dir(out_dir, given=True)
    with open_zoo(zoo_path) as zoo:
        selection = Selection(members=parse_members(zoo, members), epochs=epoch_list)
        selection.inputs = resolve_inputs(zoo, analyzer)
        inputs = list(selection.inputs.values())
        key = analysis_key(options, selection.members, selection.epochs, inputs)
        target = out_dir or default_out_dir(zoo_path, analyzer, options, members, epochs, key)
        if out_dir is None:
            check_out_dir(target, given=False)
        earlier_files = _check_out_owner(target, analyzer.name, key, given, force)
        notes = zoo.results_notes()
        stored = next((a for a in zoo.analyses() if a["name"] == analyzer.name and a["key"] == key),
                      None)
        if stored is not None and not force:
            tables = zoo.analysis_tables(analyzer.name, key)
            figures = zoo.analysis_figures(analyzer.name, key)
            result = StoredAnalysis(analyzer.name, key, options, stored["summary"], tables,
                                    figures, reused=True, stored=True,
                                    inputs=list(stored.get("inputs") or inputs), notes=notes)
        else:
            out = run_analyzer(analyzer, zoo, options, selection,
                               "check --members and --epochs against `zooscope zoo ls`")
            figures = {name: figure_png(fig) if not isinstance(fig, bytes) else fig
                       for name, fig in out.figures.items()}
            if not plotting():
                notes = [*notes, "no figures: drawing them needs matplotlib "
                                 "(pip install 'zooscope[analysis]')"]
            result = StoredAnalysis(analyzer.name, key, options, out.summary,
                                    {k: dict(v) for k, v in out.tables.items()}, figures,
                                    reused=False, stored=False, inputs=inputs, notes=notes)
    store = store_for(zoo_path)
    inside = result.reused and stored is not None and stored.get("where") == "zoo"
    result.where = zoo_path if inside else store.results_path(zoo_path)  # older zoos: inside
    if not result.reused and store.being_written(zoo_path):
        # Its checkpoints are still arriving: the same key would soon mean more of them.
        result.not_stored = "the zoo is still being written; run it again once it is complete"
    elif not result.reused:
        try:
            written = store.write_analysis(
                zoo_path, analyzer.name, key, options, result.summary,
                {t: {c: np.asarray(v) for c, v in cols.items()} for t, cols in result.tables.items()},
                result.figures, inputs)
            result.stored = True
            # Said once: what happened to results that were not used says more than that
            # they were not used.
            result.notes = written or result.notes
        except ZooFileError as exc:
            result.not_stored = exc.message + (f"; {exc.hint}" if exc.hint else "")
    _write_files(result, target, earlier_files, zoo_path, selection)
    return result


def _write_files(result: StoredAnalysis, target: Path, earlier_files: Sequence[str],
                 zoo_path: Path, selection: Selection) -> None:
    """The CSV and PNG files and ``result.json`` saying which result they are."""
    try:
        target.mkdir(parents=True, exist_ok=True)
        remove_leftovers(target)
        for name in earlier_files:  # an earlier result's files that this one does not replace
            if SAFE_FILE.match(name):
                (target / name).unlink(missing_ok=True)
        for tname, columns in result.tables.items():
            path = target / f"{tname}.csv"
            write_csv(path, columns)
            result.files.append(path)
        for fname, png in result.figures.items():
            path = target / f"{fname}.png"
            write_atomic(path, png)
            result.files.append(path)
        record = {
            "analyzer": result.name, "key": result.key, "options": result.options,
            "members": sorted(m.id for m in selection.members),
            "epochs": selection.epochs if selection.epochs is not None else "all",
            "inputs": result.inputs, "zoo": zoo_path.name,
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "stored": result.stored, "files": [p.name for p in result.files],
        }
        write_atomic(target / RESULT_FILE, json.dumps(record, indent=1, default=_plain) + "\n")
    except OSError as exc:
        raise ZooFileError(f"cannot write the result's files to {target} "
                           f"({exc.strerror or exc})") from None


SAFE_FILE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,254}\.(csv|png)\Z")


def _plain(value: Any) -> Any:
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    return str(value)
