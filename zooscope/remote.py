"""Zoos at URLs: a seekable, read-only file object over a URL that fetches only the byte
ranges HDF5 reads.

``http://`` and ``https://`` are read with the standard library on the calling thread.
That matters: h5py holds its global lock for the whole of a read, the file object's
callback included. A fetch that waits on another thread (fsspec's event-loop thread)
deadlocks as soon as that thread runs the garbage collector and finds an h5py object
to free, since freeing one needs the lock the waiting reader holds. Other fsspec URLs
(``s3://``, ``hf://``, ...) go through fsspec with automatic garbage collection held off
while a fetch is awaited on another thread.

Every wait is bounded: a connection or the next bytes of an answer within ``timeout``
seconds (``ZOOSCOPE_NETWORK_TIMEOUT``, default 30), and a whole answer within
``timeout`` plus its size at ``MIN_RATE``. Every answer is checked: the range asked for,
the file's size, its length. A failure raises ``NetworkError`` naming the URL.
"""

from __future__ import annotations

import base64
import gc
import http.client
import io
import math
import re
import socket
import ssl
import time
import urllib.request
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any
from urllib.parse import unquote, urljoin, urlsplit

from zooscope.environment import (
    NETWORK_TIMEOUT,
    NETWORK_TIMEOUT_VARIABLE,
    network_timeout_setting,
)
from zooscope.errors import ConfigError, MissingFile, NetworkError, ZooFileError, ZooscopeError
from zooscope.extras import require

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")

#: Small reads (HDF5's metadata: headers, indexes, chunk B-trees) fetch the aligned block
#: around them, kept in a small LRU cache; reads of a block or more (tensor chunks) fetch
#: exactly their bytes. Measured by ``bench/bench_remote.py``: at 16 KiB a zoo opens and
#: lists in 5 requests (82 kB); smaller blocks take more requests for the same metadata,
#: larger ones fetch more bytes around each small tensor's chunk.
BLOCK_SIZE = 1 << 14
#: Blocks kept for small reads.
CACHED_BLOCKS = 64
#: Seconds to wait for a connection or for the next bytes of an answer.
DEFAULT_TIMEOUT = NETWORK_TIMEOUT
TIMEOUT_VARIABLE = NETWORK_TIMEOUT_VARIABLE
#: An answer must arrive within the timeout plus its size at this rate (bytes per
#: second), so a server that trickles bytes fails instead of holding a read forever.
MIN_RATE = 64 * 1024
#: Redirects followed on the same host before giving up.
MAX_REDIRECTS = 5


class URL(str):
    """A zoo's location given as a URL; ``name`` is its file name, as for a ``Path``."""

    @property
    def name(self) -> str:
        return urlsplit(self).path.rstrip("/").rsplit("/", 1)[-1]

    @property
    def suffix(self) -> str:
        name = self.name
        return name[name.rfind("."):] if "." in name else ""


def is_url(location: Any) -> bool:
    return isinstance(location, str) and bool(_SCHEME.match(location)) \
        and not location.startswith("file://")


def network_timeout(timeout: float | None = None) -> float:
    """``timeout`` if given, else ``ZOOSCOPE_NETWORK_TIMEOUT``, else 30 s; checked."""
    if timeout is None:
        return network_timeout_setting()
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) \
            or not math.isfinite(timeout) or not 0 < timeout <= 86400:
        raise ConfigError(f"timeout {timeout!r} is not a number of seconds between 0 and "
                          "86400", hint=f"the default is {DEFAULT_TIMEOUT:g} s")
    return float(timeout)


def open_url(url: str, timeout: float | None = None) -> RangeFile:
    """A seekable, read-only file object for ``url`` that fetches ranges on demand."""
    timeout = network_timeout(timeout)
    scheme = urlsplit(url).scheme.lower()
    source = HTTPRanges(url, timeout) if scheme in ("http", "https") \
        else FsspecRanges(url, timeout)
    try:
        return RangeFile(source)
    except BaseException:
        source.close()
        raise


def read_bytes(url: str, timeout: float | None = None, limit: int = 1 << 20) -> bytes:
    """The whole of a small file at ``url`` (a zoo folder's index), at most ``limit``
    bytes; a larger one is refused before it is read."""
    with open_url(url, timeout) as source:
        if source.size > limit:
            raise ZooFileError(f"{url} holds {source.size:,} bytes; at most {limit:,} expected",
                               hint="it is not what zooscope wrote there")
        return source._range(0, source.size) if source.size else b""


class RangeFile(io.RawIOBase):
    """The file object HDF5 reads: aligned, LRU-cached blocks for small reads, exact
    ranges for large ones, every answer of exactly the length asked for."""

    def __init__(self, source: HTTPRanges | FsspecRanges) -> None:
        super().__init__()
        self.source, self.url = source, source.url
        self.block_size = BLOCK_SIZE
        self.blocks: OrderedDict[int, bytes] = OrderedDict(source.first_blocks(self.block_size))
        self.size = source.size
        self.pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self.pos = base + offset
        return self.pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        end = min(self.pos + len(view), self.size)
        if end <= self.pos:
            return 0
        data = self._range(self.pos, end)
        view[: len(data)] = data
        self.pos = end
        return len(data)

    def _range(self, start: int, end: int) -> bytes:
        bs = self.block_size
        first, last = start // bs, (end - 1) // bs
        if end - start >= bs and not all(i in self.blocks for i in range(first, last + 1)):
            return self._fetch(start, end)
        data = b"".join(self._block(i) for i in range(first, last + 1))
        return data[start - first * bs:end - first * bs]

    def _block(self, i: int) -> bytes:
        if i in self.blocks:
            self.blocks.move_to_end(i)
            return self.blocks[i]
        data = self._fetch(i * self.block_size, min((i + 1) * self.block_size, self.size))
        self.blocks[i] = data
        if len(self.blocks) > CACHED_BLOCKS:
            self.blocks.popitem(last=False)
        return data

    def _fetch(self, start: int, end: int) -> bytes:
        data = self.source.fetch(start, end)
        if len(data) != end - start:
            raise NetworkError(f"{self.url}: asked for bytes {start}-{end - 1}, received "
                               f"{len(data)} bytes instead of {end - start}",
                               hint="the server or a proxy between is faulty; try again, "
                                    "or download the file")
        return data

    def close(self) -> None:
        if not self.closed:
            self.source.close()
        super().close()


# --- http:// and https:// ------------------------------------------------------------------


class _Clock:
    """The deadline of the request under way (``time.monotonic`` seconds)."""

    deadline = math.inf


class _TimedReader(io.RawIOBase):
    """A socket's bytes, each receive waiting at most ``timeout`` and never past the
    request's deadline, so neither a silent nor a trickling server holds a read."""

    def __init__(self, sock: socket.socket, clock: _Clock, timeout: float) -> None:
        super().__init__()
        # The socket's own file object keeps its descriptor open until this closes, as
        # http.client expects when it hands a connection over to its response.
        self.raw = sock.makefile("rb", buffering=0)
        self.sock, self.clock, self.timeout = sock, clock, timeout

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left = self.clock.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the answer's deadline passed")
        self.sock.settimeout(min(self.timeout, left))
        return self.raw.readinto(buffer)

    def close(self) -> None:
        self.raw.close()
        super().close()


class _TimedSocket:
    def __init__(self, sock: socket.socket, clock: _Clock, timeout: float) -> None:
        self.sock, self.clock, self.timeout = sock, clock, timeout

    def makefile(self, mode: str) -> io.BufferedReader:
        return io.BufferedReader(_TimedReader(self.sock, self.clock, self.timeout))


class _TimedResponse(http.client.HTTPResponse):
    def __init__(self, sock: socket.socket, *args: Any, clock: _Clock, timeout: float,
                 **kwargs: Any) -> None:
        super().__init__(_TimedSocket(sock, clock, timeout), *args, **kwargs)  # type: ignore[arg-type]


_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)
_RETRIED = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError,
            http.client.BadStatusLine)


class HTTPRanges:
    """Byte ranges of one file on an HTTP(S) server, over one kept-alive connection.

    Redirects are followed on the same host only; proxies come from the usual
    ``http_proxy``/``https_proxy``/``no_proxy`` variables. Once the first answer names
    the file's version (``ETag``), each later range asks for that version (``If-Range``),
    so a file replaced on the server while it is read is an error, not a mix of two files.
    """

    def __init__(self, url: str, timeout: float) -> None:
        self.url, self.timeout = url, timeout
        self.target = urlsplit(url)
        if not self.target.hostname:
            raise ZooFileError(f"{url} names no host")
        self._proxy = _proxy(self.target)
        self._conn: http.client.HTTPConnection | None = None
        self._clock = _Clock()
        self._etag: str | None = None
        self.size = -1

    def first_blocks(self, block_size: int) -> Iterator[tuple[int, bytes]]:
        """Learn the file's size from a first range (the blocks HDF5 reads first)."""
        data = self.fetch(0, block_size)
        for i in range(0, len(data), block_size):
            yield i // block_size, data[i:i + block_size]

    def fetch(self, start: int, end: int) -> bytes:
        if self.size >= 0:
            end = min(end, self.size)
        headers = {"Range": f"bytes={start}-{end - 1}", "Accept-Encoding": "identity"}
        if self._etag:
            headers["If-Range"] = self._etag
        deadline = time.monotonic() + self.timeout + (end - start) / MIN_RATE
        for redirect in range(MAX_REDIRECTS + 1):
            status, reply, body = self._get(headers, deadline, end - start)
            if status in (301, 302, 303, 307, 308):
                self._follow(reply.get("Location"), redirect)
                continue
            break
        return self._check(status, reply, body, start, end)

    def _follow(self, location: str | None, redirect: int) -> None:
        here = self.target.geturl()
        if not location or redirect == MAX_REDIRECTS:
            raise NetworkError(f"{self.url}: too many redirects, or one without a target")
        there = urlsplit(urljoin(here, location))
        same = there.hostname == self.target.hostname and (
            there.port == self.target.port
            or (there.scheme, self.target.scheme) == ("https", "http"))
        if there.scheme not in ("http", "https") or not same:
            raise NetworkError(
                f"{self.url} redirects to another host ({there.scheme}://{there.netloc}); "
                "zooscope follows redirects on the same host only",
                hint="open the address it redirects to, if you trust that host")
        self.close()
        self.target = there
        self._proxy = _proxy(there)

    def _get(self, headers: dict[str, str], deadline: float,
             size: int) -> tuple[int, http.client.HTTPMessage, bytes]:
        self._clock.deadline = deadline
        path = self.target.path or "/"
        if self.target.query:
            path += "?" + self.target.query
        for attempt in (0, 1):
            try:
                conn = self._connection(deadline)
                url_or_path, extra = self._proxied(path)
                conn.request("GET", url_or_path, headers={**headers, **extra})
                reply = conn.getresponse()
                if reply.status >= 300:  # no body wanted: a fresh connection for the next
                    self.close()
                    return reply.status, reply.headers, b""
                chunks, got = [], 0
                while True:
                    chunk = reply.read1(min(1 << 20, max(size - got, 1 << 16)))
                    if not chunk:
                        break
                    chunks.append(chunk)
                    got += len(chunk)
                    if got > size:  # more than asked for: an answer to another question
                        break
                reply.close()  # read to its end: the connection serves the next request
                if got != size or reply.will_close:
                    self.close()
                return reply.status, reply.headers, b"".join(chunks)
            except _RETRIED as exc:
                self.close()
                if attempt:  # a kept-alive connection the server had closed gets one retry
                    raise NetworkError(f"{self.url}: the server closed the connection ({exc!r})",
                                       hint="try again later") from None
            except TimeoutError:
                self.close()
                late = time.monotonic() >= deadline
                raise NetworkError(
                    f"{self.url}: " + (f"the answer did not arrive within {deadline_text(self.timeout, size)}"
                                       if late else f"no answer within {self.timeout:g} s"),
                    hint=f"the server or the network is slow or down; {TIMEOUT_VARIABLE}=SECONDS "
                         "(or open_zoo(url, timeout=SECONDS)) waits longer") from None
            except http.client.IncompleteRead as exc:
                self.close()
                raise NetworkError(f"{self.url}: the server sent {len(exc.partial)} of the "
                                   f"bytes it announced, then closed the connection",
                                   hint="try again; the server or the network is faulty") from None
            except (http.client.HTTPException, ssl.SSLError, OSError) as exc:
                self.close()
                raise NetworkError(f"{self.url}: {_describe(exc)}",
                                   hint="check the address and the network") from None
        raise AssertionError("unreachable")

    def _check(self, status: int, reply: http.client.HTTPMessage, body: bytes, start: int,
               end: int) -> bytes:
        if status == 404:
            raise MissingFile(f"no zoo file at {self.url}")
        if status in (401, 403):
            raise NetworkError(f"{self.url}: access denied (HTTP {status})",
                               hint="the file is private, or the address needs a token")
        if status == 416 and self.size < 0:
            raise ZooFileError(f"{self.url} is empty, not a zoo file")
        if status == 200:
            if self._etag:
                raise NetworkError(f"{self.url} changed on the server while it was read",
                                   hint="open it again to read the new version")
            raise ZooFileError(f"{self.url} cannot be read in parts: the server ignores HTTP "
                               "range requests",
                               hint="download the file and open it locally, or serve it where "
                                    "ranges work (most web servers, S3 and the Hugging Face hub "
                                    "do; `python -m http.server` does not)")
        if status != 206:
            raise NetworkError(f"{self.url}: the server answered HTTP {status} to a range request")
        match = _CONTENT_RANGE.match(reply.get("Content-Range", ""))
        if not match or match.group(3) == "*":
            raise NetworkError(f"{self.url}: the server's partial answer names no byte range "
                               f"(Content-Range {reply.get('Content-Range')!r})")
        first, last, total = int(match.group(1)), int(match.group(2)), int(match.group(3))
        if self.size < 0:
            if start != 0 or total <= 0:
                raise NetworkError(f"{self.url}: the server gave no usable file size")
            self.size = total
            self._etag = _strong_etag(reply.get("ETag"))
            end = min(end, total)
        if (first, last + 1, total) != (start, end, self.size):
            raise NetworkError(f"{self.url}: asked for bytes {start}-{end - 1} of "
                               f"{self.size}, the server sent {first}-{last} of {total}",
                               hint="the server or a proxy between is faulty")
        if len(body) != end - start:
            raise NetworkError(f"{self.url}: asked for bytes {start}-{end - 1}, received "
                               f"{len(body)} bytes instead of {end - start}",
                               hint="the server or a proxy between is faulty; try again")
        return body

    def _connection(self, deadline: float) -> http.client.HTTPConnection:
        left = max(min(self.timeout, deadline - time.monotonic()), 0.001)
        if self._conn is None:
            proxy, target = self._proxy, self.target
            if proxy is None:
                self._conn = _connect(target.scheme, target.hostname or "", target.port, left)
            else:
                self._conn = _connect(proxy.scheme, proxy.hostname or "", proxy.port, left)
                if target.scheme == "https":  # through the proxy's CONNECT tunnel
                    self._conn.set_tunnel(target.hostname or "", target.port or 443,
                                          headers=_proxy_auth(proxy))
        self._conn.timeout = left
        if self._conn.sock is not None:
            self._conn.sock.settimeout(left)
        self._conn.response_class = partial(_TimedResponse, clock=self._clock,  # type: ignore[assignment]
                                            timeout=self.timeout)
        return self._conn

    def _proxied(self, path: str) -> tuple[str, dict[str, str]]:
        """The request target and headers: a path, or the full URL through an HTTP proxy."""
        extra = {"User-Agent": _user_agent()}
        if self.target.username is not None:
            extra["Authorization"] = _basic(self.target.username, self.target.password)
        proxy = self._proxy
        if proxy is not None and self.target.scheme == "http":
            netloc = self.target.hostname or ""
            if self.target.port:
                netloc += f":{self.target.port}"
            extra.update(_proxy_auth(proxy))
            return f"http://{netloc}{path}", extra
        return path, extra

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def deadline_text(timeout: float, size: int) -> str:
    return f"{timeout + size / MIN_RATE:.0f} s ({timeout:g} s plus {size} bytes at " \
           f"{MIN_RATE // 1024} KiB/s)"


def _connect(scheme: str, host: str, port: int | None, timeout: float) -> http.client.HTTPConnection:
    if scheme == "https":
        return http.client.HTTPSConnection(host, port, timeout=timeout,
                                           context=ssl.create_default_context())
    return http.client.HTTPConnection(host, port, timeout=timeout)


def _proxy(target: Any) -> Any:
    proxies = urllib.request.getproxies()
    proxy = proxies.get(target.scheme)
    if not proxy or urllib.request.proxy_bypass(target.hostname or ""):
        return None
    return urlsplit(proxy if "://" in proxy else f"http://{proxy}")


def _proxy_auth(proxy: Any) -> dict[str, str]:
    if proxy.username is None:
        return {}
    return {"Proxy-Authorization": _basic(proxy.username, proxy.password)}


def _basic(user: str, password: str | None) -> str:
    token = f"{unquote(user)}:{unquote(password or '')}".encode()
    return "Basic " + base64.b64encode(token).decode()


def _strong_etag(etag: str | None) -> str | None:
    """An ETag ``If-Range`` may carry: strong ones only (RFC 9110)."""
    return etag if etag and not etag.startswith("W/") else None


def _user_agent() -> str:
    from zooscope.version import __version__

    return f"zooscope/{__version__}"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, socket.gaierror):
        return f"the host cannot be found ({exc.strerror or exc})"
    if isinstance(exc, ConnectionRefusedError):
        return "the connection was refused (no server at that address and port)"
    if isinstance(exc, ssl.SSLError):
        return f"the secure connection failed ({exc.reason or exc})"
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return f"the request failed ({text})"


# --- other fsspec URLs ---------------------------------------------------------------------


@contextmanager
def collection_held_off() -> Iterator[None]:
    """Hold off automatic garbage collection while this thread waits on another one
    inside an h5py read: a collection on that thread that frees an h5py object would
    wait for the lock this thread holds (see the module's docstring)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class FsspecRanges:
    """Byte ranges of one file through fsspec (``s3://``, ``hf://``, ``gs://``, ...):
    ``info`` for its size and ``cat_file`` for each range. An asynchronous filesystem
    is waited on with a deadline and with automatic garbage collection held off."""

    def __init__(self, url: str, timeout: float) -> None:
        fsspec = require("fsspec", "remote")
        self.url, self.timeout = url, timeout
        scheme = url.split("://", 1)[0].lower()
        options: dict[str, Any] = {}
        if scheme in ("s3", "s3a"):
            options["config_kwargs"] = {"connect_timeout": timeout, "read_timeout": timeout}
        try:
            self.fs, self.path = fsspec.core.url_to_fs(url, **options)
        except (ImportError, ValueError) as exc:
            raise ZooFileError(f"cannot open {scheme}:// URLs ({exc})",
                               hint="pip install 'zooscope[remote]'; s3:// also needs s3fs") from None
        from fsspec.asyn import AsyncFileSystem

        self._async = isinstance(self.fs, AsyncFileSystem)
        try:
            info = self._call("info", 0, self.path)
        except FileNotFoundError:
            raise MissingFile(f"no zoo file at {url}") from None
        if info.get("type") == "directory":
            raise ZooFileError(f"{url} is a folder, not a zoo file")
        self.size = int(info.get("size") or 0)
        if self.size <= 0:
            raise ZooFileError(f"{url} is empty, not a zoo file")

    def _call(self, method: str, size: int, *args: Any, **kwargs: Any) -> Any:
        try:
            if self._async:
                from fsspec.asyn import sync

                with collection_held_off():
                    return sync(self.fs.loop, getattr(self.fs, "_" + method), *args,
                                timeout=self.timeout + size / MIN_RATE, **kwargs)
            return getattr(self.fs, method)(*args, **kwargs)
        except (FileNotFoundError, ZooscopeError):
            raise
        except Exception as exc:  # each filesystem raises its own kinds; all are the network's
            if isinstance(exc, TimeoutError) or "timeout" in type(exc).__name__.lower():
                raise NetworkError(f"{self.url}: no answer within "
                                   f"{deadline_text(self.timeout, size) if size else f'{self.timeout:g} s'}",
                                   hint=f"the server or the network is slow or down; "
                                        f"{TIMEOUT_VARIABLE}=SECONDS (or open_zoo(url, "
                                        "timeout=SECONDS)) waits longer") from None
            raise NetworkError(f"{self.url}: {_describe(exc)}",
                               hint="check the address, the network and any credentials") from None

    def first_blocks(self, block_size: int) -> Iterator[tuple[int, bytes]]:
        return iter(())

    def fetch(self, start: int, end: int) -> bytes:
        end = min(end, self.size)
        return bytes(self._call("cat_file", end - start, self.path, start=start, end=end))

    def close(self) -> None:
        pass
