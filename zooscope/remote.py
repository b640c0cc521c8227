"""Zoos at URLs: any fsspec URL (``https://``, ``s3://``, ``hf://datasets/...``) opened as a
file object that fetches only the byte ranges HDF5 reads."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from zooscope.errors import ZooFileError
from zooscope.extras import require

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")

#: Small reads (HDF5's metadata: headers, indexes, chunk B-trees) fetch the aligned block
#: around them, kept in a small LRU cache; reads of a block or more (tensor chunks) fetch
#: exactly their bytes. Measured by ``bench/bench_remote.py``: at 16 KiB a zoo opens and
#: lists in 6 requests (94 kB); smaller blocks take more requests for the same metadata,
#: larger ones fetch more bytes around each small tensor's chunk.
BLOCK_SIZE = 1 << 14
#: Blocks kept for small reads.
CACHED_BLOCKS = 64


class URL(str):
    """A zoo's location given as a URL; ``name`` is its file name, as for a ``Path``."""

    @property
    def name(self) -> str:
        return urlsplit(self).path.rstrip("/").rsplit("/", 1)[-1]

    @property
    def suffix(self) -> str:
        name = self.name
        return name[name.rfind("."):] if "." in name else ""


def _zoo_cache() -> type:
    """An fsspec cache: aligned, LRU-cached blocks for small reads; large reads direct."""
    from collections import OrderedDict

    from fsspec.caching import BaseCache, register_cache

    class ZooCache(BaseCache):
        name = "zooscope"

        def __init__(self, blocksize: int, fetcher: Any, size: int) -> None:
            super().__init__(blocksize, fetcher, size)
            self.blocks: OrderedDict[int, bytes] = OrderedDict()

        def _block(self, i: int) -> bytes:
            if i in self.blocks:
                self.blocks.move_to_end(i)
                self.hit_count += 1
                return self.blocks[i]
            self.miss_count += 1
            data = self.fetcher(i * self.blocksize, min((i + 1) * self.blocksize, self.size))
            self.blocks[i] = data
            if len(self.blocks) > CACHED_BLOCKS:
                self.blocks.popitem(last=False)
            return data

        def _fetch(self, start: int | None, end: int | None) -> bytes:
            start = 0 if start is None else start
            end = self.size if end is None or end > self.size else end
            if start >= end:
                return b""
            first, last = start // self.blocksize, (end - 1) // self.blocksize
            if end - start >= self.blocksize and not all(
                    i in self.blocks for i in range(first, last + 1)):
                self.total_requested_bytes += end - start
                return self.fetcher(start, end)
            data = b"".join(self._block(i) for i in range(first, last + 1))
            offset = first * self.blocksize
            return data[start - offset:end - offset]

    register_cache(ZooCache, clobber=True)
    return ZooCache


def is_url(location: Any) -> bool:
    return isinstance(location, str) and bool(_SCHEME.match(location)) \
        and not location.startswith("file://")


def open_url(url: str, block_size: int | None = None) -> Any:
    """A seekable, read-only file object for ``url`` that fetches ranges on demand."""
    fsspec = require("fsspec", "remote")
    try:
        fs, path = fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as exc:
        scheme = url.split("://", 1)[0]
        raise ZooFileError(f"cannot open {scheme}:// URLs ({exc})",
                           hint="pip install 'zooscope[remote]'; s3:// also needs s3fs") from None
    try:
        _zoo_cache()
        handle = fs.open(path, "rb", block_size=block_size or BLOCK_SIZE, cache_type="zooscope")
    except FileNotFoundError:
        raise ZooFileError(f"no zoo file at {url}") from None
    except OSError as exc:
        raise ZooFileError(f"cannot open {url} ({exc})") from None
    try:
        # A server that ignores Range serves a file's start as if asked for it, and fails
        # only on a read further in: the last byte tells.
        size = int(getattr(handle, "size", 0) or 0)
        if size > 1:
            handle.seek(size - 1)
            handle.read(1)
        handle.seek(0)
    except ValueError as exc:
        handle.close()
        if "range" not in str(exc).lower():
            raise
        raise ZooFileError(f"{url} cannot be read in parts: the server ignores HTTP range "
                           "requests",
                           hint="download the file and open it locally, or serve it where "
                                "ranges work (most web servers, S3 and the Hugging Face hub "
                                "do)") from None
    return handle
