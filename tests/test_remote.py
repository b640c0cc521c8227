"""Zoos at URLs: opened over HTTP with Range requests, fetching only what is read."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import zooscope
from zooscope import remote
from zooscope.errors import ConfigError, NetworkError, ZooFileError

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


def test_a_server_without_range_requests_is_named(served: RangeServer) -> None:
    with pytest.raises(ZooFileError, match="cannot be read in parts: the server ignores "
                                           "HTTP range requests"):
        zooscope.open_zoo(f"{served.url}/norange/tiny.h5")


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


# A script that reads a zoo at a URL while the cyclic garbage collector runs on almost
# every allocation and finds open h5py objects to free: what a long test session or a
# notebook leaves behind. h5py holds its global lock for the whole of a read, the
# network wait included; a read that waits on another thread (an event loop) deadlocks
# as soon as that thread collects an h5py object, since freeing one needs that lock.
GARBAGE_DURING_READS = """
import faulthandler, gc, sys
import h5py
import zooscope

faulthandler.dump_traceback_later(90, exit=True)  # a deadlock prints every thread and fails
url, local = sys.argv[1], sys.argv[2]


class Cycle:
    def __init__(self):
        self.me = self
        self.f = h5py.File(local, "r", locking=False)
        self.ds = self.f["members/id"]


zoo = zooscope.open_zoo(url, timeout=20)
names = zoo.tensor_names()
for _ in range(20):
    Cycle()
    gc.set_threshold(1)
    zoo._source.blocks.clear()
    for name in names[:5]:
        zoo.tensor(name)
print("read", len(names[:5]) * 20, "tensors")
"""


def test_garbage_collected_during_a_remote_read_cannot_deadlock_it(served: RangeServer,
                                                                   tiny_zoo: Path) -> None:
    done = subprocess.run([sys.executable, "-c", GARBAGE_DURING_READS, f"{served.url}/tiny.h5",
                           str(tiny_zoo)], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.strip() == "read 100 tensors"


def _largest(zoo: zooscope.Zoo) -> str:
    return max(zoo.tensor_names(), key=lambda n: int(np.prod(zoo.tensor_shape(n))))


@pytest.fixture
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """4 KiB blocks: the tiny zoo's largest rows (about 16 KB) are then read as ranges of
    their own, which is what the lying server lies about (ranges over 8 KiB)."""
    monkeypatch.setattr(remote, "BLOCK_SIZE", 4096)


@pytest.mark.parametrize("mode, at_open, message", [
    ("hang", True, r"no answer within 1 s"),
    ("hangbody", False, r"no answer within 1 s"),
    ("trickle", True, r"the answer did not arrive within 1 s \(1 s plus 16384 bytes at 64 KiB/s\)"),
])
def test_a_silent_or_trickling_server_fails_within_the_timeout(
        served: RangeServer, mode: str, at_open: bool, message: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    if not at_open:
        monkeypatch.setattr(remote, "BLOCK_SIZE", 4096)
    url = f"{served.url}/{mode}/tiny.h5"
    start = time.monotonic()
    with pytest.raises(NetworkError, match=message) as caught:
        with zooscope.open_zoo(url, timeout=1) as zoo:
            assert not at_open, "the open should have timed out"
            zoo.tensor(_largest(zoo))
    took = time.monotonic() - start
    assert str(caught.value).startswith(url)
    assert "ZOOSCOPE_NETWORK_TIMEOUT" in (caught.value.hint or "")
    # each wait is bounded by the timeout (the trickle by 1 s plus a block at 64 KiB/s)
    assert took < 6, took


@pytest.mark.parametrize("mode, message", [
    ("short", r"received \d+ bytes instead of \d+"),
    ("shortlength", r"received \d+ bytes instead of \d+"),
    ("mislabel", r"asked for bytes \d+-\d+ of \d+, the server sent \d+-\d+ of \d+"),
    ("wrongrange", r"does not match its stored digest: the bytes received are not the file's"),
    ("flip", r"does not match its stored digest: the bytes received are not the file's"),
])
def test_a_server_that_sends_other_bytes_is_caught(served: RangeServer, tiny_zoo: Path,
                                                   mode: str, message: str,
                                                   small_blocks: None) -> None:
    """Ranges of more than one block (a tensor's rows) come back short, shifted,
    mislabelled or with a flipped bit: each is an error, never wrong numbers."""
    with zooscope.open_zoo(f"{served.url}/{mode}/tiny.h5") as zoo, \
            zooscope.open_zoo(tiny_zoo) as local:
        name = _largest(zoo)
        assert zoo.tensor_names() == local.tensor_names()
        with pytest.raises(NetworkError, match=message):
            zoo.tensor(name)
    # and the same through state_dict, which load_model reads
    with zooscope.open_zoo(f"{served.url}/{mode}/tiny.h5") as zoo:
        c = zoo.checkpoints()[-1]
        with pytest.raises(NetworkError, match=message):
            zoo.state_dict(c.member, c.epoch)


def test_redirects_are_followed_on_the_same_host_only(served: RangeServer,
                                                      tiny_zoo: Path) -> None:
    with zooscope.open_zoo(f"{served.url}/here/tiny.h5") as zoo, \
            zooscope.open_zoo(tiny_zoo) as local:
        name = _largest(zoo)
        np.testing.assert_array_equal(zoo.tensor(name), local.tensor(name))
    port = served.url.rsplit(":", 1)[1]
    with pytest.raises(NetworkError, match=rf"redirects to another host "
                                           rf"\(http://localhost:{port}\); zooscope follows "
                                           "redirects on the same host only") as caught:
        zooscope.open_zoo(f"{served.url}/away/tiny.h5")
    assert caught.value.hint == "open the address it redirects to, if you trust that host"


def test_a_file_replaced_while_it_is_read_is_an_error(served: RangeServer,
                                                       small_blocks: None) -> None:
    with pytest.raises(NetworkError, match="changed on the server while it was read"):
        with zooscope.open_zoo(f"{served.url}/changes/tiny.h5") as zoo:
            zoo.tensor(_largest(zoo))


def test_a_zoo_is_read_through_the_proxy_the_environment_names(
        served: RangeServer, tiny_zoo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The host in the URL does not exist; only the proxy can answer for it."""
    monkeypatch.setenv("http_proxy", served.url)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    with zooscope.open_zoo("http://zoos.invalid/tiny.h5") as zoo, \
            zooscope.open_zoo(tiny_zoo) as local:
        name = _largest(zoo)
        np.testing.assert_array_equal(zoo.tensor(name), local.tensor(name))
    monkeypatch.setenv("no_proxy", "zoos.invalid")
    with pytest.raises(NetworkError, match="the host cannot be found"):
        zooscope.open_zoo("http://zoos.invalid/tiny.h5", timeout=5)


def test_nothing_listens_is_a_network_error_not_damage() -> None:
    with pytest.raises(NetworkError, match=r"http://127.0.0.1:9/z.h5: the connection was "
                                           r"refused"):
        zooscope.open_zoo("http://127.0.0.1:9/z.h5")


@pytest.mark.parametrize("value", ["abc", "0", "-5", "nan", "inf", "1e9"])
def test_a_bad_timeout_setting_names_the_variable(monkeypatch: pytest.MonkeyPatch,
                                                  value: str) -> None:
    monkeypatch.setenv("ZOOSCOPE_NETWORK_TIMEOUT", value)
    with pytest.raises(ConfigError, match="ZOOSCOPE_NETWORK_TIMEOUT"):
        zooscope.open_zoo("http://127.0.0.1:9/z.h5")
    with pytest.raises(ConfigError, match=r"timeout -1 is not a number of seconds"):
        zooscope.open_zoo("http://127.0.0.1:9/z.h5", timeout=-1)


def test_the_timeout_setting_is_used(served: RangeServer,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZOOSCOPE_NETWORK_TIMEOUT", "1.5")
    start = time.monotonic()
    with pytest.raises(NetworkError, match=r"no answer within 1.5 s"):
        zooscope.open_zoo(f"{served.url}/hang/tiny.h5")
    assert time.monotonic() - start < 5


def test_other_fsspec_urls_read_as_the_local_file(tiny_zoo: Path) -> None:
    fsspec = pytest.importorskip("fsspec")
    with fsspec.open("memory://zoos/tiny.h5", "wb") as fh:
        fh.write(tiny_zoo.read_bytes())
    try:
        with zooscope.open_zoo("memory://zoos/tiny.h5") as zoo, \
                zooscope.open_zoo(tiny_zoo) as local:
            assert zoo.metrics().equals(local.metrics())
            for name in zoo.tensor_names():
                np.testing.assert_array_equal(zoo.tensor(name), local.tensor(name))
        with pytest.raises(ZooFileError, match="no zoo file at memory://zoos/missing.h5"):
            zooscope.open_zoo("memory://zoos/missing.h5")
    finally:
        fsspec.filesystem("memory").rm("zoos", recursive=True)


def test_an_asynchronous_filesystem_is_waited_on_with_a_deadline(served: RangeServer,
                                                                 tiny_zoo: Path) -> None:
    """fsspec's own HTTP filesystem runs on an event-loop thread: the ranges it fetches
    are checked like any, and a silent server ends in the timeout."""
    pytest.importorskip("aiohttp")
    source = remote.FsspecRanges(f"{served.url}/tiny.h5", 5)
    assert source._async and source.size == tiny_zoo.stat().st_size
    assert source.fetch(100, 5000) == tiny_zoo.read_bytes()[100:5000]
    source = remote.FsspecRanges(f"{served.url}/hangbody/tiny.h5", 1)
    start = time.monotonic()
    with pytest.raises(NetworkError, match=r"no answer within 1 s \(1 s plus 20000 bytes"):
        source.fetch(0, 20000)
    assert time.monotonic() - start < 5
