"""How a run stops: Ctrl-C (stop after the step), a full disk, and a failed start that
leaves no zoo behind."""

from __future__ import annotations

import contextlib
import errno
import signal
from pathlib import Path
from typing import Any

from zooscope.errors import ZooFileError, ZooscopeError
from zooscope.store import Store, ZooWriter
from zooscope.zoo import Member


class Interrupted(ZooscopeError):
    """Ctrl-C: the run stopped after a training step; ``--resume`` continues it."""

    exit_code = 130


class DiskFull(ZooFileError):
    """The disk filled up during generation; ``--resume`` continues once there is space."""


class StopFlag:
    """Turns the first Ctrl-C into a request to stop after the current step."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> StopFlag:
        try:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread: leave signals alone
            self._previous = None
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def disk_full(exc: BaseException) -> bool:
    # h5py and safetensors report a failed write as an OSError or their own error whose
    # text carries the system's message, not always with errno set.
    return getattr(exc, "errno", None) == errno.ENOSPC or "No space left on device" in str(exc)


def set_status_quietly(writer: ZooWriter, member: Member, status: int) -> None:
    """Record why a member stopped where the file still takes a write (a full disk may not)."""
    with contextlib.suppress(OSError, ZooscopeError):
        writer.set_status(member, status)


class DiscardIfNothingCommitted:
    """A run that created its zoo and failed before committing a checkpoint leaves no
    file: there is nothing to resume, and a failed start must not leave a zoo behind.
    Exits after the writer has closed (it comes first in the ``with``); a Ctrl-C keeps
    the zoo, as its message promises a resume."""

    def __init__(self, store: Store, path: Path, slot: str | None, state_dir: Path) -> None:
        self.store, self.path, self.slot = store, path, slot
        self.state_dir = state_dir
        self.created = False
        self.state_existed = True
        self.lock_existed = store.side_paths(path, slot)[0].exists()

    def __enter__(self) -> DiscardIfNothingCommitted:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: Any) -> None:
        if kind is None or not self.created or not issubclass(kind, Exception) or \
                isinstance(exc, Interrupted):
            return
        from zooscope.access import open_zoo

        try:
            with open_zoo(self.path) as zoo:
                if zoo.checkpoints():
                    return
        except ZooscopeError:
            return  # unreadable: leave it for the user to look at
        if not self.state_existed and self.state_dir.is_dir():
            for p in self.state_dir.iterdir():
                p.unlink()
            self.state_dir.rmdir()
        # The writer's lock file (docs/format.md) outlives its writer by design; one
        # made for a zoo that no longer exists is left over from this run alone.
        self.store.remove_new(self.path, self.slot, lock=not self.lock_existed)
