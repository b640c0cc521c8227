"""The writer lock beside a zoo, and opening a zoo for reading (SWMR, with waiting
while a writer holds the file)."""

from __future__ import annotations

import errno
import time
from pathlib import Path

import filelock
import h5py

from zooscope.errors import UnfinishedWrite, ZooFileError
from zooscope.store import lock_path


class WriterLock:
    """An advisory lock beside the zoo (``NAME.h5.lock``): held by the one process writing it.

    The lock file stays after release: unlinking a lock file others may have opened lets
    two processes lock two different files under one name.
    """

    def __init__(self, path: Path) -> None:
        self.path = lock_path(path)
        self._lock = file_lock(self.path)
        try:
            self._lock.acquire(timeout=0)
        except filelock.Timeout:
            raise ZooFileError(
                f"{path} is being written by another process",
                hint="wait for it to finish, or stop it first",
            ) from None
        except OSError as exc:
            raise lock_error(self.path, exc) from None

    @staticmethod
    def held(path: Path) -> bool:
        """Whether a live process holds the lock (a killed writer's lock is free)."""
        lock = lock_path(path)
        if not lock.exists():
            return False
        probe = file_lock(lock)
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
    return WriterLock.held(path)


def file_lock(path: Path) -> filelock.BaseFileLock:
    # A soft lock (a file that exists while held) would outlive a killed writer and
    # block its --resume; where the file system has no real locks, say so instead.
    return filelock.FileLock(path, fallback_to_soft=False)


def lock_error(path: Path, exc: OSError) -> ZooFileError:
    if exc.errno in (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return ZooFileError(
            f"the file system holding {path.parent} does not support file locks "
            f"({exc.strerror or exc})",
            hint="write the zoo on a local disk, or on a file system with locks "
                 "(NFS needs its lock service)")
    return ZooFileError(f"cannot lock {path}: {exc.strerror or exc}",
                        hint="check that the folder is writable")


def open_for_reading(path: Path, wait: float = 10.0) -> h5py.File:
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
            if time.monotonic() < deadline and WriterLock.held(path):
                time.sleep(0.05)
                continue
            if not WriterLock.held(path):
                # Killed outside SWMR mode (adding an architecture): only resuming,
                # which clears the write flag first, opens it.
                raise UnfinishedWrite(
                    f"{path} is not a readable HDF5 file ({text.split('(')[0].strip()})",
                    hint="its writer was killed while adding to the file's structure; "
                         "`zooscope generate --resume` reopens it") from None
        raise ZooFileError(
            f"{path} is not a readable HDF5 file ({text.split('(')[0].strip()})",
            hint="the file may be truncated or not a zoo at all",
        ) from None
