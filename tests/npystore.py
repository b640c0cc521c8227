"""A second store, for tests: a zoo is a folder of ``.npy`` files and JSON, no HDF5.

Minimal on purpose (no results store, no shared checkpoints, no lock), but complete as
the core's contract asks: if the engine, the commands and the analyzers work on it,
they assume nothing of HDF5 or of a zoo being one file.

    NAME.npyzoo/zoo.json                     the header and the members
    NAME.npyzoo/arch-K.json                  an architecture (files as hex)
    NAME.npyzoo/MEMBER.eEPOCH/               one committed checkpoint: TENSOR.npy files
                                             and meta.json; written as .MEMBER.eEPOCH.tmp/
                                             and renamed, so a checkpoint is all or nothing
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from zooscope.errors import ZooFileError
from zooscope.files import write_atomic
from zooscope.hookspecs import hookimpl
from zooscope.record import TestSet, ZooRecord
from zooscope.store import Store, StoredZoo, ZooWriter
from zooscope.zoo import (
    PENDING,
    RUNNING,
    STATUS_CODES,
    STATUS_LABELS,
    Architecture,
    Checkpoint,
    Member,
    check_safe_name,
    select_checkpoints,
)

_LISTS = ("ids", "texts", "text_pairs", "contexts", "answers")


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ZooFileError(f"{path} is not readable: {exc}") from None


class NpyZoo(StoredZoo):
    def __init__(self, path: Path) -> None:
        if not (path / "zoo.json").is_file():
            raise ZooFileError(f"{path} is not an npy zoo")
        self.path = path
        self._meta = _read(path / "zoo.json")
        self.metric_columns = list(self._meta["metric_columns"])
        self._members = [Member(id=m["id"], factors=m["factors"], lineage=m["lineage"],
                                status=STATUS_LABELS[m["status"]])
                         for m in self._meta["members"]]
        self._arch_of = {m["id"]: m["arch"] for m in self._meta["members"]}
        order = {m.id: k for k, m in enumerate(self._members)}
        found = []
        for d in path.iterdir():
            if d.is_dir() and not d.name.startswith(".") and ".e" in d.name:
                found.append(d.name)
        self._checkpoints = []
        for name in found:
            member, _, epoch = name.rpartition(".e")
            meta = _read(path / name / "meta.json")
            self._checkpoints.append(Checkpoint(member, int(epoch), meta["step"],
                                                meta["wall_time"], meta["metrics"]))
        self._checkpoints.sort(key=lambda c: (order[c.member], c.epoch))

    @property
    def info(self) -> dict[str, Any]:
        meta = self._meta
        return {"name": meta["name"], "format": 1, "generator": meta["generator"],
                "generator_version": meta["generator_version"], "created": meta["created"],
                "versions": {}, "data": meta["data"], "storage_dtype": "float32",
                "compression": "none", "metric_columns": list(self.metric_columns),
                "members": len(self._members), "checkpoints": len(self._checkpoints),
                "extra": meta["extra"]}

    @property
    def config_text(self) -> str:
        return str(self._meta["config"])

    def members(self, **factors: Any) -> list[Member]:
        return [m for m in self._members if m.matches(**factors)]

    def checkpoints(self, members: Iterable[Member | str] | Member | str | None = None,
                    epochs: Iterable[int] | None = None) -> list[Checkpoint]:
        return select_checkpoints(self._checkpoints, [m.id for m in self._members], self.path,
                                  members, epochs)

    def _arch(self, member: Member | str | None) -> dict[str, Any]:
        mid = self._members[0].id if member is None else \
            (member if isinstance(member, str) else member.id)
        k = self._arch_of.get(mid, -1)
        if k < 0:
            raise ZooFileError(f"member {mid} has no checkpoints yet")
        return _read(self.path / f"arch-{k}.json")

    def architecture(self, member: Member | str) -> Architecture:
        a = self._arch(member)
        return Architecture(key=a["key"], files={k: bytes.fromhex(v) for k, v in a["files"].items()},
                            shapes={k: tuple(v) for k, v in a["shapes"].items()},
                            dtypes=a["dtypes"])

    def tensor_names(self, member: Member | str | None = None) -> list[str]:
        return list(self._arch(member)["shapes"])

    def tensor_shape(self, name: str, member: Member | str | None = None) -> tuple[int, ...]:
        return tuple(self._arch(member)["shapes"][name])

    def model_files(self, member: Member | str) -> dict[str, bytes]:
        return self.architecture(member).files

    def _load(self, member: str, epoch: int, name: str) -> np.ndarray:
        return np.load(self.path / f"{member}.e{epoch}" / f"{name}.npy", allow_pickle=False)

    def state_dict(self, member: Member | str, epoch: int) -> dict[str, Any]:
        import torch

        mid = member if isinstance(member, str) else member.id
        return {name: torch.from_numpy(self._load(mid, epoch, name))
                for name in self.tensor_names(mid)}

    def tensor(self, name: str, checkpoints: Sequence[Checkpoint] | None = None) -> np.ndarray:
        chosen = self.checkpoints() if checkpoints is None else list(checkpoints)
        if not chosen:
            return np.empty((0, *self.tensor_shape(name)), np.float32)
        return np.stack([self._load(c.member, c.epoch, name) for c in chosen]).astype(np.float32)

    def predictions(self, checkpoints: Sequence[Checkpoint] | None = None) -> np.ndarray:
        chosen = self.checkpoints() if checkpoints is None else list(checkpoints)
        shape = self._meta["predictions"]["shape"]
        rows = [_read(self.path / f"{c.member}.e{c.epoch}" / "meta.json")["predictions"]
                for c in chosen]
        return np.array(rows, dtype=np.int64).reshape(len(chosen), *shape)

    def prediction_kind(self) -> str | None:
        return (self._meta["predictions"] or {}).get("kind")

    def test_labels(self) -> np.ndarray | None:
        labels = self._meta["test_labels"]
        return None if labels is None else np.array(labels)

    def test_contexts(self) -> list[str] | None:
        return self._meta["contexts"]

    def test_answers(self) -> list[list[str]] | None:
        return self._meta["answers"]

    def card(self) -> str | None:
        card = self.path / "README.md"
        return card.read_text() if card.is_file() else None

    def record(self) -> ZooRecord:
        meta = self._meta
        return ZooRecord(name=meta["name"], config_text=meta["config"],
                         generator=meta["generator"],
                         generator_version=meta["generator_version"],
                         metric_columns=list(self.metric_columns), data=meta["data"],
                         test=TestSet(predictions=meta["predictions"], labels=self.test_labels(),
                                      **{k: meta[k] for k in _LISTS}),
                         extra=meta["extra"])

    def check_tensor(self, checkpoint: Checkpoint, name: str) -> list[str]:
        values = self._load(checkpoint.member, checkpoint.epoch, name)
        return [] if np.isfinite(values).all() else [f"{name}: NaN or Inf"]

    def uncommitted_rows(self) -> int:
        return sum(1 for d in self.path.iterdir() if d.name.endswith(".tmp"))


class NpyWriter(ZooWriter):
    def __init__(self, path: Path) -> None:
        self.path = path
        self._meta = _read(path / "zoo.json")
        for leftover in path.glob(".*.tmp"):  # a killed writer's half checkpoint
            shutil.rmtree(leftover)

    def _save(self) -> None:
        write_atomic(self.path / "zoo.json", json.dumps(self._meta))

    def _member(self, member: Member) -> dict[str, Any]:
        for m in self._meta["members"]:
            if m["id"] == member.id:
                return m
        raise ZooFileError(f"member {member.id} is not part of {self.path}")

    def ensure_architecture(self, arch: Architecture) -> None:
        record = {"key": arch.key, "files": {k: v.hex() for k, v in arch.files.items()},
                  "shapes": {k: list(v) for k, v in arch.shapes.items()}, "dtypes": arch.dtypes}
        for k in range(self._meta["architectures"]):
            if _read(self.path / f"arch-{k}.json") == record:
                return
        write_atomic(self.path / f"arch-{self._meta['architectures']}.json", json.dumps(record))
        self._meta["architectures"] += 1
        self._save()

    def start_member(self, member: Member, arch_key: str | Architecture) -> None:
        assert isinstance(arch_key, Architecture)
        record = {"key": arch_key.key, "files": {k: v.hex() for k, v in arch_key.files.items()},
                  "shapes": {k: list(v) for k, v in arch_key.shapes.items()},
                  "dtypes": arch_key.dtypes}
        k = next(k for k in range(self._meta["architectures"])
                 if _read(self.path / f"arch-{k}.json") == record)
        self._member(member)["arch"] = k
        self.set_status(member, RUNNING)

    def set_status(self, member: Member, status: int) -> None:
        self._member(member)["status"] = int(status)
        self._save()

    def completed_epochs(self, member: Member) -> list[int]:
        return sorted(int(d.name.rpartition(".e")[2]) for d in self.path.glob(f"{member.id}.e*")
                      if d.is_dir())

    def read_state_dict(self, member: Member, epoch: int) -> dict[str, Any]:
        return NpyZoo(self.path).state_dict(member, epoch)

    def write_checkpoint(self, member: Member, epoch: int, step: int, wall_time: float,
                         state_dict: Mapping[str, Any], metrics: Mapping[str, float],
                         predictions: np.ndarray | None) -> None:
        check_safe_name(member.id, "member")
        tmp = self.path / f".{member.id}.e{epoch}.tmp"
        tmp.mkdir()
        for name, value in state_dict.items():
            array = value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
            if array.dtype.kind == "f":
                array = array.astype(np.float32)
            np.save(tmp / f"{check_safe_name(name, 'tensor')}.npy", array, allow_pickle=False)
        unknown = set(metrics) - set(self._meta["metric_columns"])
        if unknown:
            raise ZooFileError(f"metrics {sorted(unknown)} are not columns of this zoo")
        meta = {"step": step, "wall_time": wall_time,
                "metrics": {k: float(metrics.get(k, np.nan)) for k in self._meta["metric_columns"]},
                "predictions": None if predictions is None else np.asarray(predictions).tolist()}
        (tmp / "meta.json").write_text(json.dumps(meta))
        os.replace(tmp, self.path / f"{member.id}.e{epoch}")  # the commit

    def write_card(self, text: str) -> None:
        write_atomic(self.path / "README.md", text)

    def close(self) -> None:
        pass


class NpyStore(Store):
    name = "npy"
    suffixes = (".npyzoo",)
    folders = True

    def create(self, path: Path, record: ZooRecord, members: Sequence[Member], *,
               slot: str | None = None, max_part_size: int | None = None,
               order: Sequence[Member] | None = None) -> NpyWriter:
        if record.storage_dtype != "float32" or record.compression != "none":
            raise ZooFileError("the npy store keeps float32 tensors, uncompressed")
        if path.exists():
            shutil.rmtree(path)
        tmp = path.with_name(f".{path.name}.creating")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        test = record.test
        meta = {"name": record.name, "config": record.config_text, "generator": record.generator,
                "generator_version": record.generator_version,
                "metric_columns": list(record.metric_columns), "data": record.data,
                "predictions": test.predictions, "extra": record.extra,
                "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "test_labels": None if test.labels is None else np.asarray(test.labels).tolist(),
                "architectures": 0,
                "members": [{"id": m.id, "factors": m.factors, "lineage": m.lineage,
                             "status": STATUS_CODES.get(m.status, PENDING), "arch": -1}
                            for m in members],
                **{k: getattr(test, k) for k in _LISTS}}
        (tmp / "zoo.json").write_text(json.dumps(meta))
        os.replace(tmp, path)
        return NpyWriter(path)

    def resume(self, path: Path, *, slot: str | None = None,
               max_part_size: int | None = None) -> NpyWriter:
        return NpyWriter(path)

    def open(self, path: Path) -> NpyZoo:
        return NpyZoo(path)

    def remove_new(self, path: Path, slot: str | None = None, *, lock: bool = True) -> None:
        shutil.rmtree(path, ignore_errors=True)

    def replace(self, source: Path, target: Path) -> None:
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(source, target)

    def size(self, path: Path) -> int:
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


class NpyPlugin:
    @hookimpl
    def zooscope_register_stores(self, register: Any) -> None:
        register(NpyStore())
