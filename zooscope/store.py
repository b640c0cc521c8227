"""What a store is: the interface the engine writes through, the header it records, and
the upkeep (integrity checks, merging) a store offers beyond the reader interface.

The built-in implementation is ``zooscope.stores.hdf5``; this module holds no I/O.
``Architecture`` is part of the reader interface (``zooscope.zoo``) and re-exported here.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zooscope.errors import ZooFileError
from zooscope.zoo import Architecture, Checkpoint, Member, Zoo

if TYPE_CHECKING:
    import numpy as np


@dataclass
class ZooHeader:
    """Everything zoo-level a store records when it creates a zoo."""

    name: str
    config_text: str
    generator: str
    generator_version: str
    metric_columns: list[str]
    data: dict[str, Any] = field(default_factory=dict)
    #: ``{"kind": "class", "shape": [n_test]}`` or ``{"kind": "span", "shape": [n_test, 2]}``.
    predictions: dict[str, Any] | None = None
    test_labels: np.ndarray | None = None
    test_ids: list[str] | None = None
    #: The test inputs as the model reads them (first and, for pairs, second texts).
    test_texts: list[str] | None = None
    test_text_pairs: list[str] | None = None
    #: Extractive QA: each test question's context and gold answers, so that stored
    #: character spans turn back into answer text without the data set.
    test_contexts: list[str] | None = None
    test_answers: list[list[str]] | None = None
    storage_dtype: str = "float32"
    compression: str = "none"
    extra: dict[str, Any] = field(default_factory=dict)


class StoredZoo(Zoo):
    """A zoo as its store opened it: the reader interface plus what upkeep needs
    (merging shards, ``zoo validate``). Readers use ``Zoo``; ``Store.open`` returns this."""

    @abstractmethod
    def header(self) -> ZooHeader:
        """The zoo-level record, to create a zoo of the same kind (merging shards)."""

    @abstractmethod
    def check_tensor(self, checkpoint: Checkpoint, name: str) -> list[str]:
        """Problems of one stored tensor (checksum, NaN/Inf); empty when it is sound."""

    def check_structure(self) -> list[str]:
        """Problems of the file's structure beyond what opening checks (every tensor's
        dataset, stored analyses); empty when sound. Stores that check everything on
        opening keep this default."""
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
        """Store the zoo card (``zooscope.card``), replacing the one stored before."""

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> ZooWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Store(ABC):
    """Persists zoos. Registered through ``zooscope_register_stores``."""

    name: str
    suffixes: tuple[str, ...]

    @abstractmethod
    def create(self, path: Path, header: ZooHeader, members: Sequence[Member]) -> ZooWriter:
        """Create a new zoo file (the caller has checked it may overwrite)."""

    @abstractmethod
    def resume(self, path: Path) -> ZooWriter:
        """Reopen a zoo for writing, discarding any half-written checkpoint."""

    @abstractmethod
    def open(self, path: Path) -> StoredZoo:
        """Open a zoo read-only."""

    def open_url(self, url: str, timeout: float | None = None) -> StoredZoo:
        """Open a zoo at a URL read-only, fetching only what is read; ``timeout`` bounds
        each wait on the network (``zooscope.remote.network_timeout``)."""
        raise ZooFileError(f"the {self.name} store cannot read zoos at URLs")

    @abstractmethod
    def write_analysis(
        self, path: Path, name: str, key: str, options: Mapping[str, Any], summary: str,
        tables: Mapping[str, Mapping[str, np.ndarray]], figures: Mapping[str, bytes],
        inputs: Sequence[Mapping[str, Any]] = (),
    ) -> list[str]:
        """Store an analysis result of the zoo at ``path`` under its name and key, replacing
        an older one, without writing to the zoo itself; ``inputs`` names the stored results
        it was computed from. Returns notes for the user; raises ``ZooFileError`` when the
        result cannot be stored."""

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


def lock_path(path: Path) -> Path:
    """The writer's lock file beside a zoo (or any file zooscope writes under a lock):
    ``NAME.h5.lock``, documented in docs/format.md."""
    return path.with_name(path.name + ".lock")

