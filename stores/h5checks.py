"""Checks that make a hostile or damaged HDF5 file an error naming what is wrong,
never a crash, an escape or an unbounded read."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from zooscope.errors import ZooFileError
from zooscope.store import memory_budget
from zooscope.stores.h5layout import ALLOWED_KINDS, FORMAT_VERSION


def get_node(group: h5py.Group, name: str, path: Path, dataset: bool = True) -> Any:
    """A dataset (or group) a zoo must have; missing or of the other kind is damage."""
    obj = group.get(name)
    if obj is None:
        raise ZooFileError(f"{path} is damaged: {group.name.rstrip('/')}/{name} is missing")
    if dataset and not isinstance(obj, h5py.Dataset):
        raise ZooFileError(f"{path} is damaged: {obj.name} is not a dataset")
    if not dataset and not isinstance(obj, h5py.Group):
        raise ZooFileError(f"{path} is damaged: {obj.name} is not a group")
    return obj


def check_dataset(ds: h5py.Dataset, path: Path, kinds: str, ndim: int,
                  rows: int | None = None, width: tuple[int, ...] | None = None) -> None:
    """A dataset's dtype kind ("T" for text), rank, and, where given, its trailing shape and
    at least ``rows`` rows, which the file must really hold (see ``check_backed``)."""
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
        check_backed(ds, rows, path)


def check_backed(ds: h5py.Dataset, rows: int, path: Path) -> None:
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


TENSOR_PATH = re.compile(rb"architectures/a[0-9]+/tensors/[^/]+")


def check_safe_file(f: h5py.File, path: Path, tensors: bool = True) -> None:
    """Reject links out of the file, virtual or external datasets, and odd dtypes.

    ``tensors=False`` leaves the tensor datasets to ``check_safe_dataset`` when each is
    first read: opening a zoo then costs the same for a zoo of 200 tensors as of 20.
    """
    problems: list[str] = []
    names: list[bytes] = []

    def visit(name: bytes, info: h5py.h5l.LinkInfo) -> None:
        if info.type == h5py.h5l.TYPE_EXTERNAL:
            problems.append(f"external link {name.decode(errors='replace')!r}")
        elif info.type != h5py.h5l.TYPE_HARD:
            problems.append(f"soft link {name.decode(errors='replace')!r}")
        elif tensors or not TENSOR_PATH.fullmatch(name):
            names.append(name)

    try:
        f.id.links.visit(visit, info=True)
    except (OSError, RuntimeError, KeyError) as exc:
        raise ZooFileError(f"{path} is damaged: {damaged_object(f)} cannot be read "
                           f"({short_reason(exc).split('(')[-1].rstrip(')')})",
                           hint="`zooscope zoo validate` lists what it finds") from None
    if problems:
        raise ZooFileError(f"{path} is unsafe: it holds an {problems[0]}",
                           hint="zoo files never link outside themselves")
    # Low-level opens: opening every object through h5py's high-level API costs more
    # than the rest of opening a zoo.
    for name in names:
        obj = h5py.h5o.open(f.id, name)
        if isinstance(obj, h5py.h5d.DatasetID):
            check_safe_dataset(obj, name.decode(errors="replace"), path)


def check_safe_dataset(ds: h5py.h5d.DatasetID, label: str, path: Path) -> None:
    """Refuse a virtual dataset, one with external storage, or one of an odd dtype."""
    dcpl = ds.get_create_plist()
    if dcpl.get_layout() == h5py.h5d.VIRTUAL:
        problem = f"virtual dataset {label!r}"
    elif dcpl.get_external_count():
        problem = f"dataset {label!r} with external storage"
    elif ds.dtype.kind not in ALLOWED_KINDS | {"O", "S", "V"}:
        problem = f"dataset {label!r} of unexpected dtype {ds.dtype}"
    else:
        return
    raise ZooFileError(f"{path} is unsafe: it holds a {problem}",
                       hint="zoo files keep all their data inside themselves")


def damaged_object(f: h5py.File) -> str:
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


def check_format(f: h5py.File, path: Path) -> int:
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


def damage(path: Path, f: h5py.File, exc: BaseException) -> ZooFileError:
    """The error for what h5py raised on a damaged file, naming the object when HDF5
    could not read its metadata."""
    reason = short_reason(exc)
    if isinstance(exc, (OSError, KeyError, RuntimeError)) and "checksum" in reason:
        reason = f"{damaged_object(f)} cannot be read ({reason.split('(')[-1].rstrip(')')})"
    return ZooFileError(f"{path} is damaged: {reason}",
                        hint="`zooscope zoo validate` lists what it finds")


def short_reason(exc: BaseException) -> str:
    """h5py's message without its noise: "Unable to open object (object 'rows' doesn't exist)"."""
    text = (str(exc).strip() or type(exc).__name__).splitlines()[0].strip("'\"")
    return text.replace("Unable to synchronously ", "cannot ")
