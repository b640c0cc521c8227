"""Writing a zoo: creating it, resuming it, and committing checkpoints.

The layout is append-only: one extendible dataset per tensor with a row per unique
tensor value, and a checkpoint index whose appended row is the commit record. A
writer works in SWMR mode, so readers can follow a running generation and a killed
writer leaves every committed checkpoint readable.
"""

from __future__ import annotations

import json
import os
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from zooscope.errors import ZooFileError
from zooscope.record import ZooRecord
from zooscope.store import ZooWriter
from zooscope.stores.h5checks import check_format, short_reason
from zooscope.stores.h5layout import (
    CARD,
    COMPRESSIONS,
    INDEX_DTYPE,
    STORAGE_DTYPES,
    architecture_layout,
    attr_text,
    compression_filter,
    create_card,
    fingerprint,
    json_attr,
    row_digest,
    to_storage,
    to_torch,
    write_header,
)
from zooscope.stores.h5lock import WriterLock, open_for_reading
from zooscope.stores.h5reader import HDF5Zoo
from zooscope.stores.superblock import clear_write_flags
from zooscope.zoo import (
    PENDING,
    RUNNING,
    STATUS_CODES,
    STATUS_LABELS,
    Architecture,
    Member,
    check_safe_name,
)

# Rows of 64 KiB and more start on a 4 KiB page boundary: the kernel copies whole pages
# into the page cache (a bert-base checkpoint wrote 5% faster when measured) for at
# most 4 KiB of padding per row.
ALIGNMENT = {"alignment_threshold": 64 * 1024, "alignment_interval": 4096}
# Tensors converted and digested ahead of the one being written.
LOOKAHEAD = 4


def prepared(state_dict: Mapping[str, Any], names: Sequence[str], storage_dtype: str,
             pool: ThreadPoolExecutor) -> Iterator[tuple[np.ndarray, bytes]]:
    """Each tensor as stored, with its digest, in ``names`` order; a worker thread
    converts and digests up to LOOKAHEAD tensors ahead of the caller, who writes
    meanwhile (xxhash and torch release the GIL, so the two overlap)."""

    def one(name: str) -> tuple[np.ndarray, bytes]:
        array = to_storage(state_dict[name], storage_dtype)
        return array, row_digest(array)

    pending: deque = deque()
    for name in names:
        pending.append(pool.submit(one, name))
        if len(pending) > LOOKAHEAD:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


class HDF5Writer(ZooWriter):
    """Appends checkpoints to one zoo file; the only process allowed to write it."""

    def __init__(self, path: Path, lock: WriterLock) -> None:
        self.path = path
        self._lock = lock
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="zooscope-digest")
        self.f = h5py.File(path, "r+", libver="latest", locking=False, **ALIGNMENT)
        self._load()
        self._truncate_uncommitted()
        self._enter_swmr()

    # -- state ------------------------------------------------------------------------
    def _load(self) -> None:
        f = self.f
        check_format(f, self.path)
        self.storage_dtype = attr_text(f, "storage_dtype", "float32")
        self.compression = attr_text(f, "compression", "none")
        self.metric_columns = json_attr(f["checkpoints/metrics"], "columns")
        self.member_index = {
            check_safe_name(v.decode() if isinstance(v, bytes) else v, "member"): i
            for i, v in enumerate(f["members/id"][()])
        }
        self.arch_keys = [k for k in sorted(f["architectures"], key=lambda s: int(s[1:]))]
        self._digests: dict[str, list[dict[bytes, int]]] = {}
        self._names: dict[str, list[str]] = {}
        for key in self.arch_keys:
            names, _ = architecture_layout(f["architectures"][key])
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
        self.f = h5py.File(self.path, "r+", libver="latest", locking=False, **ALIGNMENT)

    # -- ZooWriter ----------------------------------------------------------------------
    def _find_architecture(self, arch: Architecture) -> int | None:
        fp = fingerprint(arch)
        for a, key in enumerate(self.arch_keys):
            if attr_text(self.f["architectures"][key], "fingerprint") == fp:
                return a
        return None

    def ensure_architecture(self, arch: Architecture) -> None:
        if self._find_architecture(arch) is not None:
            return
        self._leave_swmr()
        try:
            key = add_architecture(self.f, arch, self.storage_dtype, self.compression)
            names = list(arch.shapes)
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
        return {name: to_torch(ds[int(rows[j])], attr_text(ds, "stored_as", str(ds.dtype)))
                for j, (name, ds) in enumerate(zip(self._names[key], self._tensor_datasets(key),
                                                   strict=True))}

    def _started(self, member: Member) -> tuple[int, int, str]:
        """The member's row, architecture index and key; it must have been started."""
        i = self._member(member)
        a = int(self.f["members/architecture"][i])
        if a < 0:
            raise ZooFileError(f"member {member.id} was not started")
        return i, a, self.arch_keys[a]

    def write_checkpoint(
        self, member: Member, epoch: int, step: int, wall_time: float,
        state_dict: Mapping[str, Any], metrics: Mapping[str, float],
        predictions: np.ndarray | None,
    ) -> None:
        i, a, key = self._started(member)
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
        stream = prepared(state_dict, names, self.storage_dtype, self._pool)
        try:
            for j, (array, digest) in enumerate(stream):
                ds = datasets[j].id  # the low-level dataset: no per-call Python wrapping
                shape = ds.shape
                if array.shape != shape[1:]:
                    raise ZooFileError(f"tensor {names[j]} has shape {array.shape}, "
                                       f"expected {shape[1:]}")
                row = maps[j].get(digest)
                if row is None:
                    row = shape[0]
                    ds.set_extent((row + 1, *shape[1:]))
                    data = np.asarray(array, dtype=ds.dtype, order="C")
                    if self.compression == "none" and data.size and data.ndim:
                        # One row is one chunk: hand HDF5 the bytes, skipping selection
                        # and conversion machinery (3-5x faster for large tensors).
                        ds.write_direct_chunk((row,) + (0,) * data.ndim, data)
                    else:
                        datasets[j].write_direct(data, dest_sel=np.s_[row])
                    maps[j][digest] = row
                rows[j] = row
                digests[j] = digest
        finally:
            stream.close()  # an error stops the worker after what it has started
        self._commit(i, a, epoch, step, wall_time, rows, digests, metrics, predictions)

    def copy_checkpoint(self, source: Any, member: Member, checkpoint: Any,
                        predictions: np.ndarray | None) -> bool:
        """Commit ``source``'s checkpoint (an open HDF5 zoo of the same storage dtype and
        compression) by copying each stored chunk as it is: no decoding, no conversion,
        no digest recomputed; rows this zoo already holds are pointed at. False where the
        zoos differ in how they store tensors (the caller then writes the state dict)."""
        holder = getattr(source, "part_holding", None)
        if holder is not None:  # a zoo of parts: the part file holding the checkpoint
            source = holder(member, checkpoint.epoch)
        if not isinstance(source, HDF5Zoo):  # another store's zoo: decoded and written
            return False
        if (attr_text(source.f, "storage_dtype", "float32"), attr_text(source.f, "compression",
                                                                       "none")) != (
                self.storage_dtype, self.compression):
            return False
        i, a, key = self._started(member)
        names = self._names[key]
        stored = source.stored_rows(member, checkpoint.epoch)
        if [name for name, *_ in stored] != names:
            return False
        datasets = self._tensor_datasets(key)
        if any(src.shape[1:] != ds.shape[1:] or src.dtype != ds.dtype or src.chunks != ds.chunks
               for (_n, _d, src, _r), ds in zip(stored, datasets, strict=True)):
            return False
        rows = np.empty(len(names), dtype="<i8")
        digests = np.empty(len(names), dtype="S32")
        maps = self._digests[key]
        for j, (_name, digest, src, src_row) in enumerate(stored):
            row = maps[j].get(digest)
            if row is None:
                ds = datasets[j].id
                shape = ds.shape
                row = shape[0]
                ds.set_extent((row + 1, *shape[1:]))
                if len(shape) > 1 and int(np.prod(shape[1:])):
                    offset = (0,) * (len(shape) - 1)
                    mask, chunk = src.id.read_direct_chunk((src_row, *offset))
                    ds.write_direct_chunk((row, *offset), chunk, mask)
                else:
                    datasets[j][row] = src[src_row]
                maps[j][digest] = row
            rows[j] = row
            digests[j] = digest
        self._commit(i, a, checkpoint.epoch, checkpoint.step, checkpoint.wall_time, rows,
                     digests, checkpoint.metrics, predictions)
        return True

    def _commit(self, i: int, a: int, epoch: int, step: int, wall_time: float,
                rows: np.ndarray, digests: np.ndarray, metrics: Mapping[str, float],
                predictions: np.ndarray | None) -> None:
        """Append the checkpoint's rows, digests, metrics and predictions, then its index
        row: the commit record."""
        f = self.f
        group = f["architectures"][self.arch_keys[a]]
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
        idx[c] = np.array([(i, epoch, step, wall_time, a, arch_row)], dtype=INDEX_DTYPE)[0]
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

    def write_card(self, text: str) -> None:
        data = np.frombuffer(text.encode(), dtype=np.uint8)
        if CARD not in self.f:  # a zoo created before zoos carried cards
            self._leave_swmr()
            try:
                create_card(self.f)
            finally:
                self._enter_swmr()
        ds = self.f[CARD]
        if len(data) < ds.shape[0]:
            data = np.concatenate([data, np.zeros(ds.shape[0] - len(data), np.uint8)])
        ds.resize((len(data),))
        ds[:] = data
        self.f.flush()

    def close(self) -> None:
        self._pool.shutdown()
        if self.f.id.valid:
            self.f.close()
        self._lock.release()


def add_architecture(f: h5py.File, arch: Architecture, storage_dtype: str,
                     compression: str) -> str:
    """Record an architecture (docs/format.md, ``/architectures/a{k}``) in an open file;
    its key."""
    key = f"a{len(f['architectures'])}"
    g = f["architectures"].create_group(key)
    g.attrs["fingerprint"] = fingerprint(arch)
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
    filters = compression_filter(compression)
    for name, shape in arch.shapes.items():
        dtype = arch.dtypes.get(name, "float")  # non-float tensors keep their dtype
        stored = (
            np.dtype(dtype)
            if dtype != "float"
            else np.dtype("uint16" if storage_dtype == "bfloat16" else storage_dtype)
        )
        tensors.create_dataset(
            name, shape=(0, *shape), maxshape=(None, *shape), dtype=stored,
            chunks=(1, *[max(d, 1) for d in shape]) if shape else (1,),
            **filters,
        )
        if dtype == "float":
            tensors[name].attrs["stored_as"] = storage_dtype
    t = len(names)
    g.create_dataset("rows", shape=(0, t), maxshape=(None, t), dtype="<i8",
                     chunks=(64, max(t, 1)))
    g.create_dataset("digests", shape=(0, t), maxshape=(None, t), dtype="S32",
                     chunks=(64, max(t, 1)))
    return key


def create_zoo(path: Path, record: ZooRecord, members: Sequence[Member],
               architectures: Sequence[Architecture] = (),
               started: Mapping[str, int] | None = None) -> HDF5Writer:
    """Create a zoo file whole: written beside as ``NAME.creating``, then renamed. It
    holds ``architectures`` and, for the members in ``started``, the index of the
    architecture each uses and each member's status, so that a part continuing a zoo
    (``h5parts``) needs no change outside SWMR mode before its first checkpoint."""
    if record.storage_dtype not in STORAGE_DTYPES:
        raise ZooFileError(f"unknown storage dtype {record.storage_dtype!r}",
                           hint=f"choose one of {', '.join(STORAGE_DTYPES)}")
    if record.compression not in COMPRESSIONS:
        raise ZooFileError(f"unknown compression {record.compression!r}",
                           hint=f"choose one of {', '.join(COMPRESSIONS)}")
    lock = WriterLock(path)
    try:
        tmp = path.with_name(path.name + ".creating")
        with h5py.File(tmp, "w", libver="latest") as f:
            write_header(f, record, members)
            for arch in architectures:
                add_architecture(f, arch, record.storage_dtype, record.compression)
            if any(m.status != STATUS_LABELS[PENDING] for m in members):
                f["members/status"][:] = np.array([STATUS_CODES.get(m.status, PENDING)
                                                   for m in members], dtype=np.int8)
            if started:
                f["members/architecture"][:] = np.array(
                    [started.get(m.id, -1) for m in members],
                    dtype=f["members/architecture"].dtype)
        os.replace(tmp, path)
        return HDF5Writer(path, lock)
    except BaseException:
        lock.release()
        raise


def resume_zoo(path: Path) -> HDF5Writer:
    if not path.exists():
        raise ZooFileError(f"no zoo file at {path} to resume")
    lock = WriterLock(path)
    try:
        try:
            handle = open_for_reading(path, wait=0)
        except ZooFileError:
            handle = None  # a writer killed outside SWMR mode: clearing its flag fixes that
        if handle is not None:
            HDF5Zoo(path, handle).close()  # refuses a damaged zoo before anything changes
        clear_write_flags(path)
        return HDF5Writer(path, lock)
    except (KeyError, ValueError, TypeError) as exc:
        lock.release()
        raise ZooFileError(f"{path} is damaged: {short_reason(exc)}") from None
    except OSError as exc:
        lock.release()
        if "unable to lock file" in str(exc):
            raise ZooFileError(f"{path} is open for writing in another process",
                               hint="wait for it to finish, or stop it first") from None
        raise ZooFileError(f"{path} cannot be reopened for writing: {exc}") from None
    except BaseException:
        lock.release()
        raise
