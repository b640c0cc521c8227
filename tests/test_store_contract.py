"""The store contract, run against every store: the HDF5 file, the HDF5 folder of parts
and a second store that has nothing of HDF5 (``tests/npystore.py``). What passes for
all three is what the core may rely on; the engine, the commands and the analyzers run
on the second store too, so they assume no file format and no single file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import zooscope
from zooscope.access import open_stored
from zooscope.cli import app
from zooscope.config import parse_config
from zooscope.engine import build_zoo
from zooscope.errors import ZooFileError
from zooscope.record import TestSet, ZooRecord
from zooscope.store import Store
from zooscope.stores.hdf5 import HDF5PartsStore, HDF5Store
from zooscope.upkeep.merge import merge_zoos
from zooscope.zoo import COMPLETE, INTERRUPTED, Architecture, Member

from .conftest import TINY_CONFIG, write_config
from .npystore import NpyPlugin, NpyStore
from .storedata import SHAPES, expected_tensor
from .test_generate import assert_same_weights

STORES = {"hdf5": (HDF5Store(), "z.h5"), "hdf5-parts": (HDF5PartsStore(), "z.zoo"),
          "npy": (NpyStore(), "z.npyzoo")}
runner = CliRunner()


@pytest.fixture(params=list(STORES))
def store(request: pytest.FixtureRequest, register_plugin) -> tuple[Store, str]:  # type: ignore[no-untyped-def]
    register_plugin(NpyPlugin(), "npy-store")
    return STORES[request.param]


def header() -> ZooRecord:
    return ZooRecord(name="t", config_text="[zoo]\nname = 't'\n", generator="test",
                     generator_version="1", metric_columns=["test_loss", "test_accuracy"],
                     test=TestSet(predictions={"kind": "class", "shape": [7]},
                                  labels=np.arange(7) % 2, ids=[f"q{i}" for i in range(7)]))


ARCH = Architecture(key="toy", files={"config.json": b'{"toy": 1}'}, shapes=SHAPES)
MEMBERS = [Member.from_factors({"learning_rate": 1e-3 * (i + 1), "seed": i}) for i in range(3)]


def write(store: Store, path: Path, members: list[Member], epochs: range,
          resume: bool = False, **options: int) -> None:
    writer = store.resume(path) if resume else store.create(path, header(), MEMBERS, **options)
    with writer:
        writer.ensure_architecture(ARCH)
        for m in members:
            i = MEMBERS.index(m)
            writer.start_member(m, ARCH)
            for e in epochs:
                writer.write_checkpoint(m, e, 10 * e, float(e),
                                        {n: torch.from_numpy(expected_tensor(n, i, e)) for n in SHAPES},
                                        {"test_loss": 1.0 / (e + 1), "test_accuracy": 0.1 * e},
                                        (np.arange(7) + e + i) % 2)
            writer.set_status(m, COMPLETE if epochs.stop == 3 else INTERRUPTED)


def test_what_is_written_reads_back_exactly(store: tuple[Store, str], tmp_path: Path) -> None:
    kind, name = store
    path = tmp_path / name
    write(kind, path, MEMBERS, range(3), **({"max_part_size": 1 << 16} if kind.parts else {}))
    assert kind.exists(path)
    with zooscope.open_zoo(path) as zoo:
        assert [m.id for m in zoo.members()] == [m.id for m in MEMBERS]
        assert [m.status for m in zoo.members()] == ["complete"] * 3
        assert zoo.metric_columns == ["test_loss", "test_accuracy"]
        assert zoo.info["name"] == "t" and zoo.config_text == "[zoo]\nname = 't'\n"
        cps = zoo.checkpoints()
        assert [(c.member, c.epoch, c.step) for c in cps] == \
            [(m.id, e, 10 * e) for m in MEMBERS for e in range(3)]
        assert cps[4].metrics == pytest.approx({"test_loss": 0.5, "test_accuracy": 0.1})
        for n in SHAPES:
            want = np.stack([expected_tensor(n, i, e) for i in range(3) for e in range(3)])
            assert np.array_equal(zoo.tensor(n), want), n
            assert zoo.tensor_shape(n) == SHAPES[n]
        picked = [cps[7], cps[1]]
        assert np.array_equal(zoo.tensor("layer.weight", picked),
                              np.stack([expected_tensor("layer.weight", 2, 1),
                                        expected_tensor("layer.weight", 0, 1)]))
        sd = zoo.state_dict(MEMBERS[1], 2)
        assert torch.equal(sd["embed.weight"], torch.from_numpy(expected_tensor("embed.weight", 1, 2)))
        assert np.array_equal(zoo.predictions(picked), np.array([(np.arange(7) + 3) % 2,
                                                                 (np.arange(7) + 1) % 2]))
        assert zoo.prediction_kind() == "class"
        assert np.array_equal(zoo.test_labels(), np.arange(7) % 2)
        assert zoo.model_files(MEMBERS[0]) == {"config.json": b'{"toy": 1}'}
        assert zoo.architecture(MEMBERS[0]).shapes == SHAPES
        assert zoo.analyses() == []
        assert zoo.record().test.ids == [f"q{i}" for i in range(7)]
        assert zoo.record().test.predictions == {"kind": "class", "shape": [7]}
    with open_stored(path) as zoo:
        assert zoo.check_structure() == [] and zoo.uncommitted_rows() == 0
        assert all(zoo.check_tensor(c, n) == [] for c in zoo.checkpoints() for n in SHAPES)
    if kind.parts:
        with zooscope.open_zoo(path) as zoo:
            assert len(zoo.parts() or []) >= 3  # 64 KiB parts of ~5 KB checkpoints... and headers


def test_a_resumed_writer_continues_where_it_stopped(store: tuple[Store, str],
                                                     tmp_path: Path) -> None:
    kind, name = store
    path = tmp_path / name
    write(kind, path, MEMBERS[:1], range(2))
    writer = kind.resume(path)
    with writer:
        assert writer.completed_epochs(MEMBERS[0]) == [0, 1]
        assert writer.completed_epochs(MEMBERS[1]) == []
        got = writer.read_state_dict(MEMBERS[0], 1)
        assert torch.equal(got["layer.bias"], torch.from_numpy(expected_tensor("layer.bias", 0, 1)))
    write(kind, path, MEMBERS[:1], range(2, 3), resume=True)
    with zooscope.open_zoo(path) as zoo:
        assert [c.epoch for c in zoo.checkpoints(MEMBERS[0])] == [0, 1, 2]
        assert zoo.members()[0].status == "complete"


def test_zoos_merge_into_and_out_of_every_store(store: tuple[Store, str],
                                                tmp_path: Path) -> None:
    kind, name = store
    source = tmp_path / "source.h5"
    write(HDF5Store(), source, MEMBERS, range(3))
    into = tmp_path / name
    assert merge_zoos([source], into) == 9
    assert_same_weights(source, into)
    back = tmp_path / "back.h5"
    assert merge_zoos([into], back) == 9
    assert_same_weights(source, back)
    # A refused merge leaves no zoo and no temporary behind.
    failed = tmp_path / ("failed" + into.suffix)
    with pytest.raises(ZooFileError, match="has checkpoints in both"):
        merge_zoos([source, into], failed)
    assert not failed.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_the_engine_and_the_commands_run_on_a_store_without_hdf5(
        register_plugin, tiny_zoo: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Generate, resume, list, validate, analyze and report on the npy store: the same
    weights and the same tables as the HDF5 zoo of the same config."""
    register_plugin(NpyPlugin(), "npy-store")
    config = write_config(tmp_path)
    out = tmp_path / "tiny.npyzoo"
    build_zoo(parse_config(TINY_CONFIG, config), out)
    assert not list(tmp_path.glob("*.h5"))
    assert_same_weights(tiny_zoo, out)
    again = build_zoo(parse_config(TINY_CONFIG, config), out, resume=True)
    assert again.skipped == 4 and again.trained == 0
    for args in (["zoo", "ls", str(out)], ["zoo", "validate", str(out)],
                 ["zoo", "card", str(out), "--out", str(tmp_path / "card.md")]):
        done = runner.invoke(app, args)
        assert done.exit_code == 0, (args, done.output)
    tables = {}
    for zoo in (tiny_zoo, out):
        target = tmp_path / f"agreement-{zoo.suffix[1:]}"
        done = runner.invoke(app, ["analyze", str(zoo), "--plugin", "agreement", "--out",
                                   str(target), "-q"])
        assert done.exit_code == 0, done.output
        tables[zoo] = {p.name: p.read_text() for p in target.glob("*.csv")}
    assert tables[tiny_zoo] and tables[tiny_zoo] == tables[out]
    assert "the npy store keeps no analysis results" in done.output
    done = runner.invoke(app, ["report", str(out), "--no-run", "--format", "md", "-q"])
    assert done.exit_code == 0, done.output
    assert (tmp_path / "tiny_analysis" / "report" / "report.md").is_file()
