"""The built-in HDF5 store plugin. The format lives beside it, one module per job:
``h5layout`` (constants, value encoding, the header), ``h5checks`` (hostile and damaged
files), ``h5lock`` (the writer lock, opening for reading), ``h5writer``, ``h5reader``
and ``h5results`` (analysis results beside the zoo).

Kept free of h5py imports so that listing plugins stays fast.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zooscope.hookspecs import hookimpl
from zooscope.record import ZooRecord
from zooscope.store import Store
from zooscope.zoo import Member

if TYPE_CHECKING:
    import numpy as np

    from zooscope.stores.h5parts import PartsWriter, PartsZoo
    from zooscope.stores.h5reader import HDF5Zoo
    from zooscope.stores.h5writer import HDF5Writer


class HDF5Store(Store):
    """Zoo format v1: one HDF5 file, append-only, SWMR, readable with plain h5py."""

    name = "hdf5"
    suffixes = (".h5", ".hdf5")

    def create(self, path: Path, record: ZooRecord, members: Sequence[Member], *,
               slot: str | None = None, max_part_size: int | None = None,
               order: Sequence[Member] | None = None) -> HDF5Writer:
        from zooscope.stores.h5writer import create_zoo

        return create_zoo(path, record, members)

    def resume(self, path: Path, *, slot: str | None = None,
               max_part_size: int | None = None) -> HDF5Writer:
        from zooscope.stores.h5writer import resume_zoo

        return resume_zoo(path)

    def open(self, path: Path) -> HDF5Zoo:
        from zooscope.stores.h5reader import HDF5Zoo

        return HDF5Zoo(path)

    def open_url(self, url: str, timeout: float | None = None) -> HDF5Zoo:
        from zooscope.stores.h5reader import open_remote

        return open_remote(url, timeout)

    def results_path(self, path: Path) -> Path:
        from zooscope.stores.h5results import results_path

        return results_path(path)

    def being_written(self, path: Path) -> bool:
        from zooscope.stores.h5lock import being_written

        return being_written(path)

    def side_paths(self, path: Path, slot: str | None = None) -> list[Path]:
        return [*super().side_paths(path), path.with_name(path.name + ".creating")]

    def write_analysis(
        self, path: Path, name: str, key: str, options: Mapping[str, Any], summary: str,
        tables: Mapping[str, Mapping[str, np.ndarray]], figures: Mapping[str, bytes],
        inputs: Sequence[Mapping[str, Any]] = (),
    ) -> list[str]:
        from zooscope.stores.h5reader import write_analysis

        return write_analysis(path, name, key, options, summary, tables, figures, inputs)


class HDF5PartsStore(HDF5Store):
    """A zoo of many files: a folder ``NAME.zoo`` with an index (``zoo.json``) and part
    files of format v1, each under ``[zoo] max_part_size``; the tasks of an array write
    their parts into one folder (``zooscope.stores.h5parts``)."""

    name = "hdf5-parts"
    suffixes = (".zoo",)
    parts = True
    folders = True

    def create(self, path: Path, record: ZooRecord, members: Sequence[Member], *,
               slot: str | None = None, max_part_size: int | None = None,
               order: Sequence[Member] | None = None) -> PartsWriter:
        from zooscope.stores.h5parts import create_folder

        return create_folder(path, record, members, slot, max_part_size, order)

    def resume(self, path: Path, *, slot: str | None = None,
               max_part_size: int | None = None) -> PartsWriter:
        from zooscope.stores.h5parts import resume_folder

        return resume_folder(path, slot, max_part_size)

    def open(self, path: Path) -> PartsZoo:  # type: ignore[override]
        from zooscope.stores.h5parts import open_folder

        return open_folder(path)

    def open_url(self, url: str, timeout: float | None = None) -> PartsZoo:  # type: ignore[override]
        from zooscope.stores.h5parts import open_folder_url

        return open_folder_url(url, timeout)

    def exists(self, path: Path, slot: str | None = None) -> bool:
        from zooscope.stores.h5parts import parts_on_disk

        if path.is_symlink() or (path.exists() and not path.is_dir()):
            return True  # in the way: what checks the output refuses it
        return bool(parts_on_disk(path) if slot is None else parts_on_disk(path, slot))

    def side_paths(self, path: Path, slot: str | None = None) -> list[Path]:
        return [path / f"{slot or 'zoo'}.lock"]

    def state_dir(self, path: Path, slot: str | None = None) -> Path:
        return path / f"{slot or 'zoo'}.state"

    def remove_new(self, path: Path, slot: str | None = None, *, lock: bool = True) -> None:
        from zooscope.stores.h5parts import remove_folder_parts

        remove_folder_parts(path, slot)

    def temporary(self, path: Path) -> Path:
        return path.with_name(f".{path.name}.merging")

    def analysis_dir(self, path: Path) -> Path:
        from zooscope.stores.h5results import ANALYSIS

        return path / ANALYSIS

    def size(self, path: Path) -> int:
        from zooscope.stores.h5parts import parts_on_disk

        return sum((path / name).stat().st_size for name in parts_on_disk(path))

    def replace(self, source: Path, target: Path) -> None:
        from zooscope.stores.h5parts import replace_folder

        replace_folder(source, target)

    def being_written(self, path: Path) -> bool:
        from zooscope.stores.h5lock import WriterLock

        if not path.is_dir():
            return False
        return any(WriterLock.held(lock.with_suffix(""))
                   for lock in path.glob("*.lock") if not lock.name.startswith("zoo.json"))

    def write_analysis(
        self, path: Path, name: str, key: str, options: Mapping[str, Any], summary: str,
        tables: Mapping[str, Mapping[str, np.ndarray]], figures: Mapping[str, bytes],
        inputs: Sequence[Mapping[str, Any]] = (),
    ) -> list[str]:
        from zooscope.stores.h5parts import read_index
        from zooscope.stores.h5reader import write_analysis

        first = path / read_index(path)["parts"][0]
        return write_analysis(path, name, key, options, summary, tables, figures, inputs,
                              identity_of=first)


@hookimpl
def zooscope_register_stores(register: Any) -> None:
    register(HDF5Store())
    register(HDF5PartsStore())
