"""Zoos of many files: a folder of parts under a size limit reads as the one-file zoo of
the same members, in every command; arrays write parts into one folder; splits, merges,
damaged indexes and URLs."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

import zooscope
from zooscope.config import parse_config
from zooscope.engine import build_zoo
from zooscope.errors import ZooFileError

from .conftest import TINY_CONFIG, run_cli, write_config
from .rangeserver import RangeServer
from .test_cluster import sbatch_env, scripts
from .test_generate import assert_same_weights

#: A part holds about two checkpoints of the tiny model (125 KB each) beside its header.
PARTS_CONFIG = TINY_CONFIG.replace('epochs = 2\n', 'epochs = 2\nmax_part_size = "300KB"\n')


@pytest.fixture(scope="session")
def twin_zoos(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The same config built into one file and into a folder of parts."""
    folder = tmp_path_factory.mktemp("twins")
    config = write_config(folder, PARTS_CONFIG)
    cfg = parse_config(PARTS_CONFIG, config)
    build_zoo(cfg, folder / "tiny.h5")
    build_zoo(cfg, folder / "tiny.zoo")
    return folder / "tiny.h5", folder / "tiny.zoo"


def _index(folder: Path) -> dict:
    return json.loads((folder / "zoo.json").read_text())


def test_generate_starts_a_new_part_before_the_limit(twin_zoos: tuple[Path, Path]) -> None:
    single, parts = twin_zoos
    index = _index(parts)
    assert index["format"] == "zooscope-parts" and index["format_version"] == 1
    assert len(index["parts"]) >= 3, index
    assert index["parts"] == [f"part{k:05d}.h5" for k in range(len(index["parts"]))]
    with zooscope.open_zoo(single) as whole:
        assert index["members"] == [m.id for m in whole.members()]
        one = whole.tensor(whole.tensor_names()[0]).nbytes // len(whole.checkpoints())
    sizes = [(parts / n).stat().st_size for n in index["parts"]]
    assert max(sizes[:-1]) <= 300_000, sizes
    # No checkpoint is split: each part holds whole checkpoints, every one exactly once.
    seen: list[tuple[str, int]] = []
    for name in index["parts"]:
        with zooscope.open_zoo(parts / name) as part:  # each part is a zoo on its own
            seen += [(c.member, c.epoch) for c in part.checkpoints()]
    assert len(seen) == len(set(seen)) == 12 and one > 0


def test_a_zoo_of_parts_reads_as_the_one_file_zoo(twin_zoos: tuple[Path, Path]) -> None:
    single, parts = twin_zoos
    assert_same_weights(single, parts)
    with zooscope.open_zoo(single) as a, zooscope.open_zoo(parts) as b:
        assert [m.id for m in a.members()] == [m.id for m in b.members()]
        assert [m.status for m in a.members()] == [m.status for m in b.members()]
        assert [(c.member, c.epoch, c.step, c.metrics) for c in a.checkpoints()] == \
            [(c.member, c.epoch, c.step, c.metrics) for c in b.checkpoints()]
        assert a.metric_columns == b.metric_columns
        for name in a.tensor_names():
            assert np.array_equal(a.tensor(name), b.tensor(name)), name
        chosen = a.checkpoints()[::5]
        assert np.array_equal(a.tensor(a.tensor_names()[-1], chosen),
                              b.tensor(b.tensor_names()[-1], chosen))
        assert np.array_equal(a.predictions(), b.predictions())
        assert np.array_equal(a.test_labels(), b.test_labels())
        assert a.metrics().equals(b.metrics())
        assert a.members_frame().equals(b.members_frame())
        c = a.checkpoints()[3]
        assert a.checkpoint_digests(c) == b.checkpoint_digests(c)
        assert a.model_files(c.member) == b.model_files(c.member)
        assert b.parts() == _index(parts)["parts"] and a.parts() is None


def _masked(text: str, *paths: Path) -> str:
    for p in paths:
        text = text.replace(str(p), "ZOO").replace(p.name, "ZOO")
    text = re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", "TIME", text)
    return re.sub(r"\d{4}-\d\d-\d\dT[\d:+]+", "TIME", text)


def test_every_command_writes_the_same_for_both(twin_zoos: tuple[Path, Path],
                                                tmp_path: Path) -> None:
    single, parts = twin_zoos
    outputs: dict[Path, dict[str, str]] = {}
    for zoo in (single, parts):
        got: dict[str, str] = {}
        (tmp_path / zoo.name).mkdir()
        for args in (["zoo", "ls"], ["zoo", "info"], ["zoo", "validate"]):
            done = run_cli(*args, str(zoo), "--json")
            assert done.returncode == 0, done.stderr
            shown = json.loads(done.stdout)
            if args[1] == "info":
                assert shown.pop("parts", None) == (len(_index(zoo)["parts"]) if zoo.is_dir()
                                                   else None)
            got[" ".join(args)] = _masked(json.dumps(shown), zoo)
        for plugin in ("agreement", "curves", "umap", "weightstats", "predict", "backbones",
                       "sparsify"):
            out = tmp_path / zoo.name / plugin
            done = run_cli("analyze", str(zoo), "--plugin", plugin, "--out", str(out), "-q")
            assert done.returncode == 0, (plugin, done.stderr)
            for csv in sorted(out.glob("*.csv")):
                got[f"{plugin}/{csv.name}"] = csv.read_text()
        card = run_cli("zoo", "card", str(zoo), "--out", "-")
        assert card.returncode == 0, card.stderr
        # Equal up to how to read it without zooscope: one file, or the parts.
        got["card"] = _masked(card.stdout.split("With plain h5py")[0], zoo)
        report = tmp_path / zoo.name / "report"
        done = run_cli("report", str(zoo), "--no-run", "--format", "md", "--out", str(report),
                       "-q")
        assert done.returncode == 0, done.stderr
        text = _masked((report / "report.md").read_text(), zoo)
        got["report"] = re.sub(r"ZOO, [\d.,]+ \w?i?B", "ZOO, SIZE", text)
        with zooscope.open_zoo(zoo) as opened:
            member = opened.members()[2].id
        export = tmp_path / zoo.name / "export"
        done = run_cli("zoo", "export", str(zoo), "--member", member, "--epoch", "1", "--out",
                       str(export))
        assert done.returncode == 0, done.stderr
        got["export"] = (export / "model.safetensors").read_bytes().hex()
        model, _ = zooscope.load_model(zoo, member=member, epoch=1)
        got["load_model"] = repr({k: v.sum().item() for k, v in model.state_dict().items()})
        outputs[zoo] = got
    a, b = outputs[single], outputs[parts]
    assert a.keys() == b.keys()
    for key in a:
        if key == "weightstats/stats.csv":  # its skew sums are not bitwise run to run
            fa = np.genfromtxt(a[key].splitlines(), delimiter=",", names=True, dtype=None,
                               encoding=None)
            fb = np.genfromtxt(b[key].splitlines(), delimiter=",", names=True, dtype=None,
                               encoding=None)
            for name in fa.dtype.names:
                if fa[name].dtype.kind == "f":
                    np.testing.assert_allclose(fa[name], fb[name], rtol=1e-12, atol=1e-15)
                else:
                    assert (fa[name] == fb[name]).all(), name
            continue
        assert a[key] == b[key], key


def test_the_card_of_a_folder_lives_inside_it(twin_zoos: tuple[Path, Path],
                                              tmp_path: Path) -> None:
    folder = tmp_path / "tiny.zoo"
    shutil.copytree(twin_zoos[1], folder)
    printed = run_cli("zoo", "card", str(folder), "--out", "-")
    assert printed.returncode == 0 and "part00000.h5" not in printed.stdout
    assert (folder / "README.md").read_text() == printed.stdout  # as generate wrote it
    again = run_cli("zoo", "card", str(folder))
    assert again.returncode == 1 and f"{folder / 'README.md'} exists" in again.stderr
    (folder / "README.md").unlink()
    done = run_cli("zoo", "card", str(folder))
    assert done.returncode == 0 and (folder / "README.md").read_text() == printed.stdout
    assert not (tmp_path / "README.md").exists()


def test_a_dry_run_says_how_many_parts_the_zoo_takes(tmp_path: Path) -> None:
    config = write_config(tmp_path, PARTS_CONFIG)
    done = run_cli("generate", str(config), "--dry-run", "--json")
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    assert plan["max_part_size"] == 300_000
    assert plan["estimated_parts"] == -(-plan["estimated_bytes"] // 300_000) >= 3
    done = run_cli("generate", str(config), "--dry-run", env={"COLUMNS": "200"})
    assert (f"that is more than [zoo] max_part_size (300,000 bytes): --out tiny.zoo writes "
            f"it as about {plan['estimated_parts']} parts") in done.stdout, done.stdout
    bad = run_cli("generate", str(write_config(tmp_path, PARTS_CONFIG.replace(
        '"300KB"', '"300 furlongs"'), "bad.toml")), "--dry-run")
    assert bad.returncode == 1
    assert "error: [zoo] max_part_size = '300 furlongs' is not a size" in bad.stderr


def test_plain_h5py_reads_the_parts_as_docs_describe(twin_zoos: tuple[Path, Path]) -> None:
    """The reading recipe of docs/format.md, with h5py and json alone."""
    single, folder = twin_zoos
    text = (Path(__file__).parents[1] / "docs" / "format.md").read_text()
    recipe = re.search(r"<!-- parts-recipe -->\n```python\n(.*?)```", text, re.S)
    assert recipe is not None, "docs/format.md lost its recipe for a zoo of parts"
    scope: dict = {"folder": folder}
    exec(recipe.group(1), scope)  # noqa: S102 - the documented code, run as a reader would
    stacked = scope["tensors"]
    with zooscope.open_zoo(single) as zoo:
        name = zoo.tensor_names()[-1]
        for c in zoo.checkpoints():
            assert np.array_equal(stacked[(c.member, c.epoch)][name],
                                  zoo.state_dict(c.member, c.epoch)[name].numpy())
        assert scope["members"] == [m.id for m in zoo.members()]


def test_split_and_merge_are_each_others_reverse(tiny_zoo: Path, tmp_path: Path) -> None:
    folder = tmp_path / "split.zoo"
    done = run_cli("zoo", "split", str(tiny_zoo), "--out", str(folder), "--max-part-size",
                   "300KB")
    assert done.returncode == 0, done.stderr
    parts = _index(folder)["parts"]
    assert len(parts) >= 3 and f"into {len(parts)} parts" in done.stdout
    assert_same_weights(tiny_zoo, folder)
    back = tmp_path / "back.h5"
    done = run_cli("zoo", "merge", str(folder), "--out", str(back))
    assert done.returncode == 0, done.stderr
    assert_same_weights(tiny_zoo, back)
    with zooscope.open_zoo(tiny_zoo) as a, zooscope.open_zoo(back) as b:
        assert [m.id for m in a.members()] == [m.id for m in b.members()]
    again = run_cli("zoo", "split", str(tiny_zoo), "--out", str(folder))
    assert again.returncode == 1 and "already exists" in again.stderr
    done = run_cli("zoo", "split", str(tiny_zoo), "--out", str(folder), "--force",
                   "--max-part-size", "1GB")
    assert done.returncode == 0, done.stderr
    assert _index(folder)["parts"] == ["part00000.h5"]
    assert not list(tmp_path.glob(".split.zoo*"))
    wrong = run_cli("zoo", "split", str(tiny_zoo), "--out", str(tmp_path / "x.h5"))
    assert wrong.returncode == 1 and "give --out a name ending in .zoo" in wrong.stderr


def test_an_array_writes_its_parts_into_one_folder(tiny_zoo: Path, tmp_path: Path) -> None:
    """The documented job array: two tasks, one folder, nothing merged."""
    generate = scripts()[0]
    (tmp_path / "generate.sbatch").write_text(generate)
    config = write_config(tmp_path)
    for task in (1, 0):  # the second task may well start first
        done = subprocess.run(["bash", "generate.sbatch"], cwd=tmp_path, capture_output=True,
                              text=True, env=sbatch_env(task, 2, CONFIG=str(config)),
                              timeout=900)
        assert done.returncode == 0, done.stderr
        assert f"shard {task}/2 (SLURM array task): writing its parts into sst2.zoo" in \
            done.stderr
    folder = tmp_path / "sst2.zoo"
    index = _index(folder)
    assert sorted(index["parts"]) == ["s0of2-part00000.h5", "s1of2-part00000.h5"]
    assert_same_weights(tiny_zoo, folder)
    with zooscope.open_zoo(tiny_zoo) as a, zooscope.open_zoo(folder) as b:
        assert [m.id for m in a.members()] == [m.id for m in b.members()]
        assert [m.status for m in b.members()] == ["complete"] * 4
    # A requeued task finds its parts complete and changes nothing.
    before = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.h5")}
    again = subprocess.run(["bash", "generate.sbatch"], cwd=tmp_path, capture_output=True,
                           text=True, env=sbatch_env(1, 2, CONFIG=str(config)))
    assert again.returncode == 0, again.stderr
    assert {p.name: p.stat().st_mtime_ns for p in folder.glob("*.h5")} == before
    done = run_cli("zoo", "validate", str(folder))
    assert done.returncode == 0 and "ok: 12 checkpoints" in done.stdout, done.stdout


def test_a_part_left_out_of_the_index_is_found_and_added(twin_zoos: tuple[Path, Path],
                                                         tmp_path: Path) -> None:
    """A kill between creating a part and listing it: validate names it, --resume adds it
    back and the zoo completes as it was."""
    single, parts = twin_zoos
    folder = tmp_path / "tiny.zoo"
    shutil.copytree(parts, folder)
    index = _index(folder)
    last = index["parts"].pop()
    (folder / "zoo.json").write_text(json.dumps(index))
    (folder / (last + ".creating")).write_bytes(b"half a part")
    done = run_cli("zoo", "validate", str(folder))
    assert done.returncode == 1
    said = " ".join((done.stdout + done.stderr).split())
    assert re.search(rf"{last} holds \d+ checkpoint\(s\) but is not in zoo.json", said), said
    config = write_config(tmp_path, PARTS_CONFIG)
    done = run_cli("generate", str(config), "--out", str(folder), "--resume")
    assert done.returncode == 0, done.stderr
    assert _index(folder)["parts"][-1] == last
    assert not (folder / (last + ".creating")).exists()
    assert_same_weights(single, folder)


@pytest.mark.parametrize(("damage", "message"), [
    (lambda f: (f / "zoo.json").write_text("[1, 2]"),
     "zoo.json is not a zoo index: it is a JSON list, not an object"),
    (lambda f: (f / "zoo.json").write_text('{"format": "other", "parts": []}'),
     "is not a zooscope zoo index (format 'other'"),
    (lambda f: (f / "zoo.json").write_text(json.dumps(
        {"format": "zooscope-parts", "format_version": 9, "parts": []})),
     "has format version 9; this zooscope reads up to 1"),
    (lambda f: (f / "zoo.json").write_text(json.dumps(
        {"format": "zooscope-parts", "format_version": 1, "parts": ["../tiny.h5"]})),
     "'parts' must list distinct part file names"),
    (lambda f: (f / "part00001.h5").unlink(), "part00001.h5 is missing (listed in zoo.json)"),
    (lambda f: (f / "zoo.json").unlink(), "has no zoo.json"),
    (lambda f: (f / "part00002.h5").write_bytes(b"\0" * 100), "is not a readable HDF5 file"),
])
def test_a_damaged_folder_gives_one_clear_error(twin_zoos: tuple[Path, Path], tmp_path: Path,
                                                damage, message: str) -> None:
    folder = tmp_path / "tiny.zoo"
    shutil.copytree(twin_zoos[1], folder)
    damage(folder)
    done = run_cli("zoo", "ls", str(folder))
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith("error: ") and message in " ".join(done.stderr.split()), \
        done.stderr
    assert "Traceback" not in done.stderr


def test_a_part_of_another_zoo_is_refused(twin_zoos: tuple[Path, Path], tiny_zoo: Path,
                                          tmp_path: Path) -> None:
    folder = tmp_path / "tiny.zoo"
    shutil.copytree(twin_zoos[1], folder)
    shutil.copy(tiny_zoo, folder / "part00001.h5")
    with pytest.raises(ZooFileError, match="part00001.h5 belongs to another zoo"), \
            zooscope.open_zoo(folder) as zoo:
        zoo.checkpoints()


def test_a_folder_at_a_url_fetches_only_the_parts_it_reads(twin_zoos: tuple[Path, Path],
                                                           tmp_path: Path) -> None:
    _, parts = twin_zoos
    served = tmp_path / "site"
    shutil.copytree(parts, served / "tiny.zoo")
    with RangeServer(served) as server, zooscope.open_zoo(parts) as local:
        with zooscope.open_zoo(f"{server.url}/tiny.zoo/") as zoo:
            assert zoo.parts() == _index(parts)["parts"]
            after_open = server.sent
            c = local.checkpoints()[-1]
            assert torch.equal(zoo.state_dict(c.member, c.epoch)[local.tensor_names()[0]],
                               local.state_dict(c.member, c.epoch)[local.tensor_names()[0]])
            # Opening read the index and the first part's header, not every part.
            assert after_open < (parts / "part00000.h5").stat().st_size
            assert zoo.checkpoints() == local.checkpoints()  # the same zoo, as served
            assert zoo.card() == local.card() == (parts / "README.md").read_text()
            name = local.tensor_names()[-1]
            assert np.array_equal(zoo.tensor(name), local.tensor(name))
        (served / "tiny.zoo" / "README.md").unlink()  # a folder served without its card
        with zooscope.open_zoo(f"{server.url}/tiny.zoo") as zoo:
            assert not zoo.card()


def test_two_tasks_at_once_share_one_folder(tiny_zoo: Path, tmp_path: Path) -> None:
    """The tasks of an array run at the same time: each starts parts and adds them to the
    one index, under its lock, without losing another's."""
    import sys

    from .conftest import cli_env

    config = write_config(tmp_path, PARTS_CONFIG.replace('"300KB"', '"200KB"'))
    folder = tmp_path / "tiny.zoo"
    tasks = [subprocess.Popen([sys.executable, "-m", "zooscope", "generate", str(config),
                               "--out", str(folder), "--shard", f"{i}/2", "-q"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              env=cli_env()) for i in range(2)]
    for task in tasks:
        _, err = task.communicate(timeout=900)
        assert task.returncode == 0, err
    listed = _index(folder)["parts"]
    on_disk = sorted(p.name for p in folder.glob("*.h5"))
    assert sorted(listed) == on_disk and len(listed) >= 6, (listed, on_disk)
    assert {n.split("-")[0] for n in listed} == {"s0of2", "s1of2"}
    assert_same_weights(tiny_zoo, folder)
    done = run_cli("zoo", "validate", str(folder))
    assert done.returncode == 0 and "ok: 12 checkpoints" in done.stdout, done.stdout


def test_a_task_starting_leaves_what_other_tasks_are_writing(tmp_path: Path) -> None:
    """A task clears what its own killed run left half-made, never a file another task
    of the array is writing at that moment (its next part, an index write)."""
    from zooscope.stores.hdf5 import HDF5PartsStore

    from .test_store_contract import MEMBERS, header

    folder = tmp_path / "z.zoo"
    folder.mkdir()
    mine, theirs = folder / "s0of2-part00001.h5.creating", folder / "s1of2-part00002.h5.creating"
    index_write = folder / ".zoo.json.abc123.tmp"
    for path in (mine, theirs, index_write):
        path.write_bytes(b"half")
    HDF5PartsStore().create(folder, header(), MEMBERS[:1], slot="s0of2").close()
    assert not mine.exists() and theirs.exists() and index_write.exists()
    HDF5PartsStore().resume(folder, slot="s0of2").close()
    assert theirs.exists() and index_write.exists()
    # A one-process run replaces the whole zoo, leftovers of every writer included.
    HDF5PartsStore().create(folder, header(), MEMBERS[:1]).close()
    assert not theirs.exists() and not index_write.exists()
