"""Clearing the "open for writing" flags a killed HDF5 writer leaves in the superblock.

This is what ``h5clear -s --increment`` does, in Python, so a zoo whose writer was
killed can be resumed without the HDF5 command-line tools. Byte layout only; no h5py.
"""

from __future__ import annotations

import os
from pathlib import Path

SIGNATURE = b"\x89HDF\r\n\x1a\n"
_MASK = 0xFFFFFFFF


def _rot(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & _MASK


def lookup3(data: bytes, initval: int = 0) -> int:
    """Bob Jenkins' lookup3 ``hashlittle``, the checksum of HDF5 metadata blocks."""
    length = len(data)
    a = b = c = (0xDEADBEEF + length + initval) & _MASK
    i = 0
    while length - i > 12:
        a = (a + int.from_bytes(data[i : i + 4], "little")) & _MASK
        b = (b + int.from_bytes(data[i + 4 : i + 8], "little")) & _MASK
        c = (c + int.from_bytes(data[i + 8 : i + 12], "little")) & _MASK
        a = (a - c) & _MASK; a ^= _rot(c, 4); c = (c + b) & _MASK  # noqa: E702
        b = (b - a) & _MASK; b ^= _rot(a, 6); a = (a + c) & _MASK  # noqa: E702
        c = (c - b) & _MASK; c ^= _rot(b, 8); b = (b + a) & _MASK  # noqa: E702
        a = (a - c) & _MASK; a ^= _rot(c, 16); c = (c + b) & _MASK  # noqa: E702
        b = (b - a) & _MASK; b ^= _rot(a, 19); a = (a + c) & _MASK  # noqa: E702
        c = (c - b) & _MASK; c ^= _rot(b, 4); b = (b + a) & _MASK  # noqa: E702
        i += 12
    if length == i:
        return c
    rest = data[i:] + bytes(12 - (length - i))
    a = (a + int.from_bytes(rest[0:4], "little")) & _MASK
    b = (b + int.from_bytes(rest[4:8], "little")) & _MASK
    c = (c + int.from_bytes(rest[8:12], "little")) & _MASK
    c ^= b; c = (c - _rot(b, 14)) & _MASK  # noqa: E702
    a ^= c; a = (a - _rot(c, 11)) & _MASK  # noqa: E702
    b ^= a; b = (b - _rot(a, 25)) & _MASK  # noqa: E702
    c ^= b; c = (c - _rot(b, 16)) & _MASK  # noqa: E702
    a ^= c; a = (a - _rot(c, 4)) & _MASK  # noqa: E702
    b ^= a; b = (b - _rot(a, 14)) & _MASK  # noqa: E702
    c ^= b; c = (c - _rot(b, 24)) & _MASK  # noqa: E702
    return c


def clear_write_flags(path: Path) -> bool:
    """Clear a v2/v3 superblock's consistency flags and extend its end-of-file address.

    Returns True where the flags were set (the last writer did not close the file).
    The end-of-file address is raised to the file's size because a SWMR writer
    does not keep it current; HDF5 refuses to allocate below a stale one.
    """
    size = os.path.getsize(path)
    with open(path, "r+b") as fh:
        head = bytearray(fh.read(64))
        if head[:8] != SIGNATURE or head[8] not in (2, 3):
            return False
        if head[11] == 0:
            return False
        offset_size = head[9]
        n = 12 + 4 * offset_size
        if lookup3(bytes(head[:n])) != int.from_bytes(head[n : n + 4], "little"):
            return False
        head[11] = 0
        eof_at = 12 + 2 * offset_size
        stored_eof = int.from_bytes(head[eof_at : eof_at + offset_size], "little")
        head[eof_at : eof_at + offset_size] = max(stored_eof, size).to_bytes(offset_size, "little")
        head[n : n + 4] = lookup3(bytes(head[:n])).to_bytes(4, "little")
        fh.seek(0)
        fh.write(bytes(head[: n + 4]))
        fh.flush()
        os.fsync(fh.fileno())
    return True
