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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import filelock
import h5py
import numpy as np

from zooscope.errors import ConfigError, ZooFileError
from zooscope.store import lock_path
from zooscope.version import __version__
from zooscope.zoo import canonical_json, check_safe_name

RESULTS_FORMAT = 1
RESULTS_NAME = "results.h5"
#: How long storing a result waits for another analysis that is storing one (seconds).
LOCK_WAIT = 60.0
_STR = h5py.string_dtype()


def results_path(zoo_path: Path) -> Path:
    """Where the results of the zoo at ``zoo_path`` are stored."""
    return zoo_path.with_name(f"{zoo_path.stem}_analysis") / RESULTS_NAME


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


def _links_out(f: h5py.File) -> bool:
    """Whether the file holds soft or external links (a results store never does)."""
    found: list[bytes] = []

    def visit(name: bytes, info: h5py.h5l.LinkInfo) -> None:
        if info.type != h5py.h5l.TYPE_HARD:
            found.append(name)

    f.id.links.visit(visit, info=True)
    return bool(found)


def read_entries(root: h5py.Group, where: str) -> list[dict[str, Any]]:
    """The analyses under ``root/analyses``: name, key, options, summary, created, inputs, digest."""
    out: list[dict[str, Any]] = []
    if "analyses" not in root:
        return out
    for name, group in root["analyses"].items():
        if not isinstance(group, h5py.Group):
            raise ZooFileError(f"{root.file.filename} is damaged: {group.name} is not a group")
        for key, g in group.items():
            if not isinstance(g, h5py.Group):
                raise ZooFileError(f"{root.file.filename} is damaged: {g.name} is not a group")
            if key.endswith(".writing"):
                continue  # an older zoo's half-written result
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
        if not store.path.exists():
            return store
        try:
            with h5py.File(store.path, "r", locking=False) as f:
                theirs = _text(f, "zoo_identity")
                if theirs != identity:
                    store.note = (f"the results in {store.path} belong to an earlier zoo of this "
                                  f"name (created {_text(f, 'zoo_created', '?')}); they are not used")
                    return store
                if _links_out(f):
                    store.note = (f"{store.path} links outside itself; its results are not "
                                  "used")
                    return store
                store.entries = read_entries(f, "results")
        except OSError as exc:
            store.note = f"{store.path} cannot be read ({str(exc).split('(')[0].strip()}); not used"
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
        with contextlib.suppress(OSError):  # make the rename itself durable
            fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        return notes
    finally:
        lock.release()


def _lock_wait() -> float:
    text = os.environ.get("ZOOSCOPE_RESULTS_WAIT", "")
    if not text:
        return LOCK_WAIT
    try:
        wait = float(text)
    except ValueError:
        wait = -1.0
    if not wait >= 0:  # also NaN
        raise ConfigError(f"ZOOSCOPE_RESULTS_WAIT={text!r} is not a number of seconds",
                          hint=f"unset it to wait {LOCK_WAIT:g} s")
    return wait


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
                with h5py.File(path, "r", locking=False) as old:
                    if _text(old, "zoo_identity") != identity:
                        notes.append(f"replaced the results of an earlier zoo of this name "
                                     f"(created {_text(old, 'zoo_created', '?')}) in {path}")
                    elif _links_out(old):
                        notes.append(f"replaced {path}, which linked outside itself")
                    elif "analyses" in old:
                        for aname, group in old["analyses"].items():
                            for akey in group:
                                if (aname, akey) != (name, key):
                                    dst = analyses.require_group(aname)
                                    old.copy(group[akey], dst, name=akey)
            except OSError as exc:
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
