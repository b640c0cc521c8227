"""Reading a zoo: ``HDF5Zoo``, the reader interface over format v1, and the identity
an analysis result is stored under."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from zooscope.errors import NetworkError, ZooFileError, ZooscopeError
from zooscope.record import TestSet, ZooRecord
from zooscope.store import StoredZoo
from zooscope.stores.h5checks import (
    check_backed,
    check_dataset,
    check_format,
    check_safe_dataset,
    check_safe_file,
    damage,
    get_node,
)
from zooscope.stores.h5layout import (
    ALLOWED_KINDS,
    CARD,
    COMPRESSIONS,
    INDEX_FIELDS,
    MAX_CARD,
    MAX_MODEL_FILE,
    STORAGE_DTYPES,
    STORED_AS,
    architecture_layout,
    attr_text,
    from_storage,
    json_attr,
    row_digest,
    to_torch,
)
from zooscope.stores.h5lock import open_for_reading
from zooscope.stores.h5results import (
    ResultsStore,
    read_entries,
    write_result,
    zoo_identity,
)
from zooscope.zoo import (
    STATUS_LABELS,
    Architecture,
    Checkpoint,
    Member,
    check_safe_name,
    select_checkpoints,
)


def _reads(method: Any) -> Any:
    """Turn what a damaged file raises deep inside h5py (a failed checksum, a missing
    object, a value of the wrong type) into one ``ZooFileError`` naming the zoo."""
    import functools

    @functools.wraps(method)
    def wrapper(self: HDF5Zoo, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except ZooFileError:
            raise
        except (OSError, KeyError, ValueError, TypeError, IndexError, RuntimeError) as exc:
            raise damage(self.path, self.f, exc) from None
    return wrapper


class _Architectures:
    """Each architecture's (tensor names, shapes), its tables checked on first use."""

    def __init__(self, check: Any, layouts: list[tuple[list[str], dict[str, tuple[int, ...]]]]) -> None:
        self._check, self._layouts = check, layouts
        self._checked: set[int] = set()

    def __len__(self) -> int:
        return len(self._layouts)

    def declared(self, a: int) -> tuple[list[str], dict[str, tuple[int, ...]]]:
        """The layout alone (checked at opening), without checking the tables."""
        return self._layouts[a]

    def __getitem__(self, a: int) -> tuple[list[str], dict[str, tuple[int, ...]]]:
        if a not in self._checked:
            self._check(a, self._layouts[a][0])
            self._checked.add(a)
        return self._layouts[a]


class HDF5Zoo(StoredZoo):
    """A read-only view of the committed state of a zoo file.

    Opening checks what listing a zoo reads: the file's safety (no links out, no virtual
    or external datasets outside the tensors), the members, the checkpoint index and
    metrics, and each architecture's declared layout, with every declared size backed by
    the file. The rest of the structure docs/format.md promises is checked before it is
    first read: an architecture's rows, digests and model files, each tensor dataset,
    the predictions and test data (``check_structure`` checks them all).
    """

    def __init__(self, path: Path, handle: h5py.File | None = None, source: Any = None) -> None:
        self.path = path
        #: Where the results store sits: beside this file, or beside the folder of parts.
        self.results_base = path
        self.f = handle if handle is not None else open_for_reading(path)
        #: The file object a remote zoo is read through (closed with the zoo).
        self._source = source
        try:
            self._load()
        except ZooscopeError:
            self.close()
            raise
        except (KeyError, ValueError, TypeError, OSError, IndexError, RuntimeError) as exc:
            error = damage(path, self.f, exc)
            self.close()
            raise error from None

    def _load(self) -> None:
        f, path = self.f, self.path
        self.format_version = check_format(f, path)
        check_safe_file(f, path, tensors=False)
        for name in ("storage_dtype", "compression"):
            value = attr_text(f, name, "float32" if name == "storage_dtype" else "none")
            if value not in (STORAGE_DTYPES if name == "storage_dtype" else COMPRESSIONS):
                raise ZooFileError(f"{path} is damaged: unknown {name} {value!r}")
        members = f["members"]
        id_ds = get_node(members, "id", path)
        check_dataset(id_ds, path, "T", 1)
        m = id_ds.shape[0]
        check_dataset(id_ds, path, "T", 1, rows=m)
        kinds = {"factors": "T", "lineage": "T", "status": "iu", "architecture": "iu"}
        for name, kind in kinds.items():
            ds = get_node(members, name, path)
            check_dataset(ds, path, kind, 1)
            if ds.shape[0] != m:
                raise ZooFileError(f"{path} is damaged: {ds.name} has {ds.shape[0]} rows, "
                                   f"/members/id {m}")
            check_backed(ds, m, path)
        ids = list(id_ds.asstr()[()])
        for mid in ids:
            check_safe_name(mid, "member")
        if len(set(ids)) != len(ids):
            raise ZooFileError(f"{path} is damaged: /members/id repeats a member id")
        factors = [self._json_row(v, "/members/factors", dict) for v in
                   members["factors"].asstr()[()]]
        lineage = [self._json_row(v, "/members/lineage", (dict, type(None))) for v in
                   members["lineage"].asstr()[()]]
        status = self._fresh("members/status")[()]
        bad_status = [int(v) for v in status if int(v) not in STATUS_LABELS]
        if bad_status:
            raise ZooFileError(f"{path} is damaged: /members/status holds {bad_status[0]}, "
                               "not a status code 0-3")
        self._members = [
            Member(id=mid, factors=fac, lineage=lin, status=STATUS_LABELS[int(s)])
            for mid, fac, lin, s in zip(ids, factors, lineage, status, strict=True)
        ]
        self._by_id = {m.id: i for i, m in enumerate(self._members)}

        # Architectures: a0, a1, ... each with a layout (checked here: names and shapes are
        # what hostile files play with), a rows table, digests and model files (checked
        # when first used: a zoo of many backbones opens at the cost of one).
        keys = list(f["architectures"])
        expected = [f"a{k}" for k in range(len(keys))]
        if sorted(keys) != sorted(expected):
            odd = sorted(set(keys) - set(expected))[:1] or keys[:1]
            raise ZooFileError(f"{path} is damaged: /architectures holds {odd[0]!r}; groups "
                               "are named a0, a1, ... in turn")
        self._arch_keys = expected
        declared = [architecture_layout(get_node(f["architectures"], key, path, dataset=False))
                    for key in expected]
        self._layouts = _Architectures(self._architecture, declared)
        arch_of_member = self._fresh("members/architecture")[()]
        if len(arch_of_member) and (arch_of_member.min() < -1
                                    or arch_of_member.max() >= len(self._arch_keys)):
            bad = next(int(a) for a in arch_of_member if not -1 <= a < len(self._arch_keys))
            raise ZooFileError(f"{path} is damaged: /members/architecture names architecture "
                               f"{bad} of {len(self._arch_keys)}")
        self._member_arch = arch_of_member

        # The index first: it decides what is committed. Everything read after it is
        # refreshed (SWMR readers otherwise keep extents cached from opening time),
        # so it holds at least what the index points at.
        checkpoints = f["checkpoints"]
        index_ds = get_node(checkpoints, "index", path)
        if index_ds.dtype.names is None or any(
                name not in index_ds.dtype.names or index_ds.dtype[name].kind not in kinds
                for name, kinds in INDEX_FIELDS.items()):
            raise ZooFileError(f"{path} is damaged: /checkpoints/index lacks the fields "
                               f"{', '.join(INDEX_FIELDS)}")
        if index_ds.ndim != 1:
            raise ZooFileError(f"{path} is damaged: /checkpoints/index is not one-dimensional")
        if self.f.swmr_mode:
            index_ds.refresh()
        n = index_ds.shape[0]
        check_backed(index_ds, n, path)
        self._index = index_ds[()]
        metrics_ds = get_node(checkpoints, "metrics", path)
        self.metric_columns = json_attr(metrics_ds, "columns", kind=list)
        if not all(isinstance(c, str) for c in self.metric_columns):
            raise ZooFileError(f"{path} is damaged: /checkpoints/metrics:columns is not a list "
                               "of names")
        if self.f.swmr_mode:
            metrics_ds.refresh()
        if metrics_ds.ndim == 2 and metrics_ds.shape[0] < n:
            raise ZooFileError(f"{path} is damaged: fewer metric rows than checkpoints "
                               f"(/checkpoints/metrics has {metrics_ds.shape[0]}, the index {n})")
        check_dataset(metrics_ds, path, "f", 2, rows=n, width=(len(self.metric_columns),))
        metrics = metrics_ds[:n]
        self._check_index(n)
        self._checkpoints = []
        for row, values in zip(self._index, metrics, strict=True):
            self._checkpoints.append(
                Checkpoint(
                    member=self._members[int(row["member"])].id, epoch=int(row["epoch"]),
                    step=int(row["step"]), wall_time=float(row["wall_time"]),
                    metrics={k: float(v) for k, v in zip(self.metric_columns, values, strict=True)
                             if not np.isnan(v)},
                )
            )
        self._position = {(c.member, c.epoch): i for i, c in enumerate(self._checkpoints)}

    def _json_row(self, text: str, where: str, kind: type | tuple[type, ...]) -> Any:
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            raise ZooFileError(f"{self.path} is damaged: {where} holds {text[:40]!r}, not "
                               "JSON") from None
        if not isinstance(value, kind):
            raise ZooFileError(f"{self.path} is damaged: {where} holds JSON of the wrong "
                               f"type ({type(value).__name__})")
        return value

    def _check_index(self, n: int) -> None:
        """Every committed index row points inside the member list, the architectures and
        the architecture's rows table; no checkpoint is committed twice."""
        index, path = self._index, self.path
        where = f"{path} is damaged: /checkpoints/index"
        if not n:
            self._committed = [0] * len(self._arch_keys)
            return
        member, arch = index["member"].astype(np.int64), index["architecture"].astype(np.int64)
        if member.min() < 0 or member.max() >= len(self._members):
            bad = int(member[(member < 0) | (member >= len(self._members))][0])
            raise ZooFileError(f"{where} names member {bad} of {len(self._members)}")
        if arch.min() < 0 or arch.max() >= len(self._arch_keys):
            bad = int(arch[(arch < 0) | (arch >= len(self._arch_keys))][0])
            raise ZooFileError(f"{where} names architecture {bad} of {len(self._arch_keys)}")
        if (index["epoch"].astype(np.int64) < 0).any():
            raise ZooFileError(f"{where} holds a negative epoch")
        if (self._member_arch[member] != arch).any():
            k = int(np.flatnonzero(self._member_arch[member] != arch)[0])
            raise ZooFileError(f"{where} row {k} names architecture {int(arch[k])}, its member "
                               f"architecture {int(self._member_arch[member[k]])}")
        pairs = set(zip(member.tolist(), index["epoch"].tolist(), strict=True))
        if len(pairs) != n:
            raise ZooFileError(f"{where} commits a checkpoint twice")
        self._committed = []
        for a in range(len(self._arch_keys)):
            mine = index["arch_row"][arch == a].astype(np.int64)
            if len(mine) and mine.min() < 0:
                raise ZooFileError(f"{where} points at row {int(mine.min())} of "
                                   f"/architectures/{self._arch_keys[a]}/rows")
            self._committed.append(int(mine.max()) + 1 if len(mine) else 0)

    def _architecture(self, a: int, names: list[str]) -> None:
        """Check architecture ``a``'s group beyond its layout: the rows and digests tables
        against the index, and its model files."""
        f, path, key = self.f, self.path, self._arch_keys[a]
        try:
            group = get_node(f["architectures"], key, path, dataset=False)
            get_node(group, "tensors", path, dataset=False)
            used = self._committed[a]
            for name in ("rows", "digests"):
                ds = get_node(group, name, path)
                check_dataset(ds, path, "iu" if name == "rows" else "S", 2, width=(len(names),))
                if self.f.swmr_mode:
                    ds.refresh()
                if ds.shape[0] < used:
                    raise ZooFileError(f"{path} is damaged: /checkpoints/index points at row "
                                       f"{used - 1} of {ds.name}, which has {ds.shape[0]} rows")
                check_backed(ds, used, path)
            files = get_node(group, "files", path, dataset=False)
            for fname, ds in files.items():
                check_safe_name(fname, "file")
                if not isinstance(ds, h5py.Dataset) or ds.dtype != np.uint8 or ds.ndim != 1:
                    raise ZooFileError(f"{path} is damaged: {group.name}/files/{fname} is not "
                                       "a file (a 1-D uint8 dataset)")
                if ds.shape[0] > MAX_MODEL_FILE:
                    raise ZooFileError(f"{path} is damaged: {ds.name} declares "
                                       f"{ds.shape[0]:,} bytes, more than a model file holds")
                check_backed(ds, ds.shape[0], path)
        except ZooFileError:
            raise
        except (KeyError, ValueError, TypeError, OSError, IndexError, RuntimeError) as exc:
            raise damage(path, f, exc) from None

    def _check_test_data(self) -> None:
        """Predictions and the test split's data agree with each other and the index;
        checked once, before any of them is read."""
        if self.__dict__.get("_test_data_checked"):
            return
        f, path, n = self.f, self.path, len(self._checkpoints)
        n_test = None
        data = f.get("data")
        if data is not None and not isinstance(data, h5py.Group):
            raise ZooFileError(f"{path} is damaged: /data is not a group")
        for name, kind in (("test_labels", "iu"), ("test_ids", "T"), ("test_texts", "T"),
                           ("test_text_pairs", "T"), ("test_contexts", "T"),
                           ("test_answers", "T")):
            if data is None or name not in data:
                continue
            ds = get_node(data, name, path)
            check_dataset(ds, path, kind, 1, rows=ds.shape[0] if ds.ndim == 1 else None)
            if n_test is not None and ds.shape[0] != n_test:
                raise ZooFileError(f"{path} is damaged: {ds.name} has {ds.shape[0]} rows, "
                                   f"the test split {n_test}")
            n_test = ds.shape[0]
        if "predictions" not in f["checkpoints"]:
            self._test_data_checked = True
            return
        ds = get_node(f["checkpoints"], "predictions", path)
        kind = attr_text(ds, "kind", "class")
        if kind not in ("class", "span"):
            raise ZooFileError(f"{path} is damaged: /checkpoints/predictions:kind is {kind!r}, "
                               "not class or span")
        if self.f.swmr_mode:
            ds.refresh()
        width = None if n_test is None else ((n_test,) if kind == "class" else (n_test, 2))
        check_dataset(ds, path, "iu", 2 if kind == "class" else 3, rows=n, width=width)
        if kind == "span" and ds.shape[2] != 2:
            raise ZooFileError(f"{path} is damaged: span predictions need rows of (n_test, 2), "
                               f"not {ds.shape[1:]}")
        self._test_data_checked = True

    def _fresh(self, path: str) -> h5py.Dataset:
        """A dataset with its current extent, also while a SWMR writer appends to it."""
        ds = self.f[path]
        if self.f.swmr_mode:
            ds.refresh()
        return ds

    # -- zoo level ------------------------------------------------------------------------
    @property
    @_reads
    def info(self) -> dict[str, Any]:
        f = self.f
        return {
            "name": attr_text(f, "name", ""),
            "format": self.format_version,
            "generator": attr_text(f, "generator", ""),
            "generator_version": attr_text(f, "generator_version", ""),
            "created": attr_text(f, "created", ""),
            "versions": json_attr(f, "versions", {}, kind=dict),
            "data": json_attr(f, "data", {}, kind=dict),
            "storage_dtype": attr_text(f, "storage_dtype", "float32"),
            "compression": attr_text(f, "compression", "none"),
            "metric_columns": list(self.metric_columns),
            "members": len(self._members),
            "checkpoints": len(self._checkpoints),
            "extra": json_attr(f, "extra", {}, kind=dict),
        }

    @property
    @_reads
    def config_text(self) -> str:
        return attr_text(self.f, "config", "")

    @_reads
    def card(self) -> str | None:
        ds = self.f.get(CARD)
        if ds is None:
            return None
        check_dataset(ds, self.path, "u", 1)
        if ds.shape[0] > MAX_CARD:
            raise ZooFileError(f"{self.path} is damaged: /card holds {ds.shape[0]:,} bytes")
        check_backed(ds, ds.shape[0], self.path)
        try:
            return ds[()].tobytes().rstrip(b"\0").decode()
        except UnicodeDecodeError:
            raise ZooFileError(f"{self.path} is damaged: /card is not UTF-8 text") from None

    def members(self, **factors: Any) -> list[Member]:
        return [m for m in self._members if m.matches(**factors)]

    def checkpoints(
        self, members: Iterable[Member | str] | Member | str | None = None,
        epochs: Iterable[int] | None = None,
    ) -> list[Checkpoint]:
        chosen = select_checkpoints(self._checkpoints, self._by_id, self.path, members, epochs)
        return sorted(chosen, key=lambda c: (self._by_id[c.member], c.epoch))

    def _arch_of(self, member: Member | str) -> int:
        mid = member if isinstance(member, str) else member.id
        if mid not in self._by_id:
            raise ZooFileError(f"no member {mid!r} in {self.path}")
        a = int(self._member_arch[self._by_id[mid]])
        if a < 0:
            raise ZooFileError(f"member {mid} has no checkpoints yet")
        return a

    @_reads
    def tensor_names(self, member: Member | str | None = None) -> list[str]:
        if member is None:
            if not self._layouts:
                return []
            return list(self._layouts.declared(0)[0])
        return list(self._layouts.declared(self._arch_of(member))[0])

    @_reads
    def tensor_shape(self, name: str, member: Member | str | None = None) -> tuple[int, ...]:
        a = 0 if member is None else self._arch_of(member)
        return self._layouts.declared(a)[1][name]

    def _locate(self, c: Checkpoint) -> tuple[int, int]:
        pos = self._position.get((c.member, c.epoch))
        if pos is None:
            raise ZooFileError(f"no checkpoint of member {c.member} at epoch {c.epoch}")
        row = self._index[pos]
        return int(row["architecture"]), int(row["arch_row"])

    def _rows(self, a: int) -> np.ndarray:
        """The committed part of an architecture's rows table (checked first)."""
        cache = self.__dict__.setdefault("_rows_cache", {})
        if a not in cache:
            self._layouts[a]  # noqa: B018 - checks the architecture's tables first
            cache[a] = self._fresh(f"architectures/{self._arch_keys[a]}/rows")[
                : self._committed[a]]
        return cache[a]

    def _digest_table(self, a: int) -> np.ndarray:
        cache = self.__dict__.setdefault("_digest_cache", {})
        if a not in cache:
            self._layouts[a]  # noqa: B018 - checks the architecture's tables first
            cache[a] = self._fresh(f"architectures/{self._arch_keys[a]}/digests")[
                : self._committed[a]]
        return cache[a]

    def _dataset(self, a: int, name: str) -> h5py.Dataset:
        """A tensor dataset, checked on first use: dtype, ``stored_as``, shape, and that
        every committed row pointing into it lies inside it."""
        cache = self.__dict__.setdefault("_datasets", {})
        if (a, name) in cache:
            return cache[(a, name)]
        names, shapes = self._layouts[a]
        if name not in shapes:
            raise ZooFileError(f"no tensor {name!r} in this zoo",
                               hint="Zoo.tensor_names() lists them")
        ds = get_node(self.f["architectures"][self._arch_keys[a]]["tensors"], name, self.path)
        check_safe_dataset(ds.id, ds.name.lstrip("/"), self.path)
        if self.f.swmr_mode:
            ds.refresh()
        where = f"{self.path} is damaged: {ds.name}"
        if ds.dtype.kind not in ALLOWED_KINDS or ds.ndim != len(shapes[name]) + 1:
            raise ZooFileError(f"{where} has dtype {ds.dtype} and shape {ds.shape}")
        if ds.shape[1:] != shapes[name]:
            raise ZooFileError(f"tensor {name!r} is stored with shape {ds.shape[1:]}, "
                               f"declared {shapes[name]}")
        if "stored_as" in ds.attrs:
            stored_as = attr_text(ds, "stored_as")
            if stored_as not in STORED_AS:
                raise ZooFileError(f"{where} is stored_as {stored_as!r}, not one of "
                                   f"{', '.join(STORED_AS)}")
            if ds.dtype != STORED_AS[stored_as]:
                raise ZooFileError(f"{where} is stored_as {stored_as} but holds {ds.dtype}")
        elif ds.dtype.kind == "f":
            raise ZooFileError(f"{where} is a floating tensor without a stored_as attribute")
        rows = self._rows(a)[:, names.index(name)]
        outside = rows[(rows < 0) | (rows >= ds.shape[0])]
        if len(outside):
            raise ZooFileError(f"{where} has {ds.shape[0]} rows, but /architectures/"
                               f"{self._arch_keys[a]}/rows points at row {int(outside[0])}")
        top = int(rows.max()) + 1 if len(rows) else 0
        check_backed(ds, top, self.path)
        cache[(a, name)] = ds
        return ds

    @_reads
    def check_structure(self) -> list[str]:
        """Problems of the structure that opening leaves to first use: every tensor
        dataset, the member table and stored analyses. Empty when sound."""
        problems: list[str] = []
        for check in [self._check_test_data] + [
                lambda a=a: self._layouts[a] for a in range(len(self._arch_keys))]:
            try:
                check()
            except ZooFileError as exc:
                problems.append(exc.message)
        if problems:
            return problems
        for a in range(len(self._arch_keys)):
            for name in self._layouts[a][0]:
                try:
                    self._dataset(a, name)
                except ZooFileError as exc:
                    problems.append(exc.message)
        table = self.f["members"].get("table")
        if table is not None:
            for name, ds in table.items():
                if not isinstance(ds, h5py.Dataset) or ds.shape != (len(self._members),):
                    problems.append(f"/members/table/{name} is not a column of "
                                    f"{len(self._members)} values")
        for entry in self.analyses():
            try:
                self.analysis_tables(entry["name"], entry["key"])
                self.analysis_figures(entry["name"], entry["key"])
            except ZooFileError as exc:
                problems.append(exc.message)
        return problems

    @_reads
    def state_dict(self, member: Member | str, epoch: int) -> dict[str, Any]:
        mid = member if isinstance(member, str) else member.id
        pos = self._position.get((mid, int(epoch)))
        if pos is None:
            raise ZooFileError(f"no checkpoint of member {mid} at epoch {epoch}",
                               hint="`zooscope zoo ls` shows each member's epochs")
        a, arch_row = self._locate(self._checkpoints[pos])
        names = self._layouts[a][0]
        rows = self._rows(a)[arch_row]
        out = {}
        for j, name in enumerate(names):
            ds = self._dataset(a, name)
            raw = np.empty(ds.shape[1:], dtype=ds.dtype)
            try:
                ds.read_direct(raw, source_sel=np.s_[int(rows[j])])
            except OSError as exc:
                raise ZooFileError(f"tensor {name!r} of {mid}@{epoch} is corrupt: {exc}") from None
            if self._source is not None:
                self._check_received(raw, a, arch_row, j, f"tensor {name!r} of {mid}@{epoch}")
            out[name] = to_torch(raw, attr_text(ds, "stored_as", str(ds.dtype)))
        return out

    def stored_rows(self, member: Member | str, epoch: int) -> list[tuple[str, bytes, Any, int]]:
        """One checkpoint as stored: per tensor, its name, digest, dataset and row. What
        ``HDF5Writer.copy_checkpoint`` copies chunk by chunk without decoding."""
        mid = member if isinstance(member, str) else member.id
        pos = self._position.get((mid, int(epoch)))
        if pos is None:
            raise ZooFileError(f"no checkpoint of member {mid} at epoch {epoch}")
        a, arch_row = self._locate(self._checkpoints[pos])
        names = self._layouts[a][0]
        rows = self._rows(a)[arch_row]
        digests = self._digest_table(a)[arch_row]
        return [(name, bytes(digests[j]), self._dataset(a, name), int(rows[j]))
                for j, name in enumerate(names)]

    @_reads
    def tensor(self, name: str, checkpoints: Sequence[Checkpoint] | None = None) -> np.ndarray:
        chosen = self.checkpoints() if checkpoints is None else list(checkpoints)
        if not chosen:
            raise ZooFileError("no checkpoints selected")
        located = [self._locate(c) for c in chosen]
        archs = {a for a, _ in located}
        if len(archs) > 1:
            raise ZooFileError(f"tensor {name!r} spans several architectures; select one backbone")
        a = archs.pop()
        names = self._layouts[a][0]
        if name not in names:
            raise ZooFileError(f"no tensor {name!r} in this zoo", hint="Zoo.tensor_names() lists them")
        j = names.index(name)
        arch_rows = [r for _, r in located]
        rows = self._rows(a)[arch_rows, j]
        ds = self._dataset(a, name)
        stored_as = attr_text(ds, "stored_as", str(ds.dtype))
        # Each stored row is read once, straight into the first place it goes: runs of
        # places that take consecutive rows are one read; a row shared by several
        # checkpoints (the common initialisation of a seed study) is copied from there.
        runs: list[list[int]] = []  # [first place, first row, length]
        first: dict[int, int] = {}
        copies: list[tuple[int, int]] = []
        for place, row in enumerate(rows.tolist()):
            if row in first:
                copies.append((place, first[row]))
                continue
            first[row] = place
            last = runs[-1] if runs else None
            if last and last[0] + last[2] == place and last[1] + last[2] == row:
                last[2] += 1
            else:
                runs.append([place, row, 1])
        buf = np.empty((len(rows), *ds.shape[1:]), dtype=ds.dtype)
        try:
            for place, row, length in runs:
                ds.read_direct(buf, source_sel=np.s_[row : row + length],
                               dest_sel=np.s_[place : place + length])
        except OSError as exc:
            raise ZooFileError(f"tensor {name!r} is corrupt: {exc}") from None
        if self._source is not None:
            for place in first.values():
                c = chosen[place]
                self._check_received(buf[place], a, arch_rows[place], j,
                                     f"tensor {name!r} of {c.member}@{c.epoch}")
        for place, source in copies:
            buf[place] = buf[source]
        return from_storage(buf, stored_as)

    def _check_received(self, raw: np.ndarray, a: int, arch_row: int, j: int, what: str) -> None:
        """A row read over the network must match its stored digest: a server or proxy
        that sends other bytes than the file holds is caught here, not in a result."""
        if row_digest(raw) != bytes(self._digest_table(a)[arch_row, j]):
            raise NetworkError(f"{what} read from {self.path} does not match its stored "
                               "digest: the bytes received are not the file's",
                               hint="the file may have changed on the server, or the server "
                                    "or a proxy is faulty; try again, or download the file "
                                    "and run `zooscope zoo validate` on it")

    @_reads
    def predictions(self, checkpoints: Sequence[Checkpoint] | None = None) -> np.ndarray:
        self._check_test_data()
        if "checkpoints/predictions" not in self.f:
            raise ZooFileError("this zoo stores no predictions")
        chosen = self.checkpoints() if checkpoints is None else list(checkpoints)
        positions = [self._position[(c.member, c.epoch)] for c in chosen]
        data = self._fresh("checkpoints/predictions")[: len(self._checkpoints)]
        return data[positions]

    @_reads
    def prediction_kind(self) -> str | None:
        self._check_test_data()
        if "checkpoints/predictions" not in self.f:
            return None
        return attr_text(self.f["checkpoints/predictions"], "kind", "class")

    @_reads
    def test_labels(self) -> np.ndarray | None:
        self._check_test_data()
        if "data/test_labels" not in self.f:
            return None
        return self.f["data/test_labels"][()]

    @_reads
    def test_contexts(self) -> list[str] | None:
        self._check_test_data()
        contexts = self.f.get("data/test_contexts")
        return None if contexts is None else list(contexts.asstr()[()])

    @_reads
    def test_answers(self) -> list[list[str]] | None:
        self._check_test_data()
        answers = self.f.get("data/test_answers")
        return None if answers is None else [json.loads(a) for a in answers.asstr()[()]]

    @_reads
    def model_files(self, member: Member | str) -> dict[str, bytes]:
        a = self._arch_of(member)
        self._layouts[a]  # noqa: B018 - checks the model files' declared sizes first
        files = self.f["architectures"][self._arch_keys[a]]["files"]
        out = {}
        for name in files:
            check_safe_name(name, "file")
            out[name] = bytes(files[name][()].tobytes())
        return out

    @_reads
    def architecture_name(self, member: Member | str) -> str:
        g = self.f["architectures"][self._arch_keys[self._arch_of(member)]]
        return attr_text(g, "name", "")

    @_reads
    def check_tensor(self, c: Checkpoint, name: str) -> list[str]:
        """Problems of one stored tensor: a failed checksum, a changed digest, NaN or Inf."""
        a, arch_row = self._locate(c)
        j = self._layouts[a][0].index(name)
        row = int(self._rows(a)[arch_row, j])
        seen = self.__dict__.setdefault("_checked", {})
        if (a, name, row) in seen:
            return seen[(a, name, row)]
        try:
            ds = self._dataset(a, name)
        except ZooFileError as exc:
            seen[(a, name, row)] = [str(exc)]
            return seen[(a, name, row)]
        out = np.empty(ds.shape[1:], dtype=ds.dtype)
        where = f"tensor {name!r} of {c.member}@{c.epoch}"
        problems: list[str] = []
        try:
            ds.read_direct(out, source_sel=np.s_[row])
        except OSError as exc:
            problems.append(f"{where}: checksum failed ({str(exc).split('(')[0].strip()})")
        else:
            stored = bytes(self._digest_table(a)[arch_row, j])
            if row_digest(out) != stored:
                problems.append(f"{where}: content does not match its stored digest")
            values = from_storage(out, attr_text(ds, "stored_as", str(ds.dtype)))
            if values.dtype.kind == "f" and not np.isfinite(values).all():
                bad = int((~np.isfinite(values)).sum())
                problems.append(f"{where}: {bad} NaN or Inf values")
        seen[(a, name, row)] = problems
        return problems

    def checkpoint_digests(self, c: Checkpoint) -> dict[str, str]:
        a, arch_row = self._locate(c)
        digests = self._digest_table(a)[arch_row]
        return {name: bytes(digests[j]).decode() for j, name in enumerate(self._layouts[a][0])}

    @_reads
    def uncommitted_rows(self) -> int:
        """Rows a writer appended after its last commit (a killed or running writer)."""
        return max(0, self.f["checkpoints/metrics"].shape[0] - len(self._checkpoints))

    @_reads
    def architecture(self, member: Member | str) -> Architecture:
        a = self._arch_of(member)
        names, shapes = self._layouts[a]
        tensors = self.f["architectures"][self._arch_keys[a]]["tensors"]
        dtypes = {n: str(tensors[n].dtype) for n in names if "stored_as" not in tensors[n].attrs}
        return Architecture(key=self.architecture_name(member), files=self.model_files(member),
                            shapes=dict(shapes), dtypes=dtypes)

    @_reads
    def record(self) -> ZooRecord:
        self._check_test_data()
        info = self.info
        p = self.f.get("checkpoints/predictions")
        preds = None if p is None else {"kind": attr_text(p, "kind", "class"),
                                        "shape": list(p.shape[1:])}
        ids = self.f.get("data/test_ids")
        texts = self.f.get("data/test_texts")
        pairs = self.f.get("data/test_text_pairs")
        return ZooRecord(
            name=info["name"], config_text=self.config_text, generator=info["generator"],
            generator_version=info["generator_version"], metric_columns=list(self.metric_columns),
            data=info["data"],
            test=TestSet(predictions=preds, labels=self.test_labels(),
                         ids=None if ids is None else list(ids.asstr()[()]),
                         texts=None if texts is None else list(texts.asstr()[()]),
                         text_pairs=None if pairs is None else list(pairs.asstr()[()]),
                         contexts=self.test_contexts(), answers=self.test_answers()),
            storage_dtype=info["storage_dtype"], compression=info["compression"],
            extra=info["extra"])

    def _results(self) -> ResultsStore:
        """The results store beside this zoo, read once per open zoo (none beside a URL)."""
        if "_results_store" not in self.__dict__:
            self._results_store = (ResultsStore(Path(os.devnull), zoo_identity(self.f))
                                   if self._source is not None
                                   else ResultsStore.load(self.results_base, zoo_identity(self.f)))
        return self._results_store

    def results_notes(self) -> list[str]:
        note = self._results().note
        return [note] if note else []

    @_reads
    def analyses(self) -> list[dict[str, Any]]:
        # Format 1 zoos written before the results store kept results inside; those
        # still read, and a result stored beside the zoo wins over one inside it.
        beside = self._results().entries
        seen = {(e["name"], e["key"]) for e in beside}
        inside = [e for e in read_entries(self.f, "zoo") if (e["name"], e["key"]) not in seen]
        return inside + beside

    @_reads
    def analysis_tables(self, name: str, key: str) -> dict[str, dict[str, np.ndarray]]:
        tables = self._results().tables(name, key)
        if tables is not None:
            return tables
        g = self.f.get(f"analyses/{name}/{key}")
        if g is None:
            raise ZooFileError(f"no stored analysis {name}/{key}")
        tables: dict[str, dict[str, np.ndarray]] = {}
        if "tables" not in g:
            return tables
        for tname, tgroup in g["tables"].items():
            order = json_attr(tgroup, "columns", [], kind=list)
            cols = {}
            for col in order:
                if not isinstance(col, str):
                    raise ZooFileError(f"{self.path} is damaged: {tgroup.name}:columns holds "
                                       f"{col!r}, not a column name")
                ds = get_node(tgroup, col, self.path)
                # Columns are one value a row; a value may itself be a vector.
                check_dataset(ds, self.path, "iufbT", max(ds.ndim, 1),
                              rows=ds.shape[0] if ds.ndim else None)
                cols[col] = ds.asstr()[()] if ds.dtype.kind == "O" else ds[()]
            tables[tname] = cols
        return tables

    @_reads
    def analysis_figures(self, name: str, key: str) -> dict[str, bytes]:
        figures = self._results().figures(name, key)
        if figures is not None:
            return figures
        path = f"analyses/{name}/{key}/figures"
        if path not in self.f:
            return {}
        figures = {}
        for n in self.f[path]:
            ds = get_node(self.f[path], n, self.path)
            check_dataset(ds, self.path, "u", 1, rows=ds.shape[0] if ds.ndim == 1 else None)
            figures[n] = bytes(ds[()].tobytes())
        return figures

    def close(self) -> None:
        if self.f.id.valid:
            self.f.close()
        if self._source is not None:
            self._source.close()


def open_remote(url: str, timeout: float | None = None) -> HDF5Zoo:
    """A zoo at a URL, read through a range-fetching file object: the open reads the
    header and index, each tensor read fetches that tensor's chunks and checks each row
    against its stored digest."""
    from zooscope.remote import open_url

    source = open_url(url, timeout)
    try:
        handle = h5py.File(source, "r", locking=False, rdcc_nbytes=0)
    except OSError as exc:
        source.close()
        raise ZooFileError(f"{url} is not a readable HDF5 file ({str(exc).split('(')[0].strip()})",
                           hint="the file may be truncated or not a zoo at all") from None
    except BaseException:
        source.close()
        raise
    return HDF5Zoo(url, handle, source)  # type: ignore[arg-type]


def write_analysis(
    path: Path, name: str, key: str, options: Mapping[str, Any], summary: str,
    tables: Mapping[str, Mapping[str, np.ndarray]], figures: Mapping[str, bytes],
    inputs: Sequence[Mapping[str, Any]] = (), identity_of: Path | None = None,
) -> list[str]:
    """Store a result in the zoo's results store; the zoo itself is only read (the file
    ``identity_of`` where the zoo is a folder of parts: its first part)."""
    f = open_for_reading(identity_of or path)
    try:
        check_format(f, identity_of or path)
        identity, created = zoo_identity(f), attr_text(f, "created", "")
    finally:
        f.close()
    return write_result(path, identity, created, name, key, options, summary, tables, figures,
                        inputs)
