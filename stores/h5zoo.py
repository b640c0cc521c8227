"""Zoo format v1 in HDF5 (specified in docs/format.md): the writer and the reader.

Only this module (and its superblock helper) touches h5py; the plugin that
registers it is ``zooscope.stores.hdf5``. Generation writes through ``HDF5Writer``;
analysis reads through ``HDF5Zoo``.

The layout is append-only: one extendible dataset per tensor with a row per
unique tensor value, and a checkpoint index whose appended row is the commit
record. A writer works in SWMR mode, so readers can follow a running generation
and a killed writer leaves every committed checkpoint readable.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import json
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import filelock
import h5py
import numpy as np
import xxhash

from zooscope import __version__
from zooscope.errors import ZooFileError
from zooscope.store import Architecture, ZooHeader, ZooWriter
from zooscope.stores.h5results import (
    ResultsStore,
    read_entries,
    read_figures,
    read_tables,
    write_result,
    zoo_identity,
)
from zooscope.stores.superblock import clear_write_flags
from zooscope.zoo import (
    PENDING,
    RUNNING,
    STATUS_LABELS,
    Checkpoint,
    Member,
    Zoo,
    canonical_json,
    check_safe_name,
)

FORMAT_VERSION = 1
STORAGE_DTYPES = ("float32", "float16", "bfloat16")
COMPRESSIONS = ("none", "lz4", "zstd", "gzip")
#: Largest tensor a zoo file may declare (elements); larger is treated as hostile.
MAX_TENSOR_ELEMENTS = 2**33
_ALLOWED_KINDS = {"f", "u", "i", "b"}
_INDEX_DTYPE = np.dtype(
    [("member", "<i4"), ("epoch", "<i4"), ("step", "<i8"), ("wall_time", "<f8"),
     ("architecture", "<i4"), ("arch_row", "<i8")]
)
_STR = h5py.string_dtype()


def _attr_text(obj: h5py.HLObject, name: str, default: str | None = None) -> str:
    value = obj.attrs.get(name, default)
    if value is None:
        raise ZooFileError(f"zoo file lacks the attribute {obj.name}:{name}")
    return value.decode() if isinstance(value, bytes) else str(value)


def _json_attr(obj: h5py.HLObject, name: str, default: Any = None) -> Any:
    if name not in obj.attrs:
        if default is not None:
            return default
        raise ZooFileError(f"zoo file lacks the attribute {obj.name}:{name}")
    try:
        return json.loads(_attr_text(obj, name))
    except json.JSONDecodeError as exc:
        raise ZooFileError(f"attribute {obj.name}:{name} is not valid JSON") from exc


def _compression(name: str) -> dict[str, Any]:
    if name == "none":
        return {}
    if name == "gzip":
        return {"compression": "gzip", "compression_opts": 4}
    import hdf5plugin

    return dict(hdf5plugin.LZ4() if name == "lz4" else hdf5plugin.Zstd(clevel=3))


def to_storage(value: Any, storage_dtype: str) -> np.ndarray:
    """A state-dict value as the array the zoo stores (bf16 as its uint16 bit pattern)."""
    if isinstance(value, (np.ndarray, np.generic)) and storage_dtype != "bfloat16":
        # numpy needs no torch (bf16 does): writers of plain arrays start fast.
        value = np.asarray(value, order="C")
        return value if value.dtype.kind != "f" else value.astype(storage_dtype, copy=False)
    import torch

    t = value.detach().cpu() if isinstance(value, torch.Tensor) else torch.as_tensor(value)
    if not t.is_floating_point():
        return t.contiguous().numpy()
    if storage_dtype == "bfloat16":
        return t.to(torch.bfloat16).contiguous().view(torch.int16).numpy().view(np.uint16)
    return t.to(getattr(torch, storage_dtype)).contiguous().numpy()


def from_storage(array: np.ndarray, stored_as: str) -> np.ndarray:
    """A stored array as numpy, bf16 bit patterns widened to float32."""
    if stored_as == "bfloat16":
        return (array.astype(np.uint32) << 16).view(np.float32)
    return array


def to_torch(raw: np.ndarray, stored_as: str) -> Any:
    """A stored row as a torch tensor in its stored dtype (bf16 bit patterns viewed as bf16)."""
    import torch

    t = torch.from_numpy(np.asarray(raw, order="C"))
    return t.view(torch.bfloat16) if stored_as == "bfloat16" else t


def _digest(array: np.ndarray) -> bytes:
    h = xxhash.xxh3_128()
    h.update(str(array.dtype).encode() + str(array.shape).encode())
    flat = np.asarray(array, order="C").reshape(-1)
    h.update(flat.view(np.uint8) if flat.size else b"")  # hashes the buffer, no copy
    return h.hexdigest().encode()


class _Lock:
    """An advisory lock beside the zoo (``NAME.h5.lock``): held by the one process writing it.

    The lock file stays after release: unlinking a lock file others may have opened lets
    two processes lock two different files under one name.
    """

    def __init__(self, path: Path) -> None:
        self.path = path.with_name(path.name + ".lock")
        self._lock = _file_lock(self.path)
        try:
            self._lock.acquire(timeout=0)
        except filelock.Timeout:
            raise ZooFileError(
                f"{path} is being written by another process",
                hint="wait for it to finish, or stop it first",
            ) from None
        except OSError as exc:
            raise _lock_error(self.path, exc) from None

    @staticmethod
    def held(path: Path) -> bool:
        """Whether a live process holds the lock (a killed writer's lock is free)."""
        lock = path.with_name(path.name + ".lock")
        if not lock.exists():
            return False
        probe = _file_lock(lock)
        try:
            probe.acquire(timeout=0)
        except filelock.Timeout:
            return True
        except OSError:
            return False  # cannot tell (a read-only folder): no writer can be writing there
        probe.release()
        return False

    def release(self) -> None:
        if self._lock.is_locked:
            self._lock.release()


def being_written(path: Path) -> bool:
    """Whether a live process holds the zoo's writer lock."""
    return _Lock.held(path)


def _file_lock(path: Path) -> filelock.BaseFileLock:
    # A soft lock (a file that exists while held) would outlive a killed writer and
    # block its --resume; where the file system has no real locks, say so instead.
    return filelock.FileLock(path, fallback_to_soft=False)


def _lock_error(path: Path, exc: OSError) -> ZooFileError:
    if exc.errno in (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return ZooFileError(
            f"the file system holding {path.parent} does not support file locks "
            f"({exc.strerror or exc})",
            hint="write the zoo on a local disk, or on a file system with locks "
                 "(NFS needs its lock service)")
    return ZooFileError(f"cannot lock {path}: {exc.strerror or exc}",
                        hint="check that the folder is writable")


def _open_for_reading(path: Path, wait: float = 10.0) -> h5py.File:
    """Open the committed state, whether or not a writer is running.

    A SWMR writer's file opens in SWMR-read mode. For the moment a writer spends
    outside SWMR mode (adding an architecture, which SWMR forbids) the file cannot
    be opened at all; readers wait for that window to close instead of failing.
    """
    deadline = time.monotonic() + wait
    while True:
        try:
            return h5py.File(path, "r", locking=False, rdcc_nbytes=0)
        except OSError as exc:
            text = str(exc)
        if "already open for write" in text:
            try:
                return h5py.File(path, "r", swmr=True, locking=False, rdcc_nbytes=0)
            except OSError as exc2:
                text = str(exc2)
            if time.monotonic() < deadline and _Lock.held(path):
                time.sleep(0.05)
                continue
        raise ZooFileError(
            f"{path} is not a readable HDF5 file ({text.split('(')[0].strip()})",
            hint="the file may be truncated or not a zoo at all",
        ) from None


def _check_safe_file(f: h5py.File, path: Path) -> None:
    """Reject links out of the file, virtual or external datasets, and odd dtypes."""
    problems: list[str] = []

    def visit(name: bytes, info: h5py.h5l.LinkInfo) -> None:
        if info.type == h5py.h5l.TYPE_EXTERNAL:
            problems.append(f"external link {name.decode(errors='replace')!r}")
        elif info.type != h5py.h5l.TYPE_HARD:
            problems.append(f"soft link {name.decode(errors='replace')!r}")

    f.id.links.visit(visit, info=True)
    if problems:
        raise ZooFileError(f"{path} is unsafe: it holds an {problems[0]}",
                           hint="zoo files never link outside themselves")

    # Low-level visit: opening every object through h5py's high-level API costs
    # more than the rest of opening a zoo.
    def visit_obj(name: bytes, info: h5py.h5o.ObjInfo) -> None:
        if info.type != h5py.h5o.TYPE_DATASET:
            return
        ds = h5py.h5d.open(f.id, name)
        dcpl = ds.get_create_plist()
        label = name.decode(errors="replace")
        if dcpl.get_layout() == h5py.h5d.VIRTUAL:
            problems.append(f"virtual dataset {label!r}")
        elif dcpl.get_external_count():
            problems.append(f"dataset {label!r} with external storage")
        else:
            dtype = ds.dtype
            if dtype.kind not in _ALLOWED_KINDS | {"O", "S", "V"}:
                problems.append(f"dataset {label!r} of unexpected dtype {dtype}")

    h5py.h5o.visit(f.id, visit_obj, info=True)
    if problems:
        raise ZooFileError(f"{path} is unsafe: it holds a {problems[0]}",
                           hint="zoo files keep all their data inside themselves")


def _check_format(f: h5py.File, path: Path) -> int:
    if "zooscope_format" not in f.attrs:
        raise ZooFileError(f"{path} is an HDF5 file but not a zooscope zoo (no zooscope_format)")
    version = int(f.attrs["zooscope_format"])
    if version > FORMAT_VERSION:
        raise ZooFileError(
            f"{path} uses zoo format {version}; this zooscope reads format {FORMAT_VERSION}",
            hint="upgrade zooscope to read it",
        )
    for group in ("members", "architectures", "checkpoints"):
        if group not in f:
            raise ZooFileError(f"{path} is damaged: the group /{group} is missing")
    return version


def _architecture_layout(group: h5py.Group) -> tuple[list[str], dict[str, tuple[int, ...]]]:
    names = _json_attr(group, "tensor_names")
    shapes_raw = _json_attr(group, "shapes")
    if not isinstance(names, list) or not isinstance(shapes_raw, dict):
        raise ZooFileError(f"architecture {group.name} has a malformed tensor layout")
    shapes: dict[str, tuple[int, ...]] = {}
    for name in names:
        check_safe_name(name, "tensor")
        shape = shapes_raw.get(name)
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise ZooFileError(f"tensor {name!r} has a malformed shape {shape!r}")
        if int(np.prod(shape, dtype=np.float64)) > MAX_TENSOR_ELEMENTS:
            raise ZooFileError(f"tensor {name!r} declares an absurd shape {shape}")
        shapes[name] = tuple(shape)
    return names, shapes


class HDF5Writer(ZooWriter):
    """Appends checkpoints to one zoo file; the only process allowed to write it."""

    def __init__(self, path: Path, lock: _Lock) -> None:
        self.path = path
        self._lock = lock
        self.f = h5py.File(path, "r+", libver="latest", locking=False)
        self._load()
        self._truncate_uncommitted()
        self._enter_swmr()

    # -- state ------------------------------------------------------------------------
    def _load(self) -> None:
        f = self.f
        _check_format(f, self.path)
        self.storage_dtype = _attr_text(f, "storage_dtype", "float32")
        self.compression = _attr_text(f, "compression", "none")
        self.metric_columns = _json_attr(f["checkpoints/metrics"], "columns")
        self.member_index = {
            (v.decode() if isinstance(v, bytes) else v): i
            for i, v in enumerate(f["members/id"][()])
        }
        self.arch_keys = [k for k in sorted(f["architectures"], key=lambda s: int(s[1:]))]
        self._digests: dict[str, list[dict[bytes, int]]] = {}
        self._names: dict[str, list[str]] = {}
        for key in self.arch_keys:
            names, _ = _architecture_layout(f["architectures"][key])
            self._names[key] = names

    def _truncate_uncommitted(self) -> None:
        """Drop rows a killed writer appended after its last commit."""
        f = self.f
        index = f["checkpoints/index"][()]
        n = len(index)
        for ds_name in ("checkpoints/metrics", "checkpoints/predictions"):
            if ds_name in f and f[ds_name].shape[0] != n:
                f[ds_name].resize(n, axis=0)
        for a, key in enumerate(self.arch_keys):
            group = f["architectures"][key]
            mine = index[index["architecture"] == a]
            rows_used = int(mine["arch_row"].max()) + 1 if len(mine) else 0
            for ds_name in ("rows", "digests"):
                if group[ds_name].shape[0] != rows_used:
                    group[ds_name].resize(rows_used, axis=0)
            rows = group["rows"][()]
            digests = group["digests"][()]
            maps: list[dict[bytes, int]] = []
            for j, name in enumerate(self._names[key]):
                used = int(rows[:, j].max()) + 1 if rows_used else 0
                ds = group["tensors"][name]
                if ds.shape[0] != used:
                    ds.resize(used, axis=0)
                maps.append({bytes(digests[i, j]): int(rows[i, j]) for i in range(rows_used)})
            self._digests[key] = maps
        f.flush()

    def _tensor_datasets(self, key: str) -> list[h5py.Dataset]:
        """The tensor datasets of an architecture, opened once per file handle."""
        cache = self.__dict__.setdefault("_open_datasets", {})
        if (id(self.f), key) not in cache:
            tensors = self.f["architectures"][key]["tensors"]
            cache.clear()
            cache[(id(self.f), key)] = [tensors[n] for n in self._names[key]]
        return cache[(id(self.f), key)]

    def _enter_swmr(self) -> None:
        self.f.flush()
        self.f.swmr_mode = True

    def _leave_swmr(self) -> None:
        # SWMR forbids creating objects; a new architecture needs a plain session.
        self.f.close()
        self.f = h5py.File(self.path, "r+", libver="latest", locking=False)

    # -- ZooWriter ----------------------------------------------------------------------
    def _find_architecture(self, arch: Architecture) -> int | None:
        fp = _fingerprint(arch)
        for a, key in enumerate(self.arch_keys):
            if _attr_text(self.f["architectures"][key], "fingerprint") == fp:
                return a
        return None

    def ensure_architecture(self, arch: Architecture) -> None:
        if self._find_architecture(arch) is not None:
            return
        self._leave_swmr()
        try:
            key = f"a{len(self.arch_keys)}"
            g = self.f["architectures"].create_group(key)
            g.attrs["fingerprint"] = _fingerprint(arch)
            g.attrs["name"] = arch.key
            names = list(arch.shapes)
            for name in names:
                check_safe_name(name, "tensor")
            g.attrs["tensor_names"] = json.dumps(names)
            g.attrs["shapes"] = json.dumps({k: list(v) for k, v in arch.shapes.items()})
            files = g.create_group("files")
            for fname, content in arch.files.items():
                check_safe_name(fname, "file")
                files.create_dataset(fname, data=np.frombuffer(content, dtype=np.uint8))
            tensors = g.create_group("tensors")
            filters = _compression(self.compression)
            for name, shape in arch.shapes.items():
                dtype = arch.dtypes.get(name, "float")  # non-float tensors keep their dtype
                stored = (
                    np.dtype(dtype)
                    if dtype != "float"
                    else np.dtype("uint16" if self.storage_dtype == "bfloat16" else self.storage_dtype)
                )
                tensors.create_dataset(
                    name, shape=(0, *shape), maxshape=(None, *shape), dtype=stored,
                    chunks=(1, *[max(d, 1) for d in shape]) if shape else (1,),
                    **filters,
                )
                if dtype == "float":
                    tensors[name].attrs["stored_as"] = self.storage_dtype
            t = len(names)
            g.create_dataset("rows", shape=(0, t), maxshape=(None, t), dtype="<i8",
                             chunks=(64, max(t, 1)))
            g.create_dataset("digests", shape=(0, t), maxshape=(None, t), dtype="S32",
                             chunks=(64, max(t, 1)))
            self.arch_keys.append(key)
            self._names[key] = names
            self._digests[key] = [{} for _ in names]
        finally:
            self._enter_swmr()

    def arch_index(self, arch: Architecture) -> int:
        a = self._find_architecture(arch)
        if a is None:
            raise ZooFileError(f"architecture {arch.key!r} was never recorded")
        return a

    def start_member(self, member: Member, arch_key: str | Architecture) -> None:
        i = self._member(member)
        a = self.arch_index(arch_key) if isinstance(arch_key, Architecture) else int(arch_key)
        self.f["members/architecture"][i] = a
        self.set_status(member, RUNNING)

    def set_status(self, member: Member, status: int) -> None:
        self.f["members/status"][self._member(member)] = status
        self.f.flush()

    def _member(self, member: Member) -> int:
        try:
            return self.member_index[member.id]
        except KeyError:
            raise ZooFileError(f"member {member.id} is not part of {self.path}") from None

    def completed_epochs(self, member: Member) -> list[int]:
        index = self.f["checkpoints/index"][()]
        mine = index[index["member"] == self._member(member)]
        return sorted(int(e) for e in mine["epoch"])

    def read_state_dict(self, member: Member, epoch: int) -> dict[str, Any]:
        index = self.f["checkpoints/index"][()]
        hit = index[(index["member"] == self._member(member)) & (index["epoch"] == epoch)]
        if not len(hit):
            raise ZooFileError(f"no checkpoint of member {member.id} at epoch {epoch}")
        a, arch_row = int(hit[0]["architecture"]), int(hit[0]["arch_row"])
        key = self.arch_keys[a]
        rows = self.f["architectures"][key]["rows"][arch_row]
        return {name: to_torch(ds[int(rows[j])], _attr_text(ds, "stored_as", str(ds.dtype)))
                for j, (name, ds) in enumerate(zip(self._names[key], self._tensor_datasets(key),
                                                   strict=True))}

    def write_checkpoint(
        self, member: Member, epoch: int, step: int, wall_time: float,
        state_dict: Mapping[str, Any], metrics: Mapping[str, float],
        predictions: np.ndarray | None,
    ) -> None:
        f = self.f
        i = self._member(member)
        a = int(f["members/architecture"][i])
        if a < 0:
            raise ZooFileError(f"member {member.id} was not started")
        key = self.arch_keys[a]
        group = f["architectures"][key]
        names = self._names[key]
        if set(state_dict) != set(names):
            extra = sorted(set(state_dict) - set(names))[:3]
            missing = sorted(set(names) - set(state_dict))[:3]
            raise ZooFileError(
                f"state dict does not match the recorded architecture (extra {extra}, missing {missing})"
            )
        rows = np.empty(len(names), dtype="<i8")
        digests = np.empty(len(names), dtype="S32")
        maps = self._digests[key]
        datasets = self._tensor_datasets(key)
        for j, name in enumerate(names):
            ds = datasets[j]
            array = to_storage(state_dict[name], self.storage_dtype)
            if array.shape != ds.shape[1:]:
                raise ZooFileError(f"tensor {name} has shape {array.shape}, expected {ds.shape[1:]}")
            digest = _digest(array)
            row = maps[j].get(digest)
            if row is None:
                row = ds.shape[0]
                ds.resize(row + 1, axis=0)
                data = np.asarray(array, dtype=ds.dtype, order="C")
                if self.compression == "none" and data.size and data.ndim:
                    # One row is one chunk: hand HDF5 the bytes, skipping selection
                    # and conversion machinery (3-5x faster for large tensors).
                    ds.id.write_direct_chunk((row,) + (0,) * data.ndim, data)
                else:
                    ds.write_direct(data, dest_sel=np.s_[row])
                maps[j][digest] = row
            rows[j] = row
            digests[j] = digest
        arch_row = group["rows"].shape[0]
        for ds_name, value in (("rows", rows), ("digests", digests)):
            group[ds_name].resize(arch_row + 1, axis=0)
            group[ds_name][arch_row] = value
        unknown = set(metrics) - set(self.metric_columns)
        if unknown:
            raise ZooFileError(f"metrics {sorted(unknown)} are not columns of this zoo")
        c = f["checkpoints/index"].shape[0]
        m = f["checkpoints/metrics"]
        m.resize(c + 1, axis=0)
        m[c] = np.array([float(metrics.get(k, np.nan)) for k in self.metric_columns])
        if "checkpoints/predictions" in f:
            p = f["checkpoints/predictions"]
            p.resize(c + 1, axis=0)
            if predictions is not None:
                p[c] = np.asarray(predictions).astype(p.dtype)
            else:
                p[c] = np.full(p.shape[1:], -1, dtype=p.dtype)
        f.flush()
        # The index row is the commit record: everything it points at is on disk.
        idx = f["checkpoints/index"]
        idx.resize(c + 1, axis=0)
        idx[c] = np.array([(i, epoch, step, wall_time, a, arch_row)], dtype=_INDEX_DTYPE)[0]
        f.flush()

    def share_checkpoint(self, source: Member, member: Member, epoch: int) -> dict[str, float]:
        """Commit ``source``'s checkpoint at ``epoch`` as ``member``'s too, pointing at the
        same tensor rows (nothing is copied but metrics and predictions); its metrics."""
        f = self.f
        i, s = self._member(member), self._member(source)
        index = f["checkpoints/index"][()]
        hit = np.flatnonzero((index["member"] == s) & (index["epoch"] == epoch))
        if not len(hit):
            raise ZooFileError(f"no checkpoint of member {source.id} at epoch {epoch}")
        src = index[hit[0]]
        f["members/architecture"][i] = int(src["architecture"])
        c = index.shape[0]
        m = f["checkpoints/metrics"]
        m.resize(c + 1, axis=0)
        m[c] = m[hit[0]]
        if "checkpoints/predictions" in f:
            p = f["checkpoints/predictions"]
            p.resize(c + 1, axis=0)
            p[c] = p[hit[0]]
        f.flush()
        idx = f["checkpoints/index"]
        idx.resize(c + 1, axis=0)
        row = src.copy()
        row["member"] = i
        idx[c] = row
        f.flush()
        return {k: float(v) for k, v in zip(self.metric_columns, m[c], strict=True)}

    def close(self) -> None:
        if self.f.id.valid:
            self.f.close()
        self._lock.release()


def _fingerprint(arch: Architecture) -> str:
    h = xxhash.xxh3_128()
    h.update(canonical_json({k: list(v) for k, v in arch.shapes.items()}).encode())
    h.update(arch.files.get("config.json", b""))
    return h.hexdigest()


class HDF5Zoo(Zoo):
    """A read-only view of the committed state of a zoo file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.f = _open_for_reading(path)
        try:
            self._load()
        except ZooFileError:
            self.f.close()
            raise
        except (KeyError, ValueError, TypeError, OSError) as exc:
            self.f.close()
            raise ZooFileError(f"{path} is damaged: {exc}") from None

    def _load(self) -> None:
        f = self.f
        self.format_version = _check_format(f, self.path)
        _check_safe_file(f, self.path)
        ids = [v.decode() if isinstance(v, bytes) else str(v) for v in f["members/id"][()]]
        for mid in ids:
            check_safe_name(mid, "member")
        # The index first: it decides what is committed. Everything read after it is
        # refreshed (SWMR readers otherwise keep extents cached from opening time),
        # so it holds at least what the index points at.
        self._index = self._fresh("checkpoints/index")[()]
        n = len(self._index)
        factors = [json.loads(v) for v in f["members/factors"].asstr()[()]]
        lineage = [json.loads(v) for v in f["members/lineage"].asstr()[()]]
        status = self._fresh("members/status")[()]
        self._members = [
            Member(id=mid, factors=fac, lineage=lin, status=STATUS_LABELS.get(int(s), "unknown"))
            for mid, fac, lin, s in zip(ids, factors, lineage, status, strict=True)
        ]
        self._member_arch = self._fresh("members/architecture")[()]
        self._by_id = {m.id: i for i, m in enumerate(self._members)}
        self.metric_columns = _json_attr(f["checkpoints/metrics"], "columns")
        metrics = self._fresh("checkpoints/metrics")[:n]
        self._arch_keys = sorted(f["architectures"], key=lambda s: int(s[1:]))
        self._layouts = [_architecture_layout(f["architectures"][k]) for k in self._arch_keys]
        for (names, _), key in zip(self._layouts, self._arch_keys, strict=True):
            stored = set(f["architectures"][key]["tensors"])
            missing = [n for n in names if n not in stored]
            if missing:
                raise ZooFileError(f"tensor {missing[0]!r} is declared but missing in {key}")
        # Stored shapes are checked against the declared ones when a tensor is first
        # opened (``_dataset``): opening every dataset here would dominate open time.
        if len(metrics) != n:
            raise ZooFileError(f"{self.path} is damaged: fewer metric rows than checkpoints")
        self._checkpoints = []
        for row, values in zip(self._index, metrics, strict=True):
            mid = int(row["member"])
            if not 0 <= mid < len(self._members):
                raise ZooFileError(f"{self.path} is damaged: checkpoint of unknown member {mid}")
            self._checkpoints.append(
                Checkpoint(
                    member=self._members[mid].id, epoch=int(row["epoch"]), step=int(row["step"]),
                    wall_time=float(row["wall_time"]),
                    metrics={k: float(v) for k, v in zip(self.metric_columns, values, strict=True)
                             if not np.isnan(v)},
                )
            )
        self._position = {(c.member, c.epoch): i for i, c in enumerate(self._checkpoints)}

    def _fresh(self, path: str) -> h5py.Dataset:
        """A dataset with its current extent, also while a SWMR writer appends to it."""
        ds = self.f[path]
        if self.f.swmr_mode:
            ds.refresh()
        return ds

    # -- zoo level ------------------------------------------------------------------------
    @property
    def info(self) -> dict[str, Any]:
        f = self.f
        return {
            "name": _attr_text(f, "name", ""),
            "format": self.format_version,
            "generator": _attr_text(f, "generator", ""),
            "generator_version": _attr_text(f, "generator_version", ""),
            "created": _attr_text(f, "created", ""),
            "versions": _json_attr(f, "versions", {}),
            "data": _json_attr(f, "data", {}),
            "storage_dtype": _attr_text(f, "storage_dtype", "float32"),
            "compression": _attr_text(f, "compression", "none"),
            "metric_columns": list(self.metric_columns),
            "members": len(self._members),
            "checkpoints": len(self._checkpoints),
            "extra": _json_attr(f, "extra", {}),
        }

    @property
    def config_text(self) -> str:
        return _attr_text(self.f, "config", "")

    def members(self, **factors: Any) -> list[Member]:
        return [m for m in self._members if m.matches(**factors)]

    def checkpoints(
        self, members: Iterable[Member | str] | Member | str | None = None,
        epochs: Iterable[int] | None = None,
    ) -> list[Checkpoint]:
        if members is None:
            wanted = None
        elif isinstance(members, (str, Member)):
            wanted = {members if isinstance(members, str) else members.id}
        else:
            wanted = {m if isinstance(m, str) else m.id for m in members}
        if wanted is not None:
            unknown = wanted - set(self._by_id)
            if unknown:
                raise ZooFileError(f"no member {sorted(unknown)[0]!r} in {self.path}")
        epoch_set = None if epochs is None else {int(e) for e in epochs}
        chosen = [
            c for c in self._checkpoints
            if (wanted is None or c.member in wanted) and (epoch_set is None or c.epoch in epoch_set)
        ]
        return sorted(chosen, key=lambda c: (self._by_id[c.member], c.epoch))

    def _arch_of(self, member: Member | str) -> int:
        mid = member if isinstance(member, str) else member.id
        if mid not in self._by_id:
            raise ZooFileError(f"no member {mid!r} in {self.path}")
        a = int(self._member_arch[self._by_id[mid]])
        if a < 0:
            raise ZooFileError(f"member {mid} has no checkpoints yet")
        return a

    def tensor_names(self, member: Member | str | None = None) -> list[str]:
        if member is None:
            if not self._layouts:
                return []
            return list(self._layouts[0][0])
        return list(self._layouts[self._arch_of(member)][0])

    def tensor_shape(self, name: str, member: Member | str | None = None) -> tuple[int, ...]:
        a = 0 if member is None else self._arch_of(member)
        return self._layouts[a][1][name]

    def _locate(self, c: Checkpoint) -> tuple[int, int]:
        pos = self._position.get((c.member, c.epoch))
        if pos is None:
            raise ZooFileError(f"no checkpoint of member {c.member} at epoch {c.epoch}")
        row = self._index[pos]
        return int(row["architecture"]), int(row["arch_row"])

    def _rows(self, a: int) -> np.ndarray:
        cache = self.__dict__.setdefault("_rows_cache", {})
        if a not in cache:
            cache[a] = self._fresh(f"architectures/{self._arch_keys[a]}/rows")[()]
        return cache[a]

    def _digest_table(self, a: int) -> np.ndarray:
        cache = self.__dict__.setdefault("_digest_cache", {})
        if a not in cache:
            cache[a] = self._fresh(f"architectures/{self._arch_keys[a]}/digests")[()]
        return cache[a]

    def _dataset(self, a: int, name: str) -> h5py.Dataset:
        cache = self.__dict__.setdefault("_datasets", {})
        if (a, name) in cache:
            return cache[(a, name)]
        names, shapes = self._layouts[a]
        if name not in shapes:
            raise ZooFileError(f"no tensor {name!r} in this zoo",
                               hint="Zoo.tensor_names() lists them")
        ds = self.f["architectures"][self._arch_keys[a]]["tensors"][name]
        if self.f.swmr_mode:
            ds.refresh()
        if ds.shape[1:] != shapes[name]:
            raise ZooFileError(f"tensor {name!r} is stored with shape {ds.shape[1:]}, "
                               f"declared {shapes[name]}")
        cache[(a, name)] = ds
        return ds

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
            out[name] = to_torch(raw, _attr_text(ds, "stored_as", str(ds.dtype)))
        return out

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
        rows = self._rows(a)[[r for _, r in located], j]
        ds = self._dataset(a, name)
        stored_as = _attr_text(ds, "stored_as", str(ds.dtype))
        unique, inverse = np.unique(rows, return_inverse=True)
        buf = np.empty((len(unique), *ds.shape[1:]), dtype=ds.dtype)
        try:
            if len(unique) and unique[-1] - unique[0] + 1 == len(unique):
                ds.read_direct(buf, source_sel=np.s_[int(unique[0]) : int(unique[-1]) + 1])
            else:
                for k, r in enumerate(unique):
                    ds.read_direct(buf, source_sel=np.s_[int(r)], dest_sel=np.s_[k])
        except OSError as exc:
            raise ZooFileError(f"tensor {name!r} is corrupt: {exc}") from None
        values = from_storage(buf, stored_as)
        if len(unique) == len(rows) and np.array_equal(unique, rows):
            return values  # no tensor shared between checkpoints: no reordering copy
        return values[inverse]

    def predictions(self, checkpoints: Sequence[Checkpoint] | None = None) -> np.ndarray:
        if "checkpoints/predictions" not in self.f:
            raise ZooFileError("this zoo stores no predictions")
        chosen = self.checkpoints() if checkpoints is None else list(checkpoints)
        positions = [self._position[(c.member, c.epoch)] for c in chosen]
        data = self._fresh("checkpoints/predictions")[: len(self._checkpoints)]
        return data[positions]

    def prediction_kind(self) -> str | None:
        if "checkpoints/predictions" not in self.f:
            return None
        return _attr_text(self.f["checkpoints/predictions"], "kind", "class")

    def test_labels(self) -> np.ndarray | None:
        if "data/test_labels" not in self.f:
            return None
        return self.f["data/test_labels"][()]

    def model_files(self, member: Member | str) -> dict[str, bytes]:
        files = self.f["architectures"][self._arch_keys[self._arch_of(member)]]["files"]
        out = {}
        for name in files:
            check_safe_name(name, "file")
            out[name] = bytes(files[name][()].tobytes())
        return out

    def architecture_name(self, member: Member | str) -> str:
        g = self.f["architectures"][self._arch_keys[self._arch_of(member)]]
        return _attr_text(g, "name", "")

    def check_tensor(self, c: Checkpoint, name: str) -> list[str]:
        """Problems of one stored tensor: a failed checksum, a changed digest, NaN or Inf."""
        a, arch_row = self._locate(c)
        j = self._layouts[a][0].index(name)
        row = int(self._rows(a)[arch_row, j])
        seen = self.__dict__.setdefault("_checked", {})
        if (a, name, row) in seen:
            return seen[(a, name, row)]
        ds = self._dataset(a, name)
        out = np.empty(ds.shape[1:], dtype=ds.dtype)
        where = f"tensor {name!r} of {c.member}@{c.epoch}"
        problems: list[str] = []
        try:
            ds.read_direct(out, source_sel=np.s_[row])
        except OSError as exc:
            problems.append(f"{where}: checksum failed ({str(exc).split('(')[0].strip()})")
        else:
            stored = bytes(self._digest_table(a)[arch_row, j])
            if _digest(out) != stored:
                problems.append(f"{where}: content does not match its stored digest")
            values = from_storage(out, _attr_text(ds, "stored_as", str(ds.dtype)))
            if values.dtype.kind == "f" and not np.isfinite(values).all():
                bad = int((~np.isfinite(values)).sum())
                problems.append(f"{where}: {bad} NaN or Inf values")
        seen[(a, name, row)] = problems
        return problems

    def checkpoint_digests(self, c: Checkpoint) -> dict[str, str]:
        a, arch_row = self._locate(c)
        digests = self._digest_table(a)[arch_row]
        return {name: bytes(digests[j]).decode() for j, name in enumerate(self._layouts[a][0])}

    def uncommitted_rows(self) -> int:
        """Rows a writer appended after its last commit (a killed or running writer)."""
        return max(0, self.f["checkpoints/metrics"].shape[0] - len(self._checkpoints))

    def architecture(self, member: Member | str) -> Architecture:
        a = self._arch_of(member)
        names, shapes = self._layouts[a]
        tensors = self.f["architectures"][self._arch_keys[a]]["tensors"]
        dtypes = {n: str(tensors[n].dtype) for n in names if "stored_as" not in tensors[n].attrs}
        return Architecture(key=self.architecture_name(member), files=self.model_files(member),
                            shapes=dict(shapes), dtypes=dtypes)

    def header(self) -> ZooHeader:
        """The zoo-level record, to create a zoo of the same kind (merging shards)."""
        info = self.info
        p = self.f.get("checkpoints/predictions")
        preds = None if p is None else {"kind": _attr_text(p, "kind", "class"),
                                        "shape": list(p.shape[1:])}
        ids = self.f.get("data/test_ids")
        texts = self.f.get("data/test_texts")
        pairs = self.f.get("data/test_text_pairs")
        contexts = self.f.get("data/test_contexts")
        answers = self.f.get("data/test_answers")
        return ZooHeader(
            name=info["name"], config_text=self.config_text, generator=info["generator"],
            generator_version=info["generator_version"], metric_columns=list(self.metric_columns),
            data=info["data"], predictions=preds, test_labels=self.test_labels(),
            test_ids=None if ids is None else list(ids.asstr()[()]),
            test_texts=None if texts is None else list(texts.asstr()[()]),
            test_text_pairs=None if pairs is None else list(pairs.asstr()[()]),
            test_contexts=None if contexts is None else list(contexts.asstr()[()]),
            test_answers=None if answers is None else [json.loads(a) for a in answers.asstr()[()]],
            storage_dtype=info["storage_dtype"], compression=info["compression"],
            extra=info["extra"],
        )

    def _results(self) -> ResultsStore:
        """The results store beside this zoo, read once per open zoo."""
        if "_results_store" not in self.__dict__:
            self._results_store = ResultsStore.load(self.path, zoo_identity(self.f))
        return self._results_store

    def results_notes(self) -> list[str]:
        note = self._results().note
        return [note] if note else []

    def analyses(self) -> list[dict[str, Any]]:
        # Format 1 zoos written before the results store kept results inside; those
        # still read, and a result stored beside the zoo wins over one inside it.
        beside = self._results().entries
        seen = {(e["name"], e["key"]) for e in beside}
        inside = [e for e in read_entries(self.f, "zoo") if (e["name"], e["key"]) not in seen]
        return inside + beside

    def analysis_tables(self, name: str, key: str) -> dict[str, dict[str, np.ndarray]]:
        tables = self._results().tables(name, key)
        if tables is not None:
            return tables
        g = self.f.get(f"analyses/{name}/{key}")
        if g is None:
            raise ZooFileError(f"no stored analysis {name}/{key}")
        return read_tables(g)

    def analysis_figures(self, name: str, key: str) -> dict[str, bytes]:
        figures = self._results().figures(name, key)
        if figures is not None:
            return figures
        g = self.f.get(f"analyses/{name}/{key}")
        return {} if g is None else read_figures(g)

    def close(self) -> None:
        if self.f.id.valid:
            self.f.close()


def create_zoo(path: Path, header: ZooHeader, members: Sequence[Member]) -> HDF5Writer:
    if header.storage_dtype not in STORAGE_DTYPES:
        raise ZooFileError(f"unknown storage dtype {header.storage_dtype!r}",
                           hint=f"choose one of {', '.join(STORAGE_DTYPES)}")
    if header.compression not in COMPRESSIONS:
        raise ZooFileError(f"unknown compression {header.compression!r}",
                           hint=f"choose one of {', '.join(COMPRESSIONS)}")
    lock = _Lock(path)
    try:
        tmp = path.with_name(path.name + ".creating")
        with h5py.File(tmp, "w", libver="latest") as f:
            _write_header(f, header, members)
        os.replace(tmp, path)
        return HDF5Writer(path, lock)
    except BaseException:
        lock.release()
        raise

def resume_zoo(path: Path) -> HDF5Writer:
    if not path.exists():
        raise ZooFileError(f"no zoo file at {path} to resume")
    lock = _Lock(path)
    try:
        clear_write_flags(path)
        return HDF5Writer(path, lock)
    except OSError as exc:
        lock.release()
        if "unable to lock file" in str(exc):
            raise ZooFileError(f"{path} is open for writing in another process",
                               hint="wait for it to finish, or stop it first") from None
        raise ZooFileError(f"{path} cannot be reopened for writing: {exc}") from None
    except BaseException:
        lock.release()
        raise

def write_analysis(
    path: Path, name: str, key: str, options: Mapping[str, Any], summary: str,
    tables: Mapping[str, Mapping[str, np.ndarray]], figures: Mapping[str, bytes],
    inputs: Sequence[Mapping[str, Any]] = (),
) -> list[str]:
    """Store a result in the zoo's results store; the zoo itself is only read."""
    f = _open_for_reading(path)
    try:
        _check_format(f, path)
        identity, created = zoo_identity(f), _attr_text(f, "created", "")
    finally:
        f.close()
    return write_result(path, identity, created, name, key, options, summary, tables, figures,
                        inputs)


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _library_versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"zooscope": __version__, "h5py": h5py.__version__,
           "hdf5": h5py.version.hdf5_version, "numpy": np.__version__}
    for lib in ("torch", "transformers"):
        with contextlib.suppress(md.PackageNotFoundError):
            out[lib] = md.version(lib)
    return out


def _write_header(f: h5py.File, header: ZooHeader, members: Sequence[Member]) -> None:
    f.attrs["zooscope_format"] = FORMAT_VERSION
    f.attrs["name"] = header.name
    f.attrs["config"] = header.config_text
    f.attrs["generator"] = header.generator
    f.attrs["generator_version"] = header.generator_version
    f.attrs["versions"] = json.dumps(_library_versions())
    f.attrs["data"] = json.dumps(header.data)
    f.attrs["created"] = _now()
    f.attrs["storage_dtype"] = header.storage_dtype
    f.attrs["compression"] = header.compression
    f.attrs["extra"] = json.dumps(header.extra)
    g = f.create_group("members")
    n = len(members)
    for m in members:
        check_safe_name(m.id, "member")
    g.create_dataset("id", data=np.array([m.id for m in members], dtype=object), dtype=_STR)
    g.create_dataset("factors", data=np.array([canonical_json(m.factors) for m in members],
                                              dtype=object), dtype=_STR)
    g.create_dataset("lineage", data=np.array([json.dumps(m.lineage) for m in members],
                                              dtype=object), dtype=_STR)
    status = g.create_dataset("status", data=np.full(n, PENDING, dtype=np.int8))
    status.attrs["labels"] = json.dumps({str(k): v for k, v in STATUS_LABELS.items()})
    g.create_dataset("architecture", data=np.full(n, -1, dtype=np.int32))
    table = g.create_group("table")
    keys = sorted({k for m in members for k in m.factors})
    for k in keys:
        values = [m.factors.get(k) for m in members]
        if all(isinstance(v, bool) for v in values):
            table.create_dataset(k, data=np.array(values, dtype=bool))
        elif all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            table.create_dataset(k, data=np.array(values, dtype=np.int64))
        elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            table.create_dataset(k, data=np.array(values, dtype=np.float64))
        else:
            table.create_dataset(k, data=np.array([str(v) for v in values], dtype=object),
                                 dtype=_STR)
    f.create_group("architectures")
    c = f.create_group("checkpoints")
    c.create_dataset("index", shape=(0,), maxshape=(None,), dtype=_INDEX_DTYPE, chunks=(256,))
    k = len(header.metric_columns)
    # A chunk dimension must be ≥ 1, so a zoo without metrics leaves the width open.
    m = c.create_dataset("metrics", shape=(0, k), maxshape=(None, k or None), dtype="<f8",
                         chunks=(256, max(k, 1)))
    m.attrs["columns"] = json.dumps(list(header.metric_columns))
    if header.predictions is not None:
        shape = tuple(header.predictions["shape"])
        p = c.create_dataset("predictions", shape=(0, *shape), maxshape=(None, *shape),
                             dtype="<i4", chunks=(1, *[max(d, 1) for d in shape]))
        p.attrs["kind"] = header.predictions["kind"]
    d = f.create_group("data")
    if header.test_labels is not None:
        d.create_dataset("test_labels", data=np.asarray(header.test_labels))
    if header.test_ids is not None:
        d.create_dataset("test_ids", data=np.array(header.test_ids, dtype=object), dtype=_STR)
    for name in ("test_texts", "test_text_pairs"):
        values = getattr(header, name)
        if values is not None:
            d.create_dataset(name, data=np.array(values, dtype=object), dtype=_STR)
    if header.test_contexts is not None:
        d.create_dataset("test_contexts", data=np.array(header.test_contexts, dtype=object),
                         dtype=_STR)
    if header.test_answers is not None:
        d.create_dataset("test_answers", data=np.array(
            [json.dumps(a, ensure_ascii=False) for a in header.test_answers], dtype=object),
            dtype=_STR)


__all__ = ["FORMAT_VERSION", "HDF5Writer", "HDF5Zoo", "create_zoo", "resume_zoo", "write_analysis"]
