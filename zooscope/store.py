"""What a store is: the interface the engine writes through, the record it keeps, and
the upkeep (integrity checks, merging) a store offers beyond the reader interface.

The built-in implementation is ``zooscope.stores.hdf5``; this module holds no I/O.
``Architecture`` is part of the reader interface (``zooscope.zoo``) and re-exported here.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zooscope.errors import ZooFileError
from zooscope.record import ZooRecord
from zooscope.zoo import Architecture, Checkpoint, Member, Zoo

if TYPE_CHECKING:
    import numpy as np


#: The name stores were written against before the record had its own module.
ZooHeader = ZooRecord


class StoredZoo(Zoo):
    """A zoo as its store opened it: the reader interface plus what upkeep needs
    (merging shards, ``zoo validate``). Readers use ``Zoo``; ``Store.open`` returns this."""

    @abstractmethod
    def check_tensor(self, checkpoint: Checkpoint, name: str) -> list[str]:
        """Problems of one stored tensor (checksum, NaN/Inf); empty when it is sound."""

    def check_structure(self) -> list[str]:
        """Problems of the file's structure beyond what opening checks (every tensor's
        dataset, stored analyses); empty when sound. Stores that check everything on
        opening keep this default."""
        return []

    def structure_notes(self) -> list[str]:
        """What ``zoo validate`` should mention that is not damage (a kill's harmless
        leftovers); empty by default."""
        return []

    @abstractmethod
    def uncommitted_rows(self) -> int:
        """Rows a writer appended after its last commit (a killed or running writer)."""


class ZooWriter(ABC):
    """Appends checkpoints to a zoo; every ``write_checkpoint`` is atomic."""

    path: Path

    @abstractmethod
    def ensure_architecture(self, arch: Architecture) -> None:
        """Record an architecture before the first checkpoint that uses it."""

    @abstractmethod
    def start_member(self, member: Member, arch_key: str) -> None:
        """Mark a member running with the given architecture."""

    @abstractmethod
    def set_status(self, member: Member, status: int) -> None: ...

    @abstractmethod
    def completed_epochs(self, member: Member) -> list[int]:
        """Epochs of the member already committed."""

    @abstractmethod
    def read_state_dict(self, member: Member, epoch: int) -> dict[str, Any]:
        """A committed checkpoint's tensors (torch), to resume training from it."""

    @abstractmethod
    def write_checkpoint(
        self, member: Member, epoch: int, step: int, wall_time: float,
        state_dict: Mapping[str, Any], metrics: Mapping[str, float],
        predictions: np.ndarray | None,
    ) -> None:
        """Commit one checkpoint: all tensors, metrics and predictions, or nothing."""

    def share_checkpoint(self, source: Member, member: Member, epoch: int) -> dict[str, float]:
        """Commit ``source``'s checkpoint at ``epoch`` as ``member``'s too (the shorter run
        of a constant learning rate is the longer run's prefix); returns its metrics.

        Stores that cannot point two checkpoints at the same tensors keep the default:
        the engine then trains the member itself.
        """
        raise NotImplementedError

    def copy_checkpoint(self, source: StoredZoo, member: Member, checkpoint: Checkpoint,
                        predictions: np.ndarray | None) -> bool:
        """Commit ``source``'s checkpoint as stored, without decoding its tensors, where
        this store can (``zoo merge``); False where it cannot, and nothing was written."""
        return False

    def write_card(self, text: str) -> None:  # noqa: B027 - stores without cards keep it
        """Store the zoo card (``zooscope.services.card``), replacing the one stored before."""

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> ZooWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Store(ABC):
    """Persists zoos. Registered through ``zooscope_register_stores``.

    A store owns everything it puts on disk: the zoo itself (a file or a folder), the
    writer's lock, side files, the resume state of an unfinished run and the results
    store. The core asks it where those are and to remove them; it never names a
    suffix, a side file or a folder of a store itself.
    """

    name: str
    suffixes: tuple[str, ...]
    #: Whether a zoo is a folder that several writers fill at once, each in its own slot
    #: (``"s2of6"``: the tasks of an array, the processes of one run), so that nothing
    #: is merged afterwards. A store of single files keeps False: each task then writes
    #: a zoo of its own (``shard_path``) and ``zoo merge`` joins them.
    parts: bool = False
    #: Whether a zoo of this store is a folder rather than a file (every store with
    #: ``parts`` keeps folders).
    folders: bool = False

    @abstractmethod
    def create(self, path: Path, record: ZooRecord, members: Sequence[Member], *,
               slot: str | None = None, max_part_size: int | None = None,
               order: Sequence[Member] | None = None) -> ZooWriter:
        """Create a new zoo (the caller has checked it may overwrite). A store with
        ``parts`` writes slot ``slot``'s parts of at most ``max_part_size`` bytes and
        lists the members in the order of ``order`` (every slot's members); other
        stores ignore the three."""

    @abstractmethod
    def resume(self, path: Path, *, slot: str | None = None,
               max_part_size: int | None = None) -> ZooWriter:
        """Reopen a zoo (a slot's parts) for writing, discarding any half-written
        checkpoint."""

    @abstractmethod
    def open(self, path: Path) -> StoredZoo:
        """Open a zoo read-only."""

    def open_url(self, url: str, timeout: float | None = None) -> StoredZoo:
        """Open a zoo at a URL read-only, fetching only what is read; ``timeout`` bounds
        each wait on the network (``zooscope.remote.network_timeout``)."""
        raise ZooFileError(f"the {self.name} store cannot read zoos at URLs")

    # -- what the store keeps on disk ---------------------------------------------------
    def exists(self, path: Path, slot: str | None = None) -> bool:
        """Whether a zoo (with ``parts``: slot ``slot``'s part of it) is at ``path``."""
        return os.path.lexists(path)

    def shard_path(self, path: Path, index: int, count: int) -> Path:
        """Where task ``index`` of ``count`` writes, for stores without ``parts``."""
        return path.with_name(f"{path.stem}.part{index}of{count}{path.suffix}")

    def side_paths(self, path: Path, slot: str | None = None) -> list[Path]:
        """Files the writer keeps beside the zoo, its lock first, then any other (a file
        being created): they must be plain files, never links."""
        return [lock_path(path)]

    def state_dir(self, path: Path, slot: str | None = None) -> Path:
        """Where an unfinished run keeps its optimizer and RNG state (a folder)."""
        return path.with_name(path.name + ".state")

    def remove_new(self, path: Path, slot: str | None = None, *, lock: bool = True) -> None:
        """Remove a zoo a failed start created (it holds no checkpoint), and its lock
        file where ``lock`` (a lock made for it alone)."""
        path.unlink(missing_ok=True)
        if lock:
            lock_path(path).unlink(missing_ok=True)

    def size(self, path: Path) -> int:
        """Bytes the zoo takes on disk."""
        return path.stat().st_size

    def analysis_dir(self, path: Path) -> Path:
        """The folder beside the zoo for what analyses and reports write
        (``NAME_analysis``), which also holds the results store."""
        return analysis_folder(path)

    def temporary(self, path: Path) -> Path:
        """Where a whole-zoo rewrite (``zoo merge``) writes before it replaces ``path``."""
        return path.with_name(f".{path.name}.merging{path.suffix}")

    def replace(self, source: Path, target: Path) -> None:
        """Put the finished zoo at ``source`` in ``target``'s place."""
        os.replace(source, target)

    # -- analysis results (a store may keep none) ------------------------------------
    def write_analysis(
        self, path: Path, name: str, key: str, options: Mapping[str, Any], summary: str,
        tables: Mapping[str, Mapping[str, np.ndarray]], figures: Mapping[str, bytes],
        inputs: Sequence[Mapping[str, Any]] = (),
    ) -> list[str]:
        """Store an analysis result of the zoo at ``path`` under its name and key, replacing
        an older one, without writing to the zoo itself; ``inputs`` names the stored results
        it was computed from. Returns notes for the user; raises ``ZooFileError`` when the
        result cannot be stored (by default: this store keeps no results, and analyses
        write only their CSV and PNG files)."""
        raise ZooFileError(f"the {self.name} store keeps no analysis results",
                           hint="the CSV and PNG files hold them")

    def results_path(self, path: Path) -> Path | None:
        """Where analysis results of the zoo at ``path`` are stored (None: not stored)."""
        return None

    def being_written(self, path: Path) -> bool:
        """Whether a live process is writing the zoo at ``path`` (stores without a writer
        lock keep the default)."""
        return False


def memory_budget() -> int:
    """Bytes one read may allocate: half the smaller of physical memory and the process's
    address-space limit. A file declaring more is refused instead of exhausting memory."""
    import os
    import resource

    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    limit = physical if soft == resource.RLIM_INFINITY else min(physical, soft)
    return limit // 2


def analysis_folder(path: Path) -> Path:
    """``NAME_analysis`` beside a zoo ``NAME.h5`` or ``NAME.zoo``."""
    return path.with_name(f"{path.stem}_analysis")


def lock_path(path: Path) -> Path:
    """The writer's lock file beside a zoo (or any file zooscope writes under a lock):
    ``NAME.h5.lock``, documented in docs/format.md."""
    return path.with_name(path.name + ".lock")

