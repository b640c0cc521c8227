"""A local HTTP server with Range support that counts requests and bytes sent, for
reading zoos at URLs in tests and benchmarks, and that can be told to misbehave.

It runs in a process of its own, as a real server does. A server thread inside the
reading process would share its garbage collector and h5py's global lock with the
reader, which no real deployment does.

Misbehaviour is chosen per request by the first part of the path:

- ``/ok/FILE``: honest (the same as ``/FILE``)
- ``/short/FILE``: answers with the asked-for headers but sends half the bytes of any
  range over 4 KiB, then closes
- ``/shortlength/FILE``: announces and sends half of any range over 8 KiB
- ``/wrongrange/FILE``: sends the bytes after the ones asked for, labelled as asked
- ``/mislabel/FILE``: sends the right bytes labelled as another range
- ``/hang/FILE``: accepts the connection and never answers
- ``/hangbody/FILE``: sends the headers of any range over 8 KiB, then nothing
- ``/trickle/FILE``: sends one byte every 0.2 s
- ``/away/FILE``: redirects to the same file on another host (``localhost``)
- ``/here/FILE``: redirects to ``/ok/FILE`` on the same host
- ``/norange/FILE``: ignores Range and sends the whole file
- ``/flip/FILE``: flips one bit in every range over 8 KiB
- ``/changes/FILE``: a new ``ETag`` and the whole file after the first request
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from http.client import HTTPConnection
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
MODES = {"ok", "short", "shortlength", "wrongrange", "mislabel", "hang", "hangbody", "trickle",
         "away", "here", "norange", "flip", "changes"}
LARGE = 8192  # more than two 4 KiB blocks of the reader: the lies hit tensor rows


def serve(folder: Path, port_file: Path | None = None) -> None:
    """Serve ``folder`` on 127.0.0.1 until killed; print the port on the first line."""
    counts = {"requests": 0, "sent": 0, "seen": 0}
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body in separate writes, no 40 ms wait

        def log_message(self, *args: Any) -> None:
            pass

        def _reply(self, status: int, headers: dict[str, str], body: bytes = b"") -> None:
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            target = self.path.split("?", 1)[0]
            if "://" in target:  # absolute form: a request through a proxy
                target = "/" + target.split("://", 1)[1].split("/", 1)[1]
            if target == "/.stats":
                body = json.dumps(counts).encode()
                self._reply(200, {"Content-Length": str(len(body))}, body)
                return
            if target == "/.reset":
                with lock:
                    counts.update(requests=0, sent=0)
                self._reply(200, {"Content-Length": "0"})
                return
            parts = target.lstrip("/").split("/")
            mode = parts[0] if len(parts) > 1 and parts[0] in MODES else "ok"
            if mode != "ok" or parts[0] == "ok":
                parts = parts[1:]
            path = folder.joinpath(*parts)
            with lock:
                counts["seen"] += 1
                seen = counts["seen"]
            if mode == "hang":
                time.sleep(3600)
                return
            if mode in ("away", "here"):
                host = f"localhost:{self.server.server_address[1]}" if mode == "away" \
                    else self.headers["Host"]
                self._reply(302, {"Location": f"http://{host}/ok/{'/'.join(parts)}",
                                  "Content-Length": "0"})
                return
            if not path.is_file():
                self._reply(404, {"Content-Length": "0"})
                return
            size = path.stat().st_size

            def read(first: int, stop: int) -> bytes:  # only the bytes asked for
                with open(path, "rb") as fh:
                    fh.seek(first)
                    return fh.read(max(0, stop - first))

            etag = f'"v{seen if mode == "changes" and seen > 1 else 1}"'
            start, end = 0, size - 1
            match = _RANGE.match(self.headers.get("Range", ""))
            ranged = bool(match and (match.group(1) or match.group(2))) and mode != "norange"
            if ranged and mode == "changes" and seen > 1 and self.headers.get("If-Range"):
                ranged = False  # the file changed: If-Range asks for all of it
            if ranged:
                assert match is not None
                if match.group(1):
                    start = int(match.group(1))
                    end = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
                else:
                    start = max(size - int(match.group(2)), 0)
                if start > end:
                    self._reply(416, {"Content-Range": f"bytes */{size}", "Content-Length": "0"})
                    return
            body = read(start, end + 1)
            large = len(body) > LARGE
            label = (start, end)
            if mode == "wrongrange" and large:
                body = read(start + 1, end + 2).ljust(len(body), b"\0")
            if mode == "mislabel" and large:
                label = (start + 1, end + 1)
            if mode == "flip" and large:
                body = body[:100] + bytes([body[100] ^ 1]) + body[101:]
            headers = {"Accept-Ranges": "bytes", "ETag": etag,
                       "Content-Length": str(len(body))}
            if mode == "shortlength" and large:
                body = body[: len(body) // 2]
                headers["Content-Length"] = str(len(body))
            if ranged:
                headers["Content-Range"] = f"bytes {label[0]}-{label[1]}/{size}"
            self.send_response(206 if ranged else 200)
            for key, value in headers.items():
                self.send_header(key, value)
            if mode == "short" and large:
                self.send_header("Connection", "close")
            self.end_headers()
            if mode == "short" and large:
                body = body[: len(body) // 2]
                self.close_connection = True
            if mode == "hangbody" and large:
                time.sleep(3600)
                return
            if mode == "trickle":
                for i in range(len(body)):
                    self.wfile.write(body[i:i + 1])
                    self.wfile.flush()
                    time.sleep(0.2)
            else:
                self.wfile.write(body)
            with lock:
                counts["requests"] += 1
                counts["sent"] += len(body)

        def do_HEAD(self) -> None:  # noqa: N802
            path = folder.joinpath(*self.path.lstrip("/").split("/"))
            if not path.is_file():
                self._reply(404, {"Content-Length": "0"})
                return
            self._reply(200, {"Content-Length": str(path.stat().st_size),
                              "Accept-Ranges": "bytes"})

    class Server(ThreadingHTTPServer):
        daemon_threads = True

        def handle_error(self, request: Any, client_address: Any) -> None:
            pass  # a client that gave up (a timeout test) is no news

    server = Server(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()


class RangeServer:
    """Serves ``folder`` on 127.0.0.1 at a free port from a process of its own;
    ``requests`` and ``sent`` count GET requests and body bytes. Use as a context
    manager."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self._proc: subprocess.Popen[str] | None = None
        self.url = ""

    def _stats(self) -> dict[str, int]:
        conn = HTTPConnection("127.0.0.1", int(self.url.rsplit(":", 1)[1]), timeout=10)
        try:
            conn.request("GET", "/.stats")
            return json.loads(conn.getresponse().read())
        finally:
            conn.close()

    @property
    def requests(self) -> int:
        return self._stats()["requests"]

    @property
    def sent(self) -> int:
        return self._stats()["sent"]

    def reset(self) -> None:
        conn = HTTPConnection("127.0.0.1", int(self.url.rsplit(":", 1)[1]), timeout=10)
        try:
            conn.request("GET", "/.reset")
            conn.getresponse().read()
        finally:
            conn.close()

    def __enter__(self) -> RangeServer:
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent)}
        self._proc = subprocess.Popen([sys.executable, "-c",
                                       "import sys, rangeserver; "
                                       "rangeserver.serve(rangeserver.Path(sys.argv[1]))",
                                       str(self.folder)], stdout=subprocess.PIPE, text=True,
                                      env=env)
        assert self._proc.stdout is not None
        port = self._proc.stdout.readline().strip()
        if not port.isdigit():
            self._proc.kill()
            raise RuntimeError("the range server did not start")
        self.url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait(timeout=30)
            if self._proc.stdout is not None:
                self._proc.stdout.close()
