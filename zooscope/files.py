"""Side files written and read safely: whole or not at all, never through a link, never
from a special file.

Every file zooscope writes beside a zoo (CSV, PNG, ``result.json``, the report, the
card) is written to a temporary file in the same folder and renamed over its name, so
a kill leaves the previous file or the new one, and a link planted at that name is
replaced, not written through. Small files it reads back (``result.json``) are opened
without following links, must be regular files, and have a size limit.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

#: The most bytes a side file that zooscope reads back may hold.
SMALL_FILE = 1 << 20


class UnsafeFile(OSError):
    """A side file that is a link, a special file, too large, or not what it should be;
    the message says what it is ("a link")."""


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write ``data`` to ``path`` whole or not at all, replacing (not following) a link."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp makes the file private; a side file is as readable as any file written
        # under the user's umask (a zoo shared within a lab is read by others).
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    sync_folder(path.parent)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def sync_folder(folder: Path) -> None:
    """Make renames in ``folder`` durable (where the platform can)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def remove_leftovers(folder: Path) -> None:
    """Temporary files of writes that were killed before their rename."""
    with contextlib.suppress(OSError):
        for leftover in folder.glob(".*.tmp"):
            if leftover.is_file() and not leftover.is_symlink():
                leftover.unlink(missing_ok=True)


def read_small(path: Path, limit: int = SMALL_FILE) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes, opened without following a
    link and without waiting on a FIFO; anything else raises ``UnsafeFile``."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if os.path.islink(path):
            raise UnsafeFile("a link") from None
        raise exc
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise UnsafeFile("not a regular file (a FIFO, a device or a folder)")
    with os.fdopen(fd, "rb") as fh:
        if info.st_size > limit:
            raise UnsafeFile(f"larger than {limit:,} bytes")
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise UnsafeFile(f"larger than {limit:,} bytes")
    return data


def read_json_object(path: Path, limit: int = SMALL_FILE) -> dict[str, Any]:
    """A small JSON object from a side file; ``UnsafeFile`` for anything else (a link,
    a special file, invalid or deeply nested JSON, another kind of value)."""
    data = read_small(path, limit)
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):
        raise UnsafeFile("not valid JSON (or nested too deeply)") from None
    if not isinstance(value, dict):
        raise UnsafeFile(f"a JSON {type(value).__name__}, not an object")
    return value


def is_regular(path: Path) -> bool:
    """A regular file, not a link to one."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


__all__ = ["SMALL_FILE", "UnsafeFile", "is_regular", "read_json_object", "read_small",
           "remove_leftovers", "sync_folder", "write_atomic"]
