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
from zooscope.store import Architecture, ZooHeader, ZooWriter, lock_path, memory_budget
from zooscope.stores.h5results import (
    ResultsStore,
    read_entries,
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
    where = f"{obj.file.filename} is damaged: the attribute {obj.name}:{name}"
    try:
        value = obj.attrs.get(name, default)
    except UnicodeDecodeError:
        raise ZooFileError(f"{where} is not UTF-8 text") from None
    if value is None:
        raise ZooFileError(f"zoo file lacks the attribute {obj.name}:{name}")
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError:
            raise ZooFileError(f"{where} is not UTF-8 text") from None
    if not isinstance(value, str):
        raise ZooFileError(f"{where} is not text ({type(value).__name__})")
    return value


def _json_attr(obj: h5py.HLObject, name: str, default: Any = None,
               kind: type | tuple[type, ...] | None = None) -> Any:
    if name not in obj.attrs:
        if default is not None:
            return default
        raise ZooFileError(f"zoo file lacks the attribute {obj.name}:{name}")
    where = f"{obj.file.filename} is damaged: the attribute {obj.name}:{name}"
    try:
        value = json.loads(_attr_text(obj, name))
    except json.JSONDecodeError:
        raise ZooFileError(f"{where} is not valid JSON") from None
    if kind is not None and not isinstance(value, kind):
        raise ZooFileError(f"{where} holds JSON of the wrong type ({type(value).__name__})")
    return value


def _get(group: h5py.Group, name: str, path: Path, dataset: bool = True) -> Any:
    """A dataset (or group) a zoo must have; missing or of the other kind is damage."""
    obj = group.get(name)
    if obj is None:
        raise ZooFileError(f"{path} is damaged: {group.name.rstrip('/')}/{name} is missing")
    if dataset and not isinstance(obj, h5py.Dataset):
        raise ZooFileError(f"{path} is damaged: {obj.name} is not a dataset")
    if not dataset and not isinstance(obj, h5py.Group):
        raise ZooFileError(f"{path} is damaged: {obj.name} is not a group")
    return obj


def _check_dataset(ds: h5py.Dataset, path: Path, kinds: str, ndim: int,
                   rows: int | None = None, width: tuple[int, ...] | None = None) -> None:
    """A dataset's dtype kind ("T" for text), rank, and, where given, its trailing shape and
    at least ``rows`` rows, which the file must really hold (see ``_check_backed``)."""
    text = ds.dtype.kind == "O" and h5py.check_string_dtype(ds.dtype) is not None
    kind = "T" if text else ds.dtype.kind
    if kind not in kinds:
        raise ZooFileError(f"{path} is damaged: {ds.name} has the dtype {ds.dtype}")
    if ds.ndim != ndim:
        raise ZooFileError(f"{path} is damaged: {ds.name} has shape {ds.shape}, expected "
                           f"{ndim} dimension(s)")
    if width is not None and tuple(ds.shape[1:]) != tuple(width):
        raise ZooFileError(f"{path} is damaged: {ds.name} has shape {ds.shape}, rows of "
                           f"{tuple(width)} expected")
    if rows is not None:
        if ds.shape[0] < rows:
            raise ZooFileError(f"{path} is damaged: {ds.name} has {ds.shape[0]} rows, "
                               f"{rows} expected")
        _check_backed(ds, rows, path)


def _check_backed(ds: h5py.Dataset, rows: int, path: Path) -> None:
    """Refuse to read ``rows`` rows of a dataset whose declared size the file cannot hold.

    A small file may declare a billion rows; reading them would allocate that much.
    Without filters the stored bytes must cover the rows; with filters (compression can
    shrink zeros 30 000-fold) every chunk the rows lie in must be stored. Either way the
    rows must fit the memory budget.
    """
    width = int(np.prod(ds.shape[1:], dtype=np.float64)) if ds.ndim else 1
    needed = rows * width * ds.id.get_type().get_size()
    if needed > memory_budget():
        raise ZooFileError(f"{path}: {ds.name} declares {needed / 2**30:,.1f} GiB to read, more "
                           "than this machine's memory allows",
                           hint="the file is damaged or crafted; a real zoo splits such data")
    if needed == 0:
        return
    dcpl = ds.id.get_create_plist()
    if dcpl.get_nfilters() == 0:
        held = ds.id.get_storage_size()
    else:
        chunk = ds.chunks or ds.shape
        per_chunk = int(np.prod(chunk, dtype=np.float64)) * ds.id.get_type().get_size()
        held = ds.id.get_num_chunks() * per_chunk
    if held < needed:
        raise ZooFileError(f"{path} is damaged: {ds.name} declares shape {ds.shape} but the "
                           f"file holds {held:,} of the {needed:,} bytes its rows need")


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
        self.path = lock_path(path)
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
        lock = lock_path(path)
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

    try:
        f.id.links.visit(visit, info=True)
    except (OSError, RuntimeError, KeyError) as exc:
        raise ZooFileError(f"{path} is damaged: {_damaged_object(f)} cannot be read "
                           f"({_reason(exc).split('(')[-1].rstrip(')')})",
                           hint="`zooscope zoo validate` lists what it finds") from None
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


def _damaged_object(f: h5py.File) -> str:
    """The first object whose metadata HDF5 cannot read (a failed checksum, say), found by
    opening every object in turn; names it for the error message."""
    pending: list[h5py.Group] = [f]
    while pending:
        group = pending.pop()
        try:
            names = list(group)
            group.attrs.keys()
        except (OSError, RuntimeError, KeyError):
            return f"the group {group.name}"
        for name in names:
            where = f"{group.name.rstrip('/')}/{name}"
            try:
                obj = group[name]
                if isinstance(obj, h5py.Dataset):
                    obj.dtype, obj.shape  # noqa: B018 - reading them is the check
            except (OSError, RuntimeError, KeyError, ValueError):
                return f"the object {where}"
            if isinstance(obj, h5py.Group):
                pending.append(obj)
    return "an object"


def _check_format(f: h5py.File, path: Path) -> int:
    if "zooscope_format" not in f.attrs:
        raise ZooFileError(f"{path} is an HDF5 file but not a zooscope zoo (no zooscope_format)")
    raw = f.attrs["zooscope_format"]
    if not isinstance(raw, (int, np.integer)) or isinstance(raw, (bool, np.bool_)):
        raise ZooFileError(f"{path} is damaged: the attribute zooscope_format is not an integer")
    version = int(raw)
    if version < 1:
        raise ZooFileError(f"{path} is damaged: zooscope_format is {version}; formats start at 1")
    if version > FORMAT_VERSION:
        raise ZooFileError(
            f"{path} uses zoo format {version}; this zooscope reads format {FORMAT_VERSION}",
            hint="upgrade zooscope to read it",
        )
    for group in ("members", "architectures", "checkpoints"):
        if group not in f:
            raise ZooFileError(f"{path} is damaged: the group /{group} is missing")
        if not isinstance(f[group], h5py.Group):
            raise ZooFileError(f"{path} is damaged: /{group} is not a group")
    return version


def _architecture_layout(group: h5py.Group) -> tuple[list[str], dict[str, tuple[int, ...]]]:
    names = _json_attr(group, "tensor_names")
    shapes_raw = _json_attr(group, "shapes")
    damaged = f"{group.file.filename} is damaged:"
    if not isinstance(names, list) or not isinstance(shapes_raw, dict):
        raise ZooFileError(f"{damaged} architecture {group.name} has a malformed tensor layout")
    shapes: dict[str, tuple[int, ...]] = {}
    for name in names:
        check_safe_name(name, "tensor")
        shape = shapes_raw.get(name)
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise ZooFileError(f"{damaged} tensor {name!r} has a malformed shape {shape!r}")
        if int(np.prod(shape, dtype=np.float64)) > MAX_TENSOR_ELEMENTS:
            raise ZooFileError(f"{damaged} tensor {name!r} declares an absurd shape {shape}")
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
            check_safe_name(v.decode() if isinstance(v, bytes) else v, "member"): i
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
            raise _damage(self.path, self.f, exc) from None
    return wrapper


def _damage(path: Path, f: h5py.File, exc: BaseException) -> ZooFileError:
    """The error for what h5py raised on a damaged file, naming the object when HDF5
    could not read its metadata."""
    reason = _reason(exc)
    if isinstance(exc, (OSError, KeyError, RuntimeError)) and "checksum" in reason:
        reason = f"{_damaged_object(f)} cannot be read ({reason.split('(')[-1].rstrip(')')})"
    return ZooFileError(f"{path} is damaged: {reason}",
                        hint="`zooscope zoo validate` lists what it finds")


def _reason(exc: BaseException) -> str:
    """h5py's message without its noise: "Unable to open object (object 'rows' doesn't exist)"."""
    text = (str(exc).strip() or type(exc).__name__).splitlines()[0].strip("'\"")
    return text.replace("Unable to synchronously ", "cannot ")


#: The fields of a checkpoint index row and the dtype kinds each may have.
_INDEX_FIELDS = {"member": "iu", "epoch": "iu", "step": "iu", "wall_time": "f",
                 "architecture": "iu", "arch_row": "iu"}
_STORED_AS = {"float32": np.dtype("<f4"), "float16": np.dtype("<f2"),
              "bfloat16": np.dtype("<u2")}
#: The largest model file (config.json, tokenizer files) a zoo may hold.
MAX_MODEL_FILE = 2**30


class HDF5Zoo(Zoo):
    """A read-only view of the committed state of a zoo file.

    Opening checks the structure docs/format.md promises (groups, dtypes, shapes,
    lengths that agree, index rows that point inside their tables) and that every
    declared size is backed by the file; each tensor dataset is checked when first read
    (``check_structure`` checks them all).
    """

    def __init__(self, path: Path, handle: h5py.File | None = None) -> None:
        self.path = path
        self.f = handle if handle is not None else _open_for_reading(path)
        try:
            self._load()
        except ZooFileError:
            self.f.close()
            raise
        except (KeyError, ValueError, TypeError, OSError, IndexError, RuntimeError) as exc:
            error = _damage(path, self.f, exc)
            self.f.close()
            raise error from None

    def _load(self) -> None:
        f, path = self.f, self.path
        self.format_version = _check_format(f, path)
        _check_safe_file(f, path)
        for name in ("storage_dtype", "compression"):
            value = _attr_text(f, name, "float32" if name == "storage_dtype" else "none")
            if value not in (STORAGE_DTYPES if name == "storage_dtype" else COMPRESSIONS):
                raise ZooFileError(f"{path} is damaged: unknown {name} {value!r}")
        for name in ("name", "config", "generator", "generator_version", "created"):
            if name in f.attrs:
                _attr_text(f, name)
        for name in ("versions", "data", "extra"):
            _json_attr(f, name, {}, kind=dict)
        members = f["members"]
        id_ds = _get(members, "id", path)
        _check_dataset(id_ds, path, "T", 1)
        m = id_ds.shape[0]
        _check_dataset(id_ds, path, "T", 1, rows=m)
        kinds = {"factors": "T", "lineage": "T", "status": "iu", "architecture": "iu"}
        for name, kind in kinds.items():
            ds = _get(members, name, path)
            _check_dataset(ds, path, kind, 1)
            if ds.shape[0] != m:
                raise ZooFileError(f"{path} is damaged: {ds.name} has {ds.shape[0]} rows, "
                                   f"/members/id {m}")
            _check_backed(ds, m, path)
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

        # Architectures: a0, a1, ... each with a layout, a rows table and digests.
        keys = list(f["architectures"])
        expected = [f"a{k}" for k in range(len(keys))]
        if sorted(keys) != sorted(expected):
            odd = sorted(set(keys) - set(expected))[:1] or keys[:1]
            raise ZooFileError(f"{path} is damaged: /architectures holds {odd[0]!r}; groups "
                               "are named a0, a1, ... in turn")
        self._arch_keys = expected
        self._layouts = []
        for key in self._arch_keys:
            group = _get(f["architectures"], key, path, dataset=False)
            names, shapes = _architecture_layout(group)
            self._layouts.append((names, shapes))
            stored = _get(group, "tensors", path, dataset=False)
            missing = [n for n in names if n not in stored]
            if missing:
                raise ZooFileError(f"tensor {missing[0]!r} is declared but missing in {key}")
            rows = _get(group, "rows", path)
            _check_dataset(rows, path, "iu", 2, width=(len(names),))
            digests = _get(group, "digests", path)
            _check_dataset(digests, path, "S", 2, width=(len(names),))
            files = _get(group, "files", path, dataset=False)
            for fname, ds in files.items():
                check_safe_name(fname, "file")
                if not isinstance(ds, h5py.Dataset) or ds.dtype != np.uint8 or ds.ndim != 1:
                    raise ZooFileError(f"{path} is damaged: {group.name}/files/{fname} is not "
                                       "a file (a 1-D uint8 dataset)")
                if ds.shape[0] > MAX_MODEL_FILE:
                    raise ZooFileError(f"{path} is damaged: {ds.name} declares "
                                       f"{ds.shape[0]:,} bytes, more than a model file holds")
                _check_backed(ds, ds.shape[0], path)
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
        index_ds = _get(checkpoints, "index", path)
        if index_ds.dtype.names is None or any(
                name not in index_ds.dtype.names or index_ds.dtype[name].kind not in kinds
                for name, kinds in _INDEX_FIELDS.items()):
            raise ZooFileError(f"{path} is damaged: /checkpoints/index lacks the fields "
                               f"{', '.join(_INDEX_FIELDS)}")
        if index_ds.ndim != 1:
            raise ZooFileError(f"{path} is damaged: /checkpoints/index is not one-dimensional")
        if self.f.swmr_mode:
            index_ds.refresh()
        n = index_ds.shape[0]
        _check_backed(index_ds, n, path)
        self._index = index_ds[()]
        metrics_ds = _get(checkpoints, "metrics", path)
        self.metric_columns = _json_attr(metrics_ds, "columns", kind=list)
        if not all(isinstance(c, str) for c in self.metric_columns):
            raise ZooFileError(f"{path} is damaged: /checkpoints/metrics:columns is not a list "
                               "of names")
        if self.f.swmr_mode:
            metrics_ds.refresh()
        if metrics_ds.ndim == 2 and metrics_ds.shape[0] < n:
            raise ZooFileError(f"{path} is damaged: fewer metric rows than checkpoints "
                               f"(/checkpoints/metrics has {metrics_ds.shape[0]}, the index {n})")
        _check_dataset(metrics_ds, path, "f", 2, rows=n, width=(len(self.metric_columns),))
        metrics = metrics_ds[:n]
        self._check_index(n)
        self._check_test_data(n)
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
        for a, key in enumerate(self._arch_keys):
            mine = index["arch_row"][arch == a].astype(np.int64)
            used = int(mine.max()) + 1 if len(mine) else 0
            group = self.f["architectures"][key]
            for name in ("rows", "digests"):
                ds = group[name]
                if self.f.swmr_mode:
                    ds.refresh()
                if len(mine) and mine.min() < 0 or ds.shape[0] < used:
                    raise ZooFileError(f"{where} points at row {used - 1} of {ds.name}, which "
                                       f"has {ds.shape[0]} rows")
                _check_backed(ds, used, path)
            self._committed.append(used)

    def _check_test_data(self, n: int) -> None:
        """Predictions and the test split's data agree with each other and the index."""
        f, path = self.f, self.path
        n_test = None
        data = f.get("data")
        if data is not None and not isinstance(data, h5py.Group):
            raise ZooFileError(f"{path} is damaged: /data is not a group")
        for name, kind in (("test_labels", "iu"), ("test_ids", "T"), ("test_contexts", "T"),
                           ("test_answers", "T")):
            if data is None or name not in data:
                continue
            ds = _get(data, name, path)
            _check_dataset(ds, path, kind, 1, rows=ds.shape[0] if ds.ndim == 1 else None)
            if n_test is not None and ds.shape[0] != n_test:
                raise ZooFileError(f"{path} is damaged: {ds.name} has {ds.shape[0]} rows, "
                                   f"the test split {n_test}")
            n_test = ds.shape[0]
        if "predictions" not in f["checkpoints"]:
            return
        ds = _get(f["checkpoints"], "predictions", path)
        kind = _attr_text(ds, "kind", "class")
        if kind not in ("class", "span"):
            raise ZooFileError(f"{path} is damaged: /checkpoints/predictions:kind is {kind!r}, "
                               "not class or span")
        if self.f.swmr_mode:
            ds.refresh()
        width = None if n_test is None else ((n_test,) if kind == "class" else (n_test, 2))
        _check_dataset(ds, path, "iu", 2 if kind == "class" else 3, rows=n, width=width)
        if kind == "span" and ds.shape[2] != 2:
            raise ZooFileError(f"{path} is damaged: span predictions need rows of (n_test, 2), "
                               f"not {ds.shape[1:]}")

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
    @_reads
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

    @_reads
    def tensor_names(self, member: Member | str | None = None) -> list[str]:
        if member is None:
            if not self._layouts:
                return []
            return list(self._layouts[0][0])
        return list(self._layouts[self._arch_of(member)][0])

    @_reads
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
        """The committed part of an architecture's rows table (checked at opening)."""
        cache = self.__dict__.setdefault("_rows_cache", {})
        if a not in cache:
            cache[a] = self._fresh(f"architectures/{self._arch_keys[a]}/rows")[
                : self._committed[a]]
        return cache[a]

    def _digest_table(self, a: int) -> np.ndarray:
        cache = self.__dict__.setdefault("_digest_cache", {})
        if a not in cache:
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
        ds = _get(self.f["architectures"][self._arch_keys[a]]["tensors"], name, self.path)
        if self.f.swmr_mode:
            ds.refresh()
        where = f"{self.path} is damaged: {ds.name}"
        if ds.dtype.kind not in _ALLOWED_KINDS or ds.ndim != len(shapes[name]) + 1:
            raise ZooFileError(f"{where} has dtype {ds.dtype} and shape {ds.shape}")
        if ds.shape[1:] != shapes[name]:
            raise ZooFileError(f"tensor {name!r} is stored with shape {ds.shape[1:]}, "
                               f"declared {shapes[name]}")
        if "stored_as" in ds.attrs:
            stored_as = _attr_text(ds, "stored_as")
            if stored_as not in _STORED_AS:
                raise ZooFileError(f"{where} is stored_as {stored_as!r}, not one of "
                                   f"{', '.join(_STORED_AS)}")
            if ds.dtype != _STORED_AS[stored_as]:
                raise ZooFileError(f"{where} is stored_as {stored_as} but holds {ds.dtype}")
        elif ds.dtype.kind == "f":
            raise ZooFileError(f"{where} is a floating tensor without a stored_as attribute")
        rows = self._rows(a)[:, names.index(name)]
        outside = rows[(rows < 0) | (rows >= ds.shape[0])]
        if len(outside):
            raise ZooFileError(f"{where} has {ds.shape[0]} rows, but /architectures/"
                               f"{self._arch_keys[a]}/rows points at row {int(outside[0])}")
        top = int(rows.max()) + 1 if len(rows) else 0
        _check_backed(ds, top, self.path)
        cache[(a, name)] = ds
        return ds

    @_reads
    def check_structure(self) -> list[str]:
        """Problems of the structure that opening leaves to first use: every tensor
        dataset, the member table and stored analyses. Empty when sound."""
        problems: list[str] = []
        for a in range(len(self._arch_keys)):
            for name in self._layouts[a][0]:
                try:
                    self._dataset(a, name)
                except ZooFileError as exc:
                    problems.append(str(exc))
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
                problems.append(str(exc))
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
            out[name] = to_torch(raw, _attr_text(ds, "stored_as", str(ds.dtype)))
        return out

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

    @_reads
    def predictions(self, checkpoints: Sequence[Checkpoint] | None = None) -> np.ndarray:
        if "checkpoints/predictions" not in self.f:
            raise ZooFileError("this zoo stores no predictions")
        chosen = self.checkpoints() if checkpoints is None else list(checkpoints)
        positions = [self._position[(c.member, c.epoch)] for c in chosen]
        data = self._fresh("checkpoints/predictions")[: len(self._checkpoints)]
        return data[positions]

    @_reads
    def prediction_kind(self) -> str | None:
        if "checkpoints/predictions" not in self.f:
            return None
        return _attr_text(self.f["checkpoints/predictions"], "kind", "class")

    @_reads
    def test_labels(self) -> np.ndarray | None:
        if "data/test_labels" not in self.f:
            return None
        return self.f["data/test_labels"][()]

    @_reads
    def model_files(self, member: Member | str) -> dict[str, bytes]:
        files = self.f["architectures"][self._arch_keys[self._arch_of(member)]]["files"]
        out = {}
        for name in files:
            check_safe_name(name, "file")
            out[name] = bytes(files[name][()].tobytes())
        return out

    @_reads
    def architecture_name(self, member: Member | str) -> str:
        g = self.f["architectures"][self._arch_keys[self._arch_of(member)]]
        return _attr_text(g, "name", "")

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
            order = _json_attr(tgroup, "columns", [], kind=list)
            cols = {}
            for col in order:
                if not isinstance(col, str):
                    raise ZooFileError(f"{self.path} is damaged: {tgroup.name}:columns holds "
                                       f"{col!r}, not a column name")
                ds = _get(tgroup, col, self.path)
                # Columns are one value a row; a value may itself be a vector.
                _check_dataset(ds, self.path, "iufbT", max(ds.ndim, 1),
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
            ds = _get(self.f[path], n, self.path)
            _check_dataset(ds, self.path, "u", 1, rows=ds.shape[0] if ds.ndim == 1 else None)
            figures[n] = bytes(ds[()].tobytes())
        return figures

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
        try:
            handle = _open_for_reading(path, wait=0)
        except ZooFileError:
            handle = None  # a writer killed outside SWMR mode: clearing its flag fixes that
        if handle is not None:
            HDF5Zoo(path, handle).close()  # refuses a damaged zoo before anything changes
        clear_write_flags(path)
        return HDF5Writer(path, lock)
    except (KeyError, ValueError, TypeError) as exc:
        lock.release()
        raise ZooFileError(f"{path} is damaged: {_reason(exc)}") from None
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
