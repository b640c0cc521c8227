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
from zooscope.store import Store, ZooHeader
from zooscope.zoo import Member

if TYPE_CHECKING:
    import numpy as np

    from zooscope.stores.h5reader import HDF5Zoo
    from zooscope.stores.h5writer import HDF5Writer


class HDF5Store(Store):
    """Zoo format v1: one HDF5 file, append-only, SWMR, readable with plain h5py."""

    name = "hdf5"
    suffixes = (".h5", ".hdf5")

    def create(self, path: Path, header: ZooHeader, members: Sequence[Member]) -> HDF5Writer:
        from zooscope.stores.h5writer import create_zoo

        return create_zoo(path, header, members)

    def resume(self, path: Path) -> HDF5Writer:
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

    def write_analysis(
        self, path: Path, name: str, key: str, options: Mapping[str, Any], summary: str,
        tables: Mapping[str, Mapping[str, np.ndarray]], figures: Mapping[str, bytes],
        inputs: Sequence[Mapping[str, Any]] = (),
    ) -> list[str]:
        from zooscope.stores.h5reader import write_analysis

        return write_analysis(path, name, key, options, summary, tables, figures, inputs)


@hookimpl
def zooscope_register_stores(register: Any) -> None:
    register(HDF5Store())
