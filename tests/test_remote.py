"""Zoos at URLs: opened over HTTP with Range requests, fetching only what is read."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

import zooscope
from zooscope import remote
from zooscope.errors import ZooFileError

from .rangeserver import RangeServer

pytest.importorskip("aiohttp")


@pytest.fixture
def served(tiny_zoo: Path, tmp_path: Path):
    shutil.copy(tiny_zoo, tmp_path / "tiny.h5")
    (tmp_path / "notes.h5").write_bytes(b"not an HDF5 file at all" * 100)
    with RangeServer(tmp_path) as server:
        yield server


def test_a_zoo_over_http_reads_as_the_local_file(served: RangeServer, tiny_zoo: Path) -> None:
    url = f"{served.url}/tiny.h5"
    with zooscope.open_zoo(url) as zoo, zooscope.open_zoo(tiny_zoo) as local:
        assert zoo.path == url and zoo.path.name == "tiny.h5"
        assert [m.id for m in zoo.members()] == [m.id for m in local.members()]
        assert zoo.checkpoints() == local.checkpoints()
        assert zoo.metrics().equals(local.metrics())
        for name in zoo.tensor_names()[:3]:
            np.testing.assert_array_equal(zoo.tensor(name), local.tensor(name))
        np.testing.assert_array_equal(zoo.predictions(), local.predictions())
        assert zoo.analyses() == []  # results stored beside a zoo do not travel with a URL
    result = zooscope.analyze(url, "weightstats", percentiles=False, tensors="^head")
    assert len(result.tables["stats"]) > 0


def test_only_what_is_read_is_fetched(served: RangeServer, tiny_zoo: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Opening, listing and reading one tensor moves a small part of the file, in few
    requests; the tensor's own bytes arrive once."""
    monkeypatch.setattr(remote, "BLOCK_SIZE", 4096)
    size = tiny_zoo.stat().st_size
    with zooscope.open_zoo(f"{served.url}/tiny.h5") as zoo:
        zoo.members_frame()
        opened = served.sent
        name = max(zoo.tensor_names(), key=lambda n: int(np.prod(zoo.tensor_shape(n))))
        served.reset()
        stack = zoo.tensor(name)
    # Checkpoints with equal values (each seed's epoch 0) share one stored row.
    rows = np.unique(stack.reshape(len(stack), -1), axis=0)
    stored = rows.nbytes
    assert opened < size / 4
    assert stored / 2 <= served.sent <= stored + 4096 * (len(stack) + 4)
    assert served.requests <= len(stack) + 4


def test_bad_urls_give_one_clear_error(served: RangeServer) -> None:
    with pytest.raises(ZooFileError, match="no zoo file at http://.*/missing.h5"):
        zooscope.open_zoo(f"{served.url}/missing.h5")
    with pytest.raises(ZooFileError, match="notes.h5 is not a readable HDF5 file"):
        zooscope.open_zoo(f"{served.url}/notes.h5")
    with pytest.raises(ZooFileError, match="no store reads 'notes.txt'"):
        zooscope.open_zoo(f"{served.url}/notes.txt")


def test_a_server_without_range_requests_is_named(tiny_zoo: Path, tmp_path: Path) -> None:
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    shutil.copy(tiny_zoo, tmp_path / "tiny.h5")

    class Quiet(SimpleHTTPRequestHandler):  # serves whole files, ignoring Range
        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0),
                                 functools.partial(Quiet, directory=str(tmp_path)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/tiny.h5"
        with pytest.raises(ZooFileError, match="cannot be read in parts: the server ignores "
                                               "HTTP range requests"):
            zooscope.open_zoo(url)
    finally:
        server.shutdown()
        server.server_close()


def test_the_command_line_says_urls_are_for_python(tmp_path: Path) -> None:
    from .conftest import run_cli

    done = run_cli("zoo", "ls", "http://127.0.0.1:9/zoos/tiny.h5")
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        "error: http://127.0.0.1:9/zoos/tiny.h5 is a URL; the command line reads local zoo "
        "files", "hint: download it, or open it from Python: zooscope.open_zoo(url)"]


def test_load_model_takes_an_open_zoo_or_a_url(served: RangeServer, tiny_zoo: Path) -> None:
    import torch

    with zooscope.open_zoo(tiny_zoo) as zoo:
        member = zoo.members()[0].id
        model, tokenizer = zooscope.load_model(zoo, member=member, epoch=1)
    remote_model, _ = zooscope.load_model(f"{served.url}/tiny.h5", member=member, epoch=1)
    for (name, a), (_, b) in zip(model.state_dict().items(), remote_model.state_dict().items(),
                                 strict=True):
        assert torch.equal(a, b), name
