"""The built-in HDF5 store plugin: registers the store; the format lives in ``h5zoo``.

Kept free of h5py imports so that listing plugins stays fast.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import zooscope
from zooscope.store import Store, ZooHeader
from zooscope.zoo import Member

if TYPE_CHECKING:
    import numpy as np

    from zooscope.stores.h5zoo import HDF5Writer, HDF5Zoo


class HDF5Store(Store):
    """Zoo format v1: one HDF5 file, append-only, SWMR, readable with plain h5py."""

    name = "hdf5"
    suffixes = (".h5", ".hdf5")

    def create(self, path: Path, header: ZooHeader, members: Sequence[Member]) -> HDF5Writer:
        from zooscope.stores.h5zoo import create_zoo

        return create_zoo(path, header, members)

    def resume(self, path: Path) -> HDF5Writer:
        from zooscope.stores.h5zoo import resume_zoo

        return resume_zoo(path)

    def open(self, path: Path) -> HDF5Zoo:
        from zooscope.stores.h5zoo import HDF5Zoo

        return HDF5Zoo(path)

    def results_path(self, path: Path) -> Path:
        from zooscope.stores.h5results import results_path

        return results_path(path)

    def being_written(self, path: Path) -> bool:
        from zooscope.stores.h5zoo import being_written

        return being_written(path)

    def write_analysis(
        self, path: Path, name: str, key: str, options: Mapping[str, Any], summary: str,
        tables: Mapping[str, Mapping[str, np.ndarray]], figures: Mapping[str, bytes],
        inputs: Sequence[Mapping[str, Any]] = (),
    ) -> list[str]:
        from zooscope.stores.h5zoo import write_analysis

        return write_analysis(path, name, key, options, summary, tables, figures, inputs)


@zooscope.hookimpl
def zooscope_register_stores(register: Any) -> None:
    register(HDF5Store())
