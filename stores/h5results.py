"""The results store: analysis results of one zoo in an HDF5 file beside it, never inside it.

``ZOO_analysis/results.h5`` holds the layout older zoos kept in their ``/analyses`` group;
a result is written to a temporary file and moved into place, so a kill at any moment
leaves every result fully stored or absent and the zoo file untouched. Layout: docs/format.md.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import filelock
import h5py
import numpy as np

from zooscope.errors import ZooFileError
from zooscope.files import is_regular, sync_folder
from zooscope.store import analysis_folder, lock_path
from zooscope.version import __version__
from zooscope.zoo import canonical_json, check_safe_name

RESULTS_FORMAT = 1
RESULTS_NAME = "results.h5"
#: How long storing a result waits for another analysis that is storing one (seconds).
LOCK_WAIT = 60.0
_STR = h5py.string_dtype()

#: The folder inside a zoo of parts (``NAME.zoo/analysis``) for its analyses.
ANALYSIS = "analysis"

def results_path(zoo_path: Path) -> Path:
    """Where the results of the zoo at ``zoo_path`` are stored."""
    if zoo_path.is_dir():  # a zoo of parts keeps its results inside its folder
        return zoo_path / ANALYSIS / RESULTS_NAME
    return analysis_folder(zoo_path) / RESULTS_NAME


def zoo_identity(f: h5py.File) -> str:
    """What tells this zoo from another written under the same file name: a digest of its
    name, creation time and config text, which no later write to the zoo changes."""
    parts = []
    for attr in ("name", "created", "config"):
        value = f.attrs.get(attr, "")
        parts.append(value.decode() if isinstance(value, bytes) else str(value))
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]


def _text(obj: h5py.HLObject, name: str, default: str = "") -> str:
    value = obj.attrs.get(name, default)
    return value.decode() if isinstance(value, bytes) else str(value)


def _json(obj: h5py.HLObject, name: str, default: Any) -> Any:
    try:
        return json.loads(_text(obj, name)) if name in obj.attrs else default
    except json.JSONDecodeError:
        return default


def _results(root: h5py.Group, prefix: str) -> Iterator[tuple[str, str, h5py.Group]]:
    """Each result under ``root/analyses`` as (analyzer, key, group), skipping an older
    zoo's half-written ones; anything there that is not a group is an error that starts
    with ``prefix``."""
    analyses = root.get("analyses")
    if analyses is None:
        return
    if not isinstance(analyses, h5py.Group):
        raise ZooFileError(f"{prefix}/analyses is not a group")
    for name, group in analyses.items():
        if not isinstance(group, h5py.Group):
            raise ZooFileError(f"{prefix}{group.name} is not a group")
        for key, g in group.items():
            if not isinstance(g, h5py.Group):
                raise ZooFileError(f"{prefix}{g.name} is not a group")
            if not key.endswith(".writing"):
                yield name, key, g


def check_store(f: h5py.File, path: Path) -> None:
    """Everything a results store is read for, checked before any of it is used: no links,
    virtual or external datasets, the layout docs/format.md gives, and every dataset's
    declared size held by the file. A ``ZooFileError`` says what is wrong."""
    from zooscope.stores.h5checks import check_safe_file

    check_safe_file(f, path)
    for name, key, g in _results(f, f"{path}: "):
        check_safe_name(name, "analysis")
        check_safe_name(key, "analysis key")
        for attr, kind in (("options", dict), ("inputs", list)):
            if attr in g.attrs and not isinstance(_json(g, attr, None), kind):
                raise ZooFileError(f"{path}: {g.name}:{attr} is not a JSON "
                                   f"{'object' if kind is dict else 'list'}")
        for attr in ("summary", "created", "digest"):
            if attr in g.attrs and not isinstance(g.attrs[attr], (str, bytes)):
                raise ZooFileError(f"{path}: {g.name}:{attr} is not text")
        _check_tables(g, path)
        _check_figures(g, path)


def _check_tables(g: h5py.Group, path: Path) -> None:
    from zooscope.stores.h5checks import check_backed

    tables = g.get("tables")
    if tables is None:
        return
    if not isinstance(tables, h5py.Group):
        raise ZooFileError(f"{path}: {tables.name} is not a group")
    for tname, tgroup in tables.items():
        check_safe_name(tname, "table")
        columns = _json(tgroup, "columns", None) if isinstance(tgroup, h5py.Group) else None
        if not isinstance(columns, list) or \
                not all(isinstance(c, str) and c in tgroup for c in columns):
            raise ZooFileError(f"{path}: {tgroup.name} is not a table (a group whose columns "
                               "attribute lists its datasets)")
        for col in columns:
            ds = tgroup[col]
            if not isinstance(ds, h5py.Dataset) or ds.ndim < 1 or ds.dtype.kind not in "iufbO":
                raise ZooFileError(f"{path}: {tgroup.name}/{col} is not a column of numbers "
                                   "or text")
            check_backed(ds, ds.shape[0], path)


def _check_figures(g: h5py.Group, path: Path) -> None:
    from zooscope.stores.h5checks import check_backed

    figures = g.get("figures")
    if figures is None:
        return
    if not isinstance(figures, h5py.Group):
        raise ZooFileError(f"{path}: {figures.name} is not a group")
    for fname, ds in figures.items():
        check_safe_name(fname, "figure")
        if not isinstance(ds, h5py.Dataset) or ds.ndim != 1 or ds.dtype != np.uint8:
            raise ZooFileError(f"{path}: {ds.name} is not a figure (bytes of a PNG)")
        check_backed(ds, ds.shape[0], path)


def read_entries(root: h5py.Group, where: str) -> list[dict[str, Any]]:
    """The analyses under ``root/analyses``: name, key, options, summary, created, inputs, digest."""
    out: list[dict[str, Any]] = []
    for name, key, g in _results(root, f"{root.file.filename} is damaged: "):
        out.append({
            "name": name, "key": key, "options": _json(g, "options", {}),
            "summary": _text(g, "summary"), "created": _text(g, "created"),
            "inputs": _json(g, "inputs", []), "digest": _text(g, "digest"), "where": where,
        })
    return out


def read_tables(g: h5py.Group) -> dict[str, dict[str, np.ndarray]]:
    tables: dict[str, dict[str, np.ndarray]] = {}
    if "tables" not in g:
        return tables
    for tname, tgroup in g["tables"].items():
        cols = {}
        for col in _json(tgroup, "columns", []):
            ds = tgroup[col]
            cols[col] = ds.asstr()[()] if ds.dtype.kind == "O" else ds[()]
        tables[tname] = cols
    return tables


def read_figures(g: h5py.Group) -> dict[str, bytes]:
    if "figures" not in g:
        return {}
    return {n: bytes(ds[()].tobytes()) for n, ds in g["figures"].items()}


@dataclass
class ResultsStore:
    """The results store beside one zoo, as read now: its results, or why none are served."""

    path: Path
    identity: str
    entries: list[dict[str, Any]] = field(default_factory=list)
    #: Why results beside the zoo are not served (another zoo's, damaged), else None.
    note: str | None = None

    @classmethod
    def load(cls, zoo_path: Path, identity: str) -> ResultsStore:
        store = cls(results_path(zoo_path), identity)
        _clear_leftovers(store.path)
        if not store.path.exists():
            return store
        if not is_regular(store.path):
            store.note = (f"{store.path} is not a regular file; its results are not used "
                          "(remove it; the next stored result then takes its place)")
            return store
        try:
            with h5py.File(store.path, "r", locking=False) as f:
                theirs = _text(f, "zoo_identity")
                if theirs != identity:
                    store.note = (f"the results in {store.path} belong to an earlier zoo of this "
                                  f"name (created {_text(f, 'zoo_created', '?')}); they are not used")
                    return store
                check_store(f, store.path)
                store.entries = read_entries(f, "results")
        except ZooFileError as exc:
            reason = _reason(exc, store.path)
            store.note = (f"{store.path} cannot be used ({reason}); its results are not "
                          "used, and the next stored result replaces it")
        except (OSError, KeyError, ValueError, TypeError, RuntimeError) as exc:
            store.note = (f"{store.path} cannot be read ({str(exc).split('(')[0].strip()}); its "
                          "results are not used, and the next stored result replaces it")
        return store

    def group(self, f: h5py.File, name: str, key: str) -> h5py.Group | None:
        return f.get(f"analyses/{name}/{key}")

    def tables(self, name: str, key: str) -> dict[str, dict[str, np.ndarray]] | None:
        if not any(e["name"] == name and e["key"] == key for e in self.entries):
            return None
        with h5py.File(self.path, "r", locking=False) as f:
            g = self.group(f, name, key)
            return None if g is None else read_tables(g)

    def figures(self, name: str, key: str) -> dict[str, bytes] | None:
        if not any(e["name"] == name and e["key"] == key for e in self.entries):
            return None
        with h5py.File(self.path, "r", locking=False) as f:
            g = self.group(f, name, key)
            return None if g is None else read_figures(g)


def content_digest(tables: Mapping[str, Mapping[str, np.ndarray]],
                   figures: Mapping[str, bytes]) -> str:
    """A digest of a result's tables and figures, which analyses reading it key on."""
    h = hashlib.sha256()
    for tname in sorted(tables):
        for col in sorted(tables[tname]):
            arr = np.asarray(tables[tname][col])
            h.update(f"{tname}/{col}:{arr.dtype.str}:{arr.shape}".encode())
            h.update(canonical_json(arr.astype(str).tolist()).encode() if arr.dtype.kind in "OUS"
                     else np.ascontiguousarray(arr).tobytes())
    for fname in sorted(figures):
        h.update(fname.encode() + hashlib.sha256(figures[fname]).digest())
    return h.hexdigest()[:16]


def write_result(
    zoo_path: Path, identity: str, zoo_created: str, name: str, key: str,
    options: Mapping[str, Any], summary: str, tables: Mapping[str, Mapping[str, np.ndarray]],
    figures: Mapping[str, bytes], inputs: Sequence[Mapping[str, Any]] = (),
    wait: float | None = None,
) -> list[str]:
    """Store one result beside the zoo, replacing one of the same name and key.

    The new store is written whole to a temporary file, synced and moved over the old
    one, under a lock other analyses wait for (``wait`` seconds; by default
    ``ZOOSCOPE_RESULTS_WAIT`` or ``LOCK_WAIT``). Returns notes for the user (results
    of an earlier zoo replaced).
    """
    check_safe_name(name, "analysis")
    check_safe_name(key, "analysis key")
    path = results_path(zoo_path)
    try:
        path.parent.mkdir(exist_ok=True)
    except OSError as exc:
        raise ZooFileError(f"{path.parent} cannot be created ({exc.strerror or exc})") from None
    lock = filelock.FileLock(lock_path(path), fallback_to_soft=False)
    wait = _lock_wait() if wait is None else wait
    try:
        lock.acquire(timeout=wait)
    except filelock.Timeout:
        raise ZooFileError(
            f"another analysis kept {path} locked for {wait:g} s",
            hint="run the same command again once it has finished") from None
    except OSError as exc:
        raise ZooFileError(f"{path.parent} cannot be locked ({exc.strerror or exc})") from None
    try:
        for stale in path.parent.glob(f".{path.name}.*.tmp"):
            stale.unlink(missing_ok=True)  # a killed writer's: the lock says none is live
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            notes = _write_store(tmp, path, identity, zoo_created, name, key, options, summary,
                                 tables, figures, inputs)
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except OSError as exc:
            raise ZooFileError(f"{path} cannot be written ({exc.strerror or exc})") from None
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()
        sync_folder(path.parent)  # make the rename itself durable
        return notes
    finally:
        lock.release()


def _clear_leftovers(path: Path) -> None:
    """Remove the temporary stores of killed saves (each as large as the store) when
    no save is running: readers clear them too, not only the next save."""
    try:
        stale = [p for p in path.parent.glob(f".{path.name}.*.tmp") if is_regular(p)]
    except OSError:
        return
    if not stale:
        return
    lock = filelock.FileLock(lock_path(path), fallback_to_soft=False)
    try:
        lock.acquire(timeout=0)
    except (filelock.Timeout, OSError):
        return  # a save is running (its file is no leftover), or the folder is read-only
    try:
        for leftover in stale:
            with contextlib.suppress(OSError):
                leftover.unlink()
    finally:
        lock.release()


def _reason(exc: ZooFileError, path: Path) -> str:
    """A check's message without the store's path, for a note that names it already."""
    text = exc.message.removeprefix(f"{path}: ").removeprefix(f"{path} ")
    return text.removeprefix("is unsafe: ").removeprefix("is damaged: ")


def _lock_wait() -> float:
    from zooscope.environment import results_wait

    return results_wait()


def _write_store(
    tmp: Path, path: Path, identity: str, zoo_created: str, name: str, key: str,
    options: Mapping[str, Any], summary: str, tables: Mapping[str, Mapping[str, np.ndarray]],
    figures: Mapping[str, bytes], inputs: Sequence[Mapping[str, Any]],
) -> list[str]:
    notes: list[str] = []
    with h5py.File(tmp, "w") as f:
        f.attrs["zooscope_results"] = RESULTS_FORMAT
        f.attrs["zoo_identity"] = identity
        f.attrs["zoo_created"] = zoo_created
        analyses = f.create_group("analyses")
        if path.exists():
            try:
                if not is_regular(path):
                    raise ZooFileError(f"{path}: not a regular file")
                with h5py.File(path, "r", locking=False) as old:
                    if _text(old, "zoo_identity") != identity:
                        notes.append(f"replaced the results of an earlier zoo of this name "
                                     f"(created {_text(old, 'zoo_created', '?')}) in {path}")
                    else:
                        check_store(old, path)  # nothing unchecked is carried over
                    if _text(old, "zoo_identity") == identity and "analyses" in old:
                        for aname, group in old["analyses"].items():
                            for akey in group:
                                if (aname, akey) != (name, key):
                                    dst = analyses.require_group(aname)
                                    old.copy(group[akey], dst, name=akey)
            except ZooFileError as exc:
                notes.append(f"replaced {path}, which could not be used "
                             f"({_reason(exc, path)})")
            except (OSError, KeyError, ValueError, TypeError, RuntimeError) as exc:
                notes.append(f"replaced {path}, which could not be read "
                             f"({str(exc).split('(')[0].strip()})")
        g = analyses.require_group(name).create_group(key)
        g.attrs["options"] = canonical_json(dict(options))
        g.attrs["summary"] = summary
        g.attrs["created"] = _dt.datetime.now(_dt.UTC).isoformat(timespec="microseconds")
        g.attrs["zooscope_version"] = __version__
        g.attrs["inputs"] = canonical_json([dict(i) for i in inputs])
        g.attrs["digest"] = content_digest(tables, figures)
        tg = g.create_group("tables")
        for tname, columns in tables.items():
            check_safe_name(tname, "table")
            t = tg.create_group(tname)
            t.attrs["columns"] = json.dumps(list(columns))
            for col, values in columns.items():
                arr = np.asarray(values)
                if arr.dtype.kind in "OUS":
                    t.create_dataset(col, data=arr.astype(str).astype(object), dtype=_STR)
                else:
                    t.create_dataset(col, data=arr)
        fg = g.create_group("figures")
        for fname, png in figures.items():
            check_safe_name(fname, "figure")
            fg.create_dataset(fname, data=np.frombuffer(png, dtype=np.uint8))
    return notes


__all__ = ["RESULTS_NAME", "ResultsStore", "content_digest", "results_path", "write_result",
           "zoo_identity"]
