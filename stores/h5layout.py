"""Zoo format v1 in HDF5 (docs/format.md): constants, how values are encoded, and the
zoo-level layout a new file starts with."""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import xxhash

from zooscope.errors import ZooFileError
from zooscope.record import ZooRecord
from zooscope.version import __version__
from zooscope.zoo import (
    PENDING,
    STATUS_LABELS,
    Architecture,
    Member,
    canonical_json,
    check_safe_name,
)

FORMAT_VERSION = 1


STORAGE_DTYPES = ("float32", "float16", "bfloat16")


COMPRESSIONS = ("none", "lz4", "zstd", "gzip")


#: Largest tensor a zoo file may declare (elements); larger is treated as hostile.
MAX_TENSOR_ELEMENTS = 2**33


ALLOWED_KINDS = {"f", "u", "i", "b"}


INDEX_DTYPE = np.dtype(
    [("member", "<i4"), ("epoch", "<i4"), ("step", "<i8"), ("wall_time", "<f8"),
     ("architecture", "<i4"), ("arch_row", "<i8")]
)


STR_DTYPE = h5py.string_dtype()


def attr_text(obj: h5py.HLObject, name: str, default: str | None = None) -> str:
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


def json_attr(obj: h5py.HLObject, name: str, default: Any = None,
              kind: type | tuple[type, ...] | None = None) -> Any:
    if name not in obj.attrs:
        if default is not None:
            return default
        raise ZooFileError(f"zoo file lacks the attribute {obj.name}:{name}")
    where = f"{obj.file.filename} is damaged: the attribute {obj.name}:{name}"
    try:
        value = json.loads(attr_text(obj, name))
    except json.JSONDecodeError:
        raise ZooFileError(f"{where} is not valid JSON") from None
    if kind is not None and not isinstance(value, kind):
        raise ZooFileError(f"{where} holds JSON of the wrong type ({type(value).__name__})")
    return value


def compression_filter(name: str) -> dict[str, Any]:
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


def row_digest(array: np.ndarray) -> bytes:
    h = xxhash.xxh3_128()
    h.update(str(array.dtype).encode() + str(array.shape).encode())
    flat = np.asarray(array, order="C").reshape(-1)
    h.update(flat.view(np.uint8) if flat.size else b"")  # hashes the buffer, no copy
    return h.hexdigest().encode()


def architecture_layout(group: h5py.Group) -> tuple[list[str], dict[str, tuple[int, ...]]]:
    names = json_attr(group, "tensor_names")
    shapes_raw = json_attr(group, "shapes")
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


def fingerprint(arch: Architecture) -> str:
    h = xxhash.xxh3_128()
    h.update(canonical_json({k: list(v) for k, v in arch.shapes.items()}).encode())
    h.update(arch.files.get("config.json", b""))
    return h.hexdigest()


#: The fields of a checkpoint index row and the dtype kinds each may have.
INDEX_FIELDS = {"member": "iu", "epoch": "iu", "step": "iu", "wall_time": "f",
                "architecture": "iu", "arch_row": "iu"}


STORED_AS = {"float32": np.dtype("<f4"), "float16": np.dtype("<f2"),
             "bfloat16": np.dtype("<u2")}


#: The largest model file (config.json, tokenizer files) a zoo may hold.
MAX_MODEL_FILE = 2**30


def utc_now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def library_versions() -> dict[str, str]:
    import importlib.metadata as md
    import platform
    import sys

    out = {"zooscope": __version__, "h5py": h5py.__version__,
           "hdf5": h5py.version.hdf5_version, "numpy": np.__version__,
           "python": platform.python_version(), "platform": platform.platform(terse=True)}
    for lib in ("torch", "transformers", "datasets", "tokenizers", "accelerate"):
        with contextlib.suppress(md.PackageNotFoundError):
            out[lib] = md.version(lib)
    torch = sys.modules.get("torch")  # the device it trained on, where torch is in use
    if torch is not None and torch.cuda.is_available():
        out["cuda"] = str(torch.version.cuda)
        out["device"] = torch.cuda.get_device_name(0)
    commit = source_commit()
    if commit:
        out["zooscope_commit"] = commit
    return out


#: The zoo card: UTF-8 Markdown, zero bytes after the text are padding (a shorter card
#: overwrites a longer one in place, which SWMR allows).
CARD = "card"
MAX_CARD = 2**24


def create_card(f: h5py.File) -> h5py.Dataset:
    return f.create_dataset(CARD, shape=(0,), maxshape=(None,), dtype=np.uint8, chunks=(1 << 16,))


def source_commit() -> str | None:
    """The git commit zooscope runs from, where it runs from a git checkout."""
    import subprocess

    here = Path(__file__).resolve().parent
    if "site-packages" in here.parts or not any((p / ".git").exists()
                                                for p in (here, *here.parents)):
        return None
    try:
        done = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    text = done.stdout.strip()
    return text if done.returncode == 0 and len(text) == 40 else None


def write_header(f: h5py.File, record: ZooRecord, members: Sequence[Member]) -> None:
    f.attrs["zooscope_format"] = FORMAT_VERSION
    f.attrs["name"] = record.name
    f.attrs["config"] = record.config_text
    f.attrs["generator"] = record.generator
    f.attrs["generator_version"] = record.generator_version
    f.attrs["versions"] = json.dumps(library_versions())
    f.attrs["data"] = json.dumps(record.data)
    f.attrs["created"] = utc_now()
    f.attrs["storage_dtype"] = record.storage_dtype
    f.attrs["compression"] = record.compression
    f.attrs["extra"] = json.dumps(record.extra)
    create_card(f)
    g = f.create_group("members")
    n = len(members)
    for m in members:
        check_safe_name(m.id, "member")
    g.create_dataset("id", data=np.array([m.id for m in members], dtype=object), dtype=STR_DTYPE)
    g.create_dataset("factors", data=np.array([canonical_json(m.factors) for m in members],
                                              dtype=object), dtype=STR_DTYPE)
    g.create_dataset("lineage", data=np.array([json.dumps(m.lineage) for m in members],
                                              dtype=object), dtype=STR_DTYPE)
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
                                 dtype=STR_DTYPE)
    f.create_group("architectures")
    c = f.create_group("checkpoints")
    c.create_dataset("index", shape=(0,), maxshape=(None,), dtype=INDEX_DTYPE, chunks=(256,))
    k = len(record.metric_columns)
    # A chunk dimension must be ≥ 1, so a zoo without metrics leaves the width open.
    m = c.create_dataset("metrics", shape=(0, k), maxshape=(None, k or None), dtype="<f8",
                         chunks=(256, max(k, 1)))
    m.attrs["columns"] = json.dumps(list(record.metric_columns))
    test = record.test
    if test.predictions is not None:
        shape = tuple(test.predictions["shape"])
        p = c.create_dataset("predictions", shape=(0, *shape), maxshape=(None, *shape),
                             dtype="<i4", chunks=(1, *[max(d, 1) for d in shape]))
        p.attrs["kind"] = test.predictions["kind"]
    d = f.create_group("data")
    if test.labels is not None:
        d.create_dataset("test_labels", data=np.asarray(test.labels))
    for name in ("ids", "texts", "text_pairs", "contexts"):
        values = getattr(test, name)
        if values is not None:
            d.create_dataset(f"test_{name}", data=np.array(values, dtype=object),
                             dtype=STR_DTYPE)
    if test.answers is not None:
        d.create_dataset("test_answers", data=np.array(
            [json.dumps(a, ensure_ascii=False) for a in test.answers], dtype=object),
            dtype=STR_DTYPE)
