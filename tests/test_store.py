"""The HDF5 store: round trips, layout, dedup, dtypes, the documented h5py reader, kills."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import zooscope
from zooscope.access import open_stored
from zooscope.errors import ZooFileError
from zooscope.record import TestSet, ZooRecord
from zooscope.stores.hdf5 import HDF5Store
from zooscope.zoo import COMPLETE, Architecture, Member

from .conftest import ROOT
from .storedata import KILL_EPOCHS, SHAPES, expected_tensor, make_zoo_header


def make_zoo(path: Path, members: int = 3, epochs: int = 2, dtype: str = "float32",
             frozen: bool = False, compression: str = "none") -> list[Member]:
    ms = [Member.from_factors({"learning_rate": 1e-3 * (i + 1), "seed": i}) for i in range(members)]
    header = ZooRecord(name="t", config_text="[zoo]\nname = 't'\n", generator="test",
                       generator_version="1", metric_columns=["test_loss", "test_accuracy"],
                       test=TestSet(predictions={"kind": "class", "shape": [7]},
                                    labels=np.arange(7) % 2),
                       storage_dtype=dtype, compression=compression)
    arch = Architecture(key="toy", files={"config.json": b"{}"}, shapes=SHAPES)
    with HDF5Store().create(path, header, ms) as w:
        w.ensure_architecture(arch)
        for i, m in enumerate(ms):
            w.start_member(m, arch)
            for e in range(epochs + 1):
                sd = {n: expected_tensor(n, i, e, frozen) for n in SHAPES}
                w.write_checkpoint(m, e, e * 10, float(e), sd,
                                   {"test_loss": 1.0 / (e + 1), "test_accuracy": 0.5 + 0.1 * e},
                                   (np.arange(7) + e + i) % 2)
            w.set_status(m, COMPLETE)
    return ms


def test_round_trip_is_exact(tmp_path: Path) -> None:
    path = tmp_path / "z.h5"
    ms = make_zoo(path)
    with zooscope.open_zoo(path) as zoo:
        assert [m.id for m in zoo.members()] == [m.id for m in ms]
        assert all(m.status == "complete" for m in zoo.members())
        assert len(zoo.checkpoints()) == 9
        for i, m in enumerate(ms):
            for e in range(3):
                sd = zoo.state_dict(m, e)
                for n in SHAPES:
                    np.testing.assert_array_equal(sd[n].numpy(), expected_tensor(n, i, e))
        cps = zoo.checkpoints(epochs=[2])
        stack = zoo.tensor("layer.weight", cps)
        assert stack.shape == (3, 16, 16)
        for k, c in enumerate(cps):
            i = [m.id for m in ms].index(c.member)
            np.testing.assert_array_equal(stack[k], expected_tensor("layer.weight", i, 2))
        assert zoo.checkpoints(ms[1])[-1].metrics == pytest.approx(
            {"test_loss": 1 / 3, "test_accuracy": 0.7})
        np.testing.assert_array_equal(zoo.predictions(cps)[1], (np.arange(7) + 3) % 2)
        assert zoo.members(learning_rate=2e-3)[0].id == ms[1].id
        rows = zoo.metrics_table(zoo.checkpoints(ms[2]))
        assert [(r["member"], r["epoch"], r["seed"], r["test_accuracy"]) for r in rows] == [
            (ms[2].id, e, 2, pytest.approx(0.5 + 0.1 * e)) for e in range(3)]
        assert zoo.members(seed=[0, 2]) == [ms[0], ms[2]]


def test_identical_tensors_are_stored_once(tmp_path: Path) -> None:
    path = tmp_path / "frozen.h5"
    ms = make_zoo(path, members=4, epochs=3, frozen=True)
    with h5py.File(path, "r") as f:
        tensors = f["architectures/a0/tensors"]
        assert tensors["embed.weight"].shape[0] == 1  # a frozen backbone: one copy
        assert tensors["head.weight"].shape[0] == 16  # 4 members x 4 checkpoints
    with zooscope.open_zoo(path) as zoo:
        np.testing.assert_array_equal(zoo.state_dict(ms[3], 3)["embed.weight"].numpy(),
                                      expected_tensor("embed.weight", 0, 0, frozen=True))


def test_tensor_reads_shared_rows_in_any_checkpoint_order(tmp_path: Path) -> None:
    """Rows shared between checkpoints (a frozen tensor) and checkpoints asked for out of
    order, repeated or interleaved come back in the order asked, equal to each one's
    own state dict."""
    path = tmp_path / "frozen.h5"
    make_zoo(path, members=4, epochs=3, frozen=True)
    rng = random.Random(3)
    with zooscope.open_zoo(path) as zoo:
        cps = zoo.checkpoints()
        for chosen in (cps, cps[::-1], [cps[5], cps[5], cps[0]], rng.sample(cps, 9)):
            for name in ("embed.weight", "head.weight"):
                expect = np.stack([zoo.state_dict(c.member, c.epoch)[name].numpy()
                                   for c in chosen])
                np.testing.assert_array_equal(zoo.tensor(name, chosen), expect)


def test_large_tensor_rows_start_on_page_boundaries(tmp_path: Path) -> None:
    """The writer aligns rows of 64 KiB and more to 4 KiB (whole-page copies into the
    page cache); smaller rows are packed."""
    path = tmp_path / "big.h5"
    header = ZooRecord(name="t", config_text="", generator="test", generator_version="1",
                       metric_columns=["test_loss"])
    shapes = {"big": (3, 7001), "small": (5,)}  # 84 012 bytes a row, and 20
    m = Member.from_factors({"seed": 0})
    arch = Architecture(key="toy", files={"config.json": b"{}"}, shapes=shapes)
    with HDF5Store().create(path, header, [m]) as w:
        w.ensure_architecture(arch)
        w.start_member(m, arch)
        for e in range(3):
            w.write_checkpoint(m, e, e, 0.0, {n: torch.full(s, float(e)) for n, s in shapes.items()},
                               {}, None)
    with h5py.File(path, "r") as f:
        big = f["architectures/a0/tensors/big"]
        offsets = [big.id.get_chunk_info_by_coord((e, 0, 0)).byte_offset for e in range(3)]
        assert all(o % 4096 == 0 for o in offsets), offsets
    with zooscope.open_zoo(path) as zoo:
        np.testing.assert_array_equal(zoo.tensor("big")[:, 0, 0], [0.0, 1.0, 2.0])


def test_an_architectures_tables_are_checked_when_first_used(tmp_path: Path) -> None:
    """Opening reads the members, the index and each architecture's declared layout;
    the rows and digests tables and model files are checked on first use, so listing a
    zoo with a damaged table works and reading from it names the damage."""
    path = _zoo_then(tmp_path, "narrow.h5", lambda f: f["architectures/a0/digests"].resize(0, axis=0))
    with zooscope.open_zoo(path) as zoo:
        assert len(zoo.checkpoints()) == 2
        assert zoo.tensor_shape("layer.weight") == (16, 16)
        with pytest.raises(ZooFileError, match="digests, which has 0 rows"):
            zoo.tensor("layer.weight")
    with zooscope.open_zoo(path) as zoo:
        with pytest.raises(ZooFileError, match="digests, which has 0 rows"):
            zoo.model_files(zoo.members()[0])
    with open_stored(path) as zoo:
        assert any("digests, which has 0 rows" in p for p in zoo.check_structure())


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_storage(tmp_path: Path, dtype: str) -> None:
    path = tmp_path / f"{dtype}.h5"
    ms = make_zoo(path, members=1, epochs=1, dtype=dtype)
    with zooscope.open_zoo(path) as zoo:
        assert zoo.info["storage_dtype"] == dtype
        sd = zoo.state_dict(ms[0], 1)
        want = torch.from_numpy(expected_tensor("layer.weight", 0, 1)).to(getattr(torch, dtype))
        assert sd["layer.weight"].dtype == getattr(torch, dtype)
        assert torch.equal(sd["layer.weight"], want)
        stack = zoo.tensor("layer.weight", zoo.checkpoints(epochs=[1]))
        np.testing.assert_array_equal(stack[0], want.float().numpy())


@pytest.mark.parametrize("compression", ["lz4", "zstd", "gzip"])
def test_compressed_storage_is_lossless(tmp_path: Path, compression: str) -> None:
    path = tmp_path / "c.h5"
    ms = make_zoo(path, members=1, epochs=1, compression=compression)
    with zooscope.open_zoo(path) as zoo:
        np.testing.assert_array_equal(zoo.state_dict(ms[0], 1)["embed.weight"].numpy(),
                                      expected_tensor("embed.weight", 0, 1))


def test_documented_h5py_reader_runs(tiny_zoo: Path) -> None:
    """The worked example in docs/format.md, executed on a real zoo."""
    text = (ROOT / "docs" / "format.md").read_text()
    code = re.search(r"## Reading a zoo with plain h5py.*?```python\n(.*?)```", text, re.S).group(1)
    scope: dict = {"path": str(tiny_zoo)}
    exec(compile(code, "docs/format.md", "exec"), scope)
    with zooscope.open_zoo(tiny_zoo) as zoo:
        for m in zoo.members():
            last = zoo.checkpoints(m)[-1]
            assert scope["final"][m.id] == (last.epoch, pytest.approx(last.metrics["test_accuracy"]))
        first = zoo.checkpoints()[0]
        expected = zoo.state_dict(first.member, first.epoch)
        name = scope["name"]
        np.testing.assert_array_equal(scope["stack"], zoo.tensor(name))
        for n, value in scope["state"].items():
            np.testing.assert_array_equal(value, expected[n].numpy())
        np.testing.assert_allclose(scope["accuracy"],
                                   [c.metrics["test_accuracy"] for c in zoo.checkpoints()],
                                   atol=1e-6)


# -- damaged, foreign and hostile files ------------------------------------------------------
def _open_error(path: Path) -> str:
    with pytest.raises(ZooFileError) as info:
        zooscope.open_zoo(path)
    return str(info.value)


def test_foreign_and_damaged_files_get_clear_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty.h5"
    empty.write_bytes(b"")
    assert "is not a readable HDF5 file" in _open_error(empty)
    noise = tmp_path / "noise.h5"
    noise.write_bytes(os.urandom(4096))
    assert "is not a readable HDF5 file" in _open_error(noise)
    good = tmp_path / "good.h5"
    make_zoo(good)
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    assert "not a readable HDF5 file" in _open_error(truncated) or "damaged" in _open_error(truncated)
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = np.arange(3)
    assert _open_error(foreign).endswith("is an HDF5 file but not a zooscope zoo (no zooscope_format)")
    newer = tmp_path / "newer.h5"
    make_zoo(newer)
    with h5py.File(newer, "r+") as f:
        f.attrs["zooscope_format"] = 2
    assert "uses zoo format 2; this zooscope reads format 1" in _open_error(newer)
    missing = tmp_path / "missing.h5"
    make_zoo(missing)
    with h5py.File(missing, "r+") as f:
        del f["checkpoints"]
    assert "the group /checkpoints is missing" in _open_error(missing)


def _zoo_then(tmp_path: Path, name: str, edit) -> Path:  # type: ignore[no-untyped-def]
    path = tmp_path / name
    make_zoo(path, members=1, epochs=1)
    with h5py.File(path, "r+") as f:
        edit(f)
    return path


def test_hostile_files_are_rejected(tmp_path: Path) -> None:
    outside = tmp_path / "outside.h5"
    with h5py.File(outside, "w") as f:
        f["secret"] = np.arange(3)

    def external(f: h5py.File) -> None:
        f["architectures/a0/evil"] = h5py.ExternalLink(str(outside), "/secret")

    assert "external link" in _open_error(_zoo_then(tmp_path, "ext.h5", external))

    def virtual(f: h5py.File) -> None:
        layout = h5py.VirtualLayout(shape=(3,), dtype="i8")
        layout[:] = h5py.VirtualSource(str(outside), "secret", shape=(3,))
        f.create_virtual_dataset("data/virtual", layout)

    assert "virtual dataset" in _open_error(_zoo_then(tmp_path, "vds.h5", virtual))

    def absurd(f: h5py.File) -> None:
        shapes = json.loads(f["architectures/a0"].attrs["shapes"])
        shapes["layer.weight"] = [2**20, 2**20]
        f["architectures/a0"].attrs["shapes"] = json.dumps(shapes)

    assert "absurd shape" in _open_error(_zoo_then(tmp_path, "absurd.h5", absurd))

    def traversal(f: h5py.File) -> None:
        names = json.loads(f["architectures/a0"].attrs["tensor_names"])
        f["architectures/a0"].attrs["tensor_names"] = json.dumps(names + ["../../etc/passwd"])

    assert "unsafe tensor name '../../etc/passwd'" in _open_error(
        _zoo_then(tmp_path, "dots.h5", traversal))

    def member_name(f: h5py.File) -> None:
        f["members/id"][0] = "a/../b"

    assert "unsafe member name" in _open_error(_zoo_then(tmp_path, "member.h5", member_name))

    def dtype(f: h5py.File) -> None:
        f["data/weird"] = np.zeros(3, dtype=np.complex64)

    assert "unexpected dtype complex64" in _open_error(_zoo_then(tmp_path, "dtype.h5", dtype))

    def shape(f: h5py.File) -> None:
        t = f["architectures/a0/tensors"]
        del t["layer.bias"]
        t.create_dataset("layer.bias", shape=(2, 17), dtype="f4")

    # A stored shape that disagrees with the declared one is refused when first read.
    with zooscope.open_zoo(_zoo_then(tmp_path, "shape.h5", shape)) as zoo:
        with pytest.raises(ZooFileError, match=r"stored with shape \(17,\), declared \(16,\)"):
            zoo.state_dict(zoo.members()[0], 0)


def flip_byte_in(path: Path, dataset: str, row: int = 0) -> None:
    with h5py.File(path, "r") as f:
        info = f[dataset].id.get_chunk_info_by_coord((row,) + (0,) * (f[dataset].ndim - 1))
        offset = info.byte_offset + info.size // 2
    with open(path, "r+b") as fh:
        fh.seek(offset)
        b = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([b[0] ^ 0x10]))


def test_flipped_byte_is_found_and_named(tmp_path: Path) -> None:
    from zooscope.access import open_zoo
    from zooscope.upkeep.validate import ValidationReport

    path = tmp_path / "flip.h5"
    make_zoo(path, members=1, epochs=1)
    flip_byte_in(path, "architectures/a0/tensors/layer.weight", row=1)
    with open_zoo(path) as zoo:
        problems = [p for c in zoo.checkpoints() for n in SHAPES for p in zoo.check_tensor(c, n)]
    assert len(problems) == 1
    assert problems[0].startswith("tensor 'layer.weight' of ")
    assert problems[0].endswith("@1: content does not match its stored digest")
    assert ValidationReport(path=path, problems=problems).ok is False


# -- crash safety: SIGKILL at random moments --------------------------------------------------
KILL_WRITER = textwrap.dedent("""
    import sys, numpy as np
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    from storedata import KILL_EPOCHS, SHAPES, expected_tensor, make_zoo_header
    from zooscope.stores.hdf5 import HDF5Store
    from zooscope.zoo import Architecture
    from zooscope.zoo import COMPLETE
    path = Path(sys.argv[1])
    header, members = make_zoo_header()
    store = HDF5Store()
    w = store.resume(path) if path.exists() else store.create(path, header, members)
    arch = Architecture(key="toy", files={{"config.json": b"{{}}"}}, shapes=SHAPES)
    w.ensure_architecture(arch)
    print("ready", flush=True)
    for i, m in enumerate(members):
        done = w.completed_epochs(m)
        w.start_member(m, arch)
        for e in range(KILL_EPOCHS):
            if e in done:
                continue
            sd = {{n: expected_tensor(n, i, e) for n in SHAPES}}
            w.write_checkpoint(m, e, e, 0.0, sd, {{"test_loss": float(e)}}, np.full(7, e))
        w.set_status(m, COMPLETE)
    w.close()
""")


def _check_committed(path: Path) -> int:
    """Every committed checkpoint holds exactly what was written; returns their count."""
    with h5py.File(path, "r", swmr=True) as f:  # plain h5py opens it
        assert f.attrs["zooscope_format"] == 1
    _, members = make_zoo_header()
    with zooscope.open_zoo(path) as zoo:
        cps = zoo.checkpoints()
        for c in cps:
            i = [m.id for m in members].index(c.member)
            sd = zoo.state_dict(c.member, c.epoch)
            for n in SHAPES:
                np.testing.assert_array_equal(sd[n].numpy(), expected_tensor(n, i, c.epoch))
            assert c.metrics == {"test_loss": float(c.epoch)}
        # Per member, committed epochs are a prefix 0..k: nothing half-written shows.
        for m in members:
            epochs = [c.epoch for c in zoo.checkpoints(m)]
            assert epochs == list(range(len(epochs)))
        return len(cps)


@pytest.mark.slow
def test_writer_killed_at_random_moments_never_loses_a_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "kill.h5"
    script = tmp_path / "writer.py"
    script.write_text(KILL_WRITER.format(tests=str(Path(__file__).parent)))
    rng = random.Random(1234)
    trials = 0
    committed_history = []
    while trials < 30:
        proc = subprocess.Popen([sys.executable, str(script), str(path)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if line.strip() != "ready":
            proc.wait()
            pytest.fail(f"writer failed to start: {proc.stderr.read() if proc.stderr else ''}")
        time.sleep(rng.uniform(0.0, 0.05))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        trials += 1
        n = _check_committed(path)
        assert not committed_history or n >= committed_history[-1]
        committed_history.append(n)
    # Resume to the end.
    subprocess.run([sys.executable, str(script), str(path)], check=True, capture_output=True)
    assert _check_committed(path) == 6 * KILL_EPOCHS
    with zooscope.open_zoo(path) as zoo:
        assert [m.status for m in zoo.members()] == ["complete"] * 6
    assert len(set(committed_history)) > 3, committed_history  # kills landed at many points
    print("committed after each kill:", committed_history)
