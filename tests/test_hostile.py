"""Hostile input on the surfaces beside a zoo: the results store and the files of a
result (``ZOO_analysis/``), side files planted as links or special files, resume state,
exported folders, the environment, and text that goes into the card and the Markdown
report. (Network reads: tests/test_remote.py.)

Each command case runs in a child folder of the test's folder, beside a folder
``outside`` that holds a secret and files that links point at. Every case checks:
the exit code and one ``error:`` line (or success where the input may be ignored),
no traceback and never the "this is a bug" fallback, the sha256 of every file outside
(always) and in the folder (unless the case may write there), and that the secret
shows nowhere: not on stdout or stderr, not in any file written. Cases that could hang
run in a subprocess with a timeout; cases that declare absurd sizes run under an
address-space limit (``ulimit -v``).
"""

from __future__ import annotations

import ast
import hashlib
import html as html_module
import json
import os
import re
import resource
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from zooscope.cli import app
from zooscope.errors import ConfigError, ZooFileError
from zooscope.zoo import Member

from .conftest import TINY_CONFIG, cli_env
from .test_store import make_zoo

runner = CliRunner()
SECRET = "zooscope-secret-4b1dc0de"
FALLBACK = "this is a bug"
MEMORY_LIMIT = 3 * 2**30


@dataclass
class Hostile:
    name: str
    #: Builds the files in the folder (``outside`` beside it exists) and returns the CLI args.
    setup: Callable[[Path], list[str]]
    #: What the one error line says; None: the command succeeds, ignoring the input.
    message: str | None = None
    code: int = 1
    env: dict[str, str] = field(default_factory=dict)
    #: In a subprocess: a case that could hang, or reads the environment at startup.
    process: bool = False
    #: Declares an absurd size: a subprocess under the address-space limit.
    size: bool = False
    #: The command may write in the folder (a success that stores or writes a result).
    writes: bool = False


def _snapshot(folder: Path) -> dict[str, str]:
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_symlink():
            out[str(p)] = "link -> " + os.readlink(p)
        elif p.is_file():
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
        elif not p.is_dir():
            out[str(p)] = "special"
    return out


def _outside(parent: Path) -> Path:
    outside = parent / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text(SECRET * 1000)
    (outside / "target.csv").write_text("a file elsewhere that must not change\n")
    (outside / "target.html").write_text("<p>a page elsewhere</p>\n")
    with h5py.File(outside / "secret.h5", "w") as f:
        f["s"] = np.array([SECRET.encode()] * 1000)
    return outside


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def run_hostile(case: Hostile, parent: Path) -> tuple[int, str, str]:
    outside = _outside(parent)
    folder = parent / "work"
    folder.mkdir()
    args = case.setup(folder)
    before, before_outside = _snapshot(parent), _snapshot(outside)
    if case.process or case.size:
        proc = subprocess.run([sys.executable, "-m", "zooscope", *args], capture_output=True,
                              text=True, cwd=folder, env={**cli_env(), "COLUMNS": "200",
                                                          **case.env},
                              preexec_fn=_limit_memory if case.size else None, timeout=120)
        code, out, err = proc.returncode, proc.stdout, proc.stderr
    else:
        cwd = Path.cwd()
        os.chdir(folder)
        try:
            result = runner.invoke(app, args, env={"COLUMNS": "200", **case.env})
        finally:
            os.chdir(cwd)
        code, out, err = result.exit_code, result.stdout, result.stderr
        assert result.exception is None or isinstance(result.exception, SystemExit), \
            repr(result.exception)
    assert "Traceback" not in out + err, err
    assert FALLBACK not in err, err
    assert SECRET not in out + err
    assert _snapshot(outside) == before_outside, err
    if not case.writes or case.message is not None:
        assert _snapshot(parent) == before, (err, sorted(set(_snapshot(parent)) ^ set(before)))
    for p in folder.rglob("*"):
        if p.is_file() and not p.is_symlink():
            assert SECRET.encode() not in p.read_bytes(), p
    return code, out, err


# -- the results store -----------------------------------------------------------------------


def analysed_zoo(folder: Path) -> Path:
    """A small zoo with a weightstats result stored beside it."""
    zoo = folder / "zoo.h5"
    make_zoo(zoo, members=2, epochs=1)
    done = runner.invoke(app, ["analyze", str(zoo), "--plugin", "weightstats", "--quiet"])
    assert done.exit_code == 0, done.stderr
    return zoo


def _store(folder: Path) -> Path:
    return folder / "zoo_analysis" / "results.h5"


def _table(f: h5py.File) -> h5py.Group:
    group = f["analyses/weightstats"]
    return group[next(iter(group))]["tables/stats"]


def _add_column(f: h5py.File, name: str, make: Callable[[h5py.Group], None]) -> None:
    table = _table(f)
    make(table)
    table.attrs["columns"] = json.dumps([*json.loads(table.attrs["columns"]), name])


def _external(table: h5py.Group) -> None:
    secret = table.file.filename.replace("work/zoo_analysis/results.h5", "outside/secret.txt")
    rows = len(table[json.loads(table.attrs["columns"])[0]])
    table.create_dataset("leak", shape=(rows,), dtype=f"S{len(SECRET)}",
                         external=[(secret, 0, rows * len(SECRET))])


def _virtual(table: h5py.Group) -> None:
    secret = table.file.filename.replace("work/zoo_analysis/results.h5", "outside/secret.h5")
    rows = len(table[json.loads(table.attrs["columns"])[0]])
    layout = h5py.VirtualLayout(shape=(rows,), dtype=f"S{len(SECRET)}")
    layout[:] = h5py.VirtualSource(secret, "s", shape=(1000,))[:rows]
    table.create_virtual_dataset("leak", layout)


def _huge(table: h5py.Group) -> None:
    table.create_dataset("leak", shape=(2**40,), dtype="f8", chunks=(1024,))


def _group_column(table: h5py.Group) -> None:
    table.create_group("leak")


def _scalar_column(table: h5py.Group) -> None:
    table["leak"] = 3.0


def edit_store(edit: Callable[[h5py.File], None]) -> Callable[[Path], None]:
    def make(folder: Path) -> None:
        analysed_zoo(folder)
        with h5py.File(_store(folder), "r+") as f:
            edit(f)
    return make


def replace_store(make_file: Callable[[Path], None]) -> Callable[[Path], None]:
    def make(folder: Path) -> None:
        analysed_zoo(folder)
        store = _store(folder)
        store.unlink()
        make_file(store)
    return make


def _first_result(f: h5py.File) -> h5py.Group:
    group = f["analyses/weightstats"]
    return group[next(iter(group))]


STORE_DAMAGE: list[tuple[str, Callable[[Path], None], bool]] = [
    # (name, make the folder, whether the case may hang or read huge sizes: a subprocess)
    ("external column", edit_store(lambda f: _add_column(f, "leak", _external)), False),
    ("virtual column", edit_store(lambda f: _add_column(f, "leak", _virtual)), False),
    ("2**40 rows", edit_store(lambda f: _add_column(f, "leak", _huge)), True),
    ("group as column", edit_store(lambda f: _add_column(f, "leak", _group_column)), False),
    ("scalar column", edit_store(lambda f: _add_column(f, "leak", _scalar_column)), False),
    ("columns not json", edit_store(lambda f: _table(f).attrs.__setitem__("columns", "[x")),
     False),
    ("columns a number", edit_store(lambda f: _table(f).attrs.__setitem__("columns", "7")),
     False),
    ("missing column", edit_store(lambda f: _table(f).attrs.__setitem__(
        "columns", json.dumps(["nope"]))), False),
    ("options a list", edit_store(lambda f: _first_result(f).attrs.__setitem__(
        "options", "[1, 2]")), False),
    ("summary an array", edit_store(lambda f: _first_result(f).attrs.__setitem__(
        "summary", np.arange(3))), False),
    ("figure of floats", edit_store(lambda f: _first_result(f).require_group(
        "figures").create_dataset("fig", data=np.zeros(4))), False),
    ("soft link", edit_store(lambda f: f.__setitem__("analyses/weightstats/alias",
                                                      h5py.SoftLink("/analyses"))), False),
    ("external link", edit_store(lambda f: f.__setitem__(
        "escape", h5py.ExternalLink("../../outside/secret.h5", "/s"))), False),
    ("unsafe analysis name", edit_store(lambda f: f.copy(
        "analyses/weightstats", f["analyses"], name="weight stats")), False),
    ("not hdf5", replace_store(lambda p: p.write_bytes(b"not a results store " * 100)), False),
    ("truncated", replace_store(lambda p: p.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(100))),
     False),
    ("empty file", replace_store(lambda p: p.write_bytes(b"")), False),
    ("a folder", replace_store(lambda p: p.mkdir()), False),
    ("a fifo", replace_store(lambda p: os.mkfifo(p)), True),
    ("link to the secret", replace_store(
        lambda p: p.symlink_to(p.parents[2] / "outside" / "secret.h5")), False),
    ("link to /dev/zero", replace_store(lambda p: p.symlink_to("/dev/zero")), True),
]


def _zoo_command(command: str) -> Callable[[Callable[[Path], None]], Callable[[Path], list[str]]]:
    def wrap(make: Callable[[Path], None]) -> Callable[[Path], list[str]]:
        def setup(folder: Path) -> list[str]:
            make(folder)
            zoo = str(folder / "zoo.h5")
            return {"ls": ["zoo", "ls", zoo], "info": ["zoo", "info", zoo],
                    "analyze": ["analyze", zoo, "--plugin", "weightstats"],
                    "report": ["report", zoo, "--no-run", "--format", "md"]}[command]
        return setup
    return wrap


CASES: list[Hostile] = []
for _name, _make, _slow in STORE_DAMAGE:
    for _command in ("ls", "info", "analyze", "report"):
        CASES.append(Hostile(f"store {_name}: {_command}", _zoo_command(_command)(_make),
                             writes=_command in ("analyze", "report"), process=_slow,
                             size=_name == "2**40 rows"))


# -- the files of a result, the report, the card -------------------------------------------


def _result_dir(folder: Path) -> Path:
    return folder / "zoo_analysis" / "weightstats"


def plant(name: str, make: Callable[[Path, Path], None]) -> Callable[[Path], None]:
    """An analysed zoo, then ``make(path, outside)`` at ``zoo_analysis/weightstats/NAME``."""
    def setup(folder: Path) -> None:
        analysed_zoo(folder)
        path = _result_dir(folder) / name
        if os.path.lexists(path):
            path.unlink()
        make(path, folder.parent / "outside")
    return setup


def _link(target: str) -> Callable[[Path, Path], None]:
    return lambda p, outside: p.symlink_to(outside / target if "/" not in target else target)


def _deep(p: Path, outside: Path) -> None:
    p.write_text("[" * 100_000 + "]" * 100_000)


def _analyze(make: Callable[[Path], None], *extra: str) -> Callable[[Path], list[str]]:
    def setup(folder: Path) -> list[str]:
        make(folder)
        return ["analyze", str(folder / "zoo.h5"), "--plugin", "weightstats", *extra]
    return setup


def _report(make: Callable[[Path], None], *extra: str) -> Callable[[Path], list[str]]:
    def setup(folder: Path) -> list[str]:
        make(folder)
        return ["report", str(folder / "zoo.h5"), "--no-run", *extra]
    return setup


def _in_report(name: str, make: Callable[[Path, Path], None]) -> Callable[[Path], None]:
    def setup(folder: Path) -> None:
        analysed_zoo(folder)
        report = folder / "zoo_analysis" / "report"
        report.mkdir()
        make(report / name, folder.parent / "outside")
    return setup


def _card(make: Callable[[Path, Path], None], *extra: str) -> Callable[[Path], list[str]]:
    def setup(folder: Path) -> list[str]:
        make_zoo(folder / "zoo.h5", members=2, epochs=1)
        make(folder / "README.md", folder.parent / "outside")
        return ["zoo", "card", str(folder / "zoo.h5"), *extra]
    return setup


def _leftover(folder: Path) -> None:
    analysed_zoo(folder)
    (_result_dir(folder) / ".stats.csv.abc123.tmp").write_text("half a file")


def _link_folder(relative: str) -> Callable[[Path], None]:
    def setup(folder: Path) -> None:
        make_zoo(folder / "zoo.h5", members=2, epochs=1)
        target = folder.parent / "outside" / "elsewhere"
        target.mkdir()
        link = folder / relative
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(target, target_is_directory=True)
    return setup


CASES += [
    Hostile("result.json a fifo", _analyze(plant("result.json", lambda p, o: os.mkfifo(p))),
            "cannot be used: it is not a regular file", process=True),
    Hostile("result.json a link to /dev/zero",
            _analyze(plant("result.json", _link("/dev/zero"))), "cannot be used: it is a link",
            process=True),
    Hostile("result.json a link to the secret",
            _analyze(plant("result.json", _link("secret.txt"))), "cannot be used: it is a link"),
    Hostile("result.json nested deeply", _analyze(plant("result.json", _deep)),
            "not valid JSON (or nested too deeply)"),
    Hostile("result.json a list", _analyze(plant("result.json",
                                                 lambda p, o: p.write_text("[]"))),
            "a JSON list, not an object"),
    Hostile("result.json of 2 MB", _analyze(plant("result.json", lambda p, o: p.write_text(
        json.dumps({"x": "y" * (2 << 20)})))), "larger than 1,048,576 bytes"),
    Hostile("result.json a folder", _analyze(plant("result.json", lambda p, o: p.mkdir())),
            "cannot be used: it is not a regular file"),
    Hostile("result.json damaged, --force", _analyze(plant("result.json", _deep), "--force"),
            writes=True),
    Hostile("a csv linked elsewhere", _analyze(plant("stats.csv", _link("target.csv"))),
            writes=True),
    Hostile("a csv linked elsewhere, --force",
            _analyze(plant("stats.csv", _link("target.csv")), "--force"), writes=True),
    Hostile("a csv linked to the secret", _analyze(plant("stats.csv", _link("secret.txt"))),
            writes=True),
    Hostile("result.json linked elsewhere, --force",
            _analyze(plant("result.json", _link("target.csv")), "--force"), writes=True),
    Hostile("a killed write's leftover", _analyze(_leftover), writes=True),
    Hostile("the result folder a link", _analyze(_link_folder("zoo_analysis/weightstats")),
            "is a link; results are written only into real folders"),
    Hostile("the analysis folder a link", _analyze(_link_folder("zoo_analysis")),
            "is a link; results are written only into real folders"),
    Hostile("report.html linked elsewhere",
            _report(_in_report("report.html", _link("target.html"))), writes=True),
    Hostile("report.md linked elsewhere",
            _report(_in_report("report.md", _link("target.html")), "--format", "md"),
            writes=True),
    Hostile("report.html a fifo", _report(_in_report("report.html", lambda p, o: os.mkfifo(p))),
            writes=True, process=True),
    Hostile("the report folder a link", _report(_link_folder("zoo_analysis/report")),
            "is a link; results are written only into real folders"),
    Hostile("report over a result.json a fifo",
            _report(plant("result.json", lambda p, o: os.mkfifo(p))), writes=True, process=True),
    Hostile("report over a csv linked elsewhere",
            _report(plant("stats.csv", _link("target.csv"))), writes=True),
    Hostile("report.md's figure linked elsewhere",
            _report(_in_report("learning_curves.png", _link("target.csv")), "--format", "md"),
            writes=True),
    Hostile("report.html a folder", _report(_in_report("report.html", lambda p, o: p.mkdir())),
            "cannot write the report"),
    Hostile("card over a dangling link", _card(lambda p, o: p.symlink_to(o / "new.md")),
            "README.md exists"),
    Hostile("card over a link, --force", _card(_link("target.csv"), "--force"), writes=True),
    Hostile("card over a fifo, --force", _card(lambda p, o: os.mkfifo(p), "--force"),
            writes=True, process=True),
]


# -- environment and config ------------------------------------------------------------------


def _generate(text: str = TINY_CONFIG, *extra: str) -> Callable[[Path], list[str]]:
    def setup(folder: Path) -> list[str]:
        (folder / "zoo.toml").write_text(text)
        return ["generate", str(folder / "zoo.toml"), "--out", str(folder / "out.h5"), *extra]
    return setup


HUB_CONFIG = TINY_CONFIG.replace('backbone = "scratch"', 'backbone = "org/some-model"')
SEARCH = TINY_CONFIG.replace("[grid]\nlearning_rate = [3e-4, 1e-3]\n",
                             '[search]\nsamples = 2\nlearning_rate = "uniform(-1.7e308, 1.7e308)"\n')
BIG_INT = TINY_CONFIG.replace("[grid]\nlearning_rate = [3e-4, 1e-3]\n",
                              '[search]\nsamples = 2\nlearning_rate = "log_uniform(1e-5, 1e-3)"\n'
                              'batch_size = "int_uniform(1, 9223372036854775807)"\n')


def _fifo_zoo(folder: Path) -> list[str]:
    os.mkfifo(folder / "zoo.h5")
    return ["zoo", "ls", str(folder / "zoo.h5")]


def _analyze_env(folder: Path) -> list[str]:
    make_zoo(folder / "zoo.h5", members=2, epochs=1)
    return ["analyze", str(folder / "zoo.h5"), "--plugin", "weightstats"]


CASES += [
    Hostile("WORLD_SIZE not a number", _generate(), "WORLD_SIZE='abc' is not a process count",
            env={"WORLD_SIZE": "abc"}, process=True),
    Hostile("WORLD_SIZE zero", _generate(), "WORLD_SIZE='0' is not a process count",
            env={"WORLD_SIZE": "0"}, process=True),
    Hostile("WORLD_SIZE without a launcher", _generate(),
            "WORLD_SIZE=2 but RANK, MASTER_ADDR, MASTER_PORT are not set",
            env={"WORLD_SIZE": "2"}, process=True),
    Hostile("HF_ENDPOINT port out of range", _generate(HUB_CONFIG),
            "HF_ENDPOINT='http://localhost:99999' is not an http(s) URL",
            env={"HF_ENDPOINT": "http://localhost:99999"}, process=True),
    Hostile("HF_ENDPOINT not a URL", _generate(HUB_CONFIG),
            "HF_ENDPOINT='not a url' is not an http(s) URL",
            env={"HF_ENDPOINT": "not a url"}, process=True),
    Hostile("HF_ENDPOINT another scheme", _generate(HUB_CONFIG),
            "HF_ENDPOINT='ftp://mirror.example' is not an http(s) URL",
            env={"HF_ENDPOINT": "ftp://mirror.example"}, process=True),
    Hostile("--shard of 10**8", _generate(TINY_CONFIG, "--shard", "0/100000000"),
            "at most 100,000 shards", code=2, size=True),
    Hostile("SLURM task count 10**9", _generate(),
            "SLURM_ARRAY_TASK_COUNT=1000000000 is not a task count",
            env={"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "1000000000"}, size=True),
    Hostile("zoo name ending in a newline", _generate(
        TINY_CONFIG.replace('name = "tiny"', 'name = "tiny\\n"')), "name"),
    Hostile("factor name ending in a newline", _generate(
        TINY_CONFIG.replace("learning_rate = [3e-4, 1e-3]", '"lr\\n" = [3e-4, 1e-3]')), "lr"),
    Hostile("uniform over all floats", _generate(SEARCH), "the range is too wide to draw from"),
    Hostile("int_uniform to 2**63", _generate(BIG_INT), "bounds must lie within ±2**62"),
    Hostile("ZOOSCOPE_RESULTS_WAIT not a number", _analyze_env,
            "ZOOSCOPE_RESULTS_WAIT='soon' is not a number of seconds",
            env={"ZOOSCOPE_RESULTS_WAIT": "soon"}),
    Hostile("ZOOSCOPE_RESULTS_WAIT negative", _analyze_env,
            "ZOOSCOPE_RESULTS_WAIT='-1' is not a number of seconds",
            env={"ZOOSCOPE_RESULTS_WAIT": "-1"}),
    Hostile("ZOOSCOPE_RESULTS_WAIT nan", _analyze_env,
            "ZOOSCOPE_RESULTS_WAIT='nan' is not a number of seconds",
            env={"ZOOSCOPE_RESULTS_WAIT": "nan"}),
    Hostile("a zoo that is a fifo", _fifo_zoo, "is not a regular file", process=True),
]


# -- exports and the model files in a zoo -------------------------------------------------


def _head_zoo(head: bytes) -> Callable[[Path], list[str]]:
    def setup(folder: Path) -> list[str]:
        make_zoo(folder / "zoo.h5", members=2, epochs=1)
        with h5py.File(folder / "zoo.h5", "r+") as f:
            files = f["architectures/a0/files"]
            files.create_dataset("zooscope_head.json", data=np.frombuffer(head, dtype=np.uint8))
        first = Member.from_factors({"learning_rate": 1e-3, "seed": 0}).id
        return ["zoo", "export", str(folder / "zoo.h5"), "--member", first, "--epoch", "0",
                "--out", str(folder / "exported")]
    return setup


CASES += [
    Hostile("head a list", _head_zoo(b"[]"), "zooscope_head.json is not a JSON object with a kind"),
    Hostile("head not json", _head_zoo(b"{kind"), "zooscope_head.json is not a JSON object"),
    Hostile("head nested deeply", _head_zoo(b"[" * 100_000 + b"]" * 100_000),
            "zooscope_head.json is not a JSON object"),
    Hostile("head of an unknown kind", _head_zoo(b'{"kind": "rm -rf"}'),
            "unknown model kind 'rm -rf'"),
    Hostile("head with negative labels", _head_zoo(
        b'{"kind": "sequence-classification", "num_labels": -3, "hidden": 0}'),
        "num_labels = -3, not a count"),
    Hostile("head with text labels", _head_zoo(
        b'{"kind": "sequence-classification", "num_labels": "2", "hidden": 0}'),
        "num_labels = '2', not a count"),
]


def _declared_test_data(name: str, command: str) -> Callable[[Path], list[str]]:
    """A zoo whose test data declares 2**34 rows it does not hold."""
    def setup(folder: Path) -> list[str]:
        make_zoo(folder / "zoo.h5", members=2, epochs=1)
        with h5py.File(folder / "zoo.h5", "r+") as f:
            data = f.require_group("data")
            if name in data:
                del data[name]
            data.create_dataset(name, shape=(2**34,), dtype=h5py.string_dtype(),
                                chunks=(1024,))
        zoo = str(folder / "zoo.h5")
        return {"validate": ["zoo", "validate", zoo],
                "merge": ["zoo", "merge", zoo, "--out", str(folder / "merged.h5")],
                "ls": ["zoo", "ls", zoo]}[command]
    return setup


for _data in ("test_texts", "test_text_pairs", "test_ids"):
    CASES += [
        Hostile(f"{_data} of 2**34 rows: validate", _declared_test_data(_data, "validate"),
                "declares", size=True),
        Hostile(f"{_data} of 2**34 rows: merge", _declared_test_data(_data, "merge"),
                "declares", size=True),
    ]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile(case: Hostile, tmp_path: Path) -> None:
    code, out, err = run_hostile(case, tmp_path)
    if case.message is None:
        assert code == 0, err
        return
    assert code == case.code, (out, err)
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")] if case.code == 1 \
        else [err]
    assert len(errors) == 1, err
    assert case.message in errors[0] or case.message in " ".join(err.split()), err


def test_a_damaged_store_is_named_and_replaced_by_the_next_result(tmp_path: Path) -> None:
    """The damage is a note that names the store, not the zoo; the next stored result
    replaces the store, and nothing of the damaged one is carried over."""
    folder = tmp_path / "work"
    folder.mkdir()
    _outside(tmp_path)
    edit_store(lambda f: _add_column(f, "leak", _external))(folder)
    done = runner.invoke(app, ["zoo", "ls", str(folder / "zoo.h5")])
    assert done.exit_code == 0 and "damaged" not in done.stderr
    done = runner.invoke(app, ["analyze", str(folder / "zoo.h5"), "--plugin", "weightstats"],
                         env={"COLUMNS": "200"})
    assert done.exit_code == 0, done.stderr
    assert f"note: replaced {_store(folder)}, which could not be used (it holds a dataset " \
           "'analyses/weightstats/" in done.stderr
    assert "with external storage)" in done.stderr
    with h5py.File(_store(folder), "r") as f:
        assert "leak" not in _table(f)
        assert "leak" not in json.loads(_table(f).attrs["columns"])
    done = runner.invoke(app, ["analyze", str(folder / "zoo.h5"), "--plugin", "weightstats"])
    assert done.exit_code == 0 and "note:" not in done.stderr and "reused" in done.stdout + \
        done.stderr


def test_the_corpus_covers_every_class() -> None:
    assert len(CASES) >= 130
    assert len({c.name for c in CASES}) == len(CASES)
    assert sum(c.message is None for c in CASES) >= 40  # input that may be ignored, safely


# -- resume state ------------------------------------------------------------------------------


def _saved_state(tmp_path: Path) -> tuple[object, object, Member, Path]:
    import torch

    from zooscope.engine.resume import ResumeState

    member = Member.from_factors({"learning_rate": 1e-3, "seed": 0})
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    state = ResumeState(tmp_path / "z.h5.state")
    state.save(member, 1, optimizer)
    return state, optimizer, member, state.dir / f"{member.id}.e1"


@pytest.mark.parametrize("damage", ["json invalid", "json a list", "json nested deeply",
                                    "json missing keys", "json a fifo", "tensors truncated",
                                    "tensors not safetensors", "tensors a link",
                                    "rng of the wrong size"])
def test_damaged_resume_state_is_one_error_with_a_hint(tmp_path: Path, damage: str) -> None:
    state, optimizer, member, stem = _saved_state(tmp_path)
    meta, tensors = stem.with_name(stem.name + ".json"), stem.with_name(stem.name + ".safetensors")
    if damage == "json invalid":
        meta.write_text("{")
    elif damage == "json a list":
        meta.write_text("[]")
    elif damage == "json nested deeply":
        meta.write_text("[" * 100_000 + "]" * 100_000)
    elif damage == "json missing keys":
        meta.write_text("{}")
    elif damage == "json a fifo":
        meta.unlink()
        os.mkfifo(meta)
    elif damage == "tensors truncated":
        tensors.write_bytes(tensors.read_bytes()[:40])
    elif damage == "tensors not safetensors":
        tensors.write_bytes(b"\xff" * 64)
    elif damage == "tensors a link":
        target = tmp_path / "elsewhere.safetensors"
        tensors.rename(target)
        tensors.symlink_to(target)
    else:
        from safetensors.torch import load_file, save_file

        content = load_file(str(tensors))
        content["rng.torch"] = content["rng.torch"][:10]
        save_file(content, str(tensors))
    with pytest.raises(ZooFileError, match=rf"the resume state of member {member.id} at epoch "
                                           r"1 in .* is damaged") as caught:
        state.load(member, 1, optimizer)  # type: ignore[attr-defined]
    assert "restore that folder" in (caught.value.hint or "")


# -- exported folders -----------------------------------------------------------------------------


def test_an_exported_folder_with_a_damaged_config_is_one_error(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    import zooscope

    tiny = tmp_path / "tiny.h5"
    make_zoo(tiny, members=1, epochs=0)
    base = {"model_type": "bert", "vocab_size": 50, "hidden_size": 8, "num_hidden_layers": 1,
            "num_attention_heads": 2, "intermediate_size": 16}
    for name, change, message in [
            ("negative size", {"hidden_size": -8}, "config.json describes no model"),
            ("zero heads", {"num_attention_heads": 0}, "config.json describes no model"),
            ("unknown type", {"model_type": "no-such-model"}, "config.json describes no model")]:
        folder = tmp_path / name
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({**base, **change}))
        from safetensors.numpy import save_file

        save_file({"x": np.zeros(1, dtype=np.float32)}, str(folder / "model.safetensors"))
        with pytest.raises(ZooFileError, match=message):
            zooscope.load_model(folder)
    folder = tmp_path / "bad head"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(base))
    (folder / "zooscope_head.json").write_text("[]")
    from safetensors.numpy import save_file

    save_file({"x": np.zeros(1, dtype=np.float32)}, str(folder / "model.safetensors"))
    with pytest.raises(ZooFileError, match="zooscope_head.json is not a JSON object with a kind"):
        zooscope.load_model(folder)


# -- text into the card and the Markdown report ---------------------------------------------------


HOSTILE_TEXT = ("evil|cell\nsecond line `code` ```fence <script>alert(1)</script> "
                "[click](javascript:alert(1)) ![img](http://x/y.png) **bold** $x$ & &amp; #h")


def _card_of(tmp_path: Path, name: str, zoo_table: dict[str, str],
             factors: dict[str, object] | None = None) -> tuple[str, Path]:
    from zooscope.record import ZooRecord
    from zooscope.services.card import zoo_card
    from zooscope.stores.hdf5 import HDF5Store
    from zooscope.zoo import Architecture

    from .test_store import SHAPES, expected_tensor

    lines = ["[zoo]", 'name = "t"'] + [f"{k} = {json.dumps(v)}" for k, v in zoo_table.items()]
    config = "\n".join(lines) + "\n[grid]\n" + "".join(
        f"{k} = {json.dumps(v)}\n" for k, v in (factors or {}).items())
    header = ZooRecord(name="t", config_text=config, generator="test", generator_version="1",
                       metric_columns=["test_accuracy"])
    path = tmp_path / name
    member = Member.from_factors({"seed": 0, **{k: v[0] for k, v in (factors or {}).items()}})
    with HDF5Store().create(path, header, [member]) as w:
        w.ensure_architecture(Architecture(key="toy", files={"config.json": b"{}"}, shapes=SHAPES))
        w.start_member(member, Architecture(key="toy", files={"config.json": b"{}"}, shapes=SHAPES))
        w.write_checkpoint(member, 0, 0, 0.0, {n: expected_tensor(n, 0, 0, False) for n in SHAPES},
                           {"test_accuracy": 0.5}, None)
    import zooscope

    with zooscope.open_zoo(path) as zoo:
        return zoo_card(zoo), path


def _front_matter(card: str) -> dict[str, object]:
    import yaml

    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n", 2)[1])


def _html(markdown_text: str) -> str:
    markdown = pytest.importorskip("markdown")
    return markdown.markdown(markdown_text, extensions=["tables", "fenced_code"])


@pytest.mark.parametrize("licence", ["mit\nextra_gated_prompt: give us your data",
                                     "mit\nconfigs:\n- config_name: x", "a: b", "'quoted'",
                                     "x\u2028gated: true"])
def test_the_licence_adds_no_keys_to_the_front_matter(tmp_path: Path, licence: str) -> None:
    card, _ = _card_of(tmp_path, "t.h5", {"license": licence})
    meta = _front_matter(card)
    assert set(meta) == {"license", "pretty_name", "tags", "size_categories"}
    assert meta["license"] == licence


@pytest.mark.parametrize("name", ["we'ird.h5", 'q"uote.h5', "back`tick```.h5",
                                  "x'); import os; os.system('echo pwned'); ('.h5"])
def test_the_file_name_is_a_string_in_the_cards_code(tmp_path: Path, name: str) -> None:
    card, _ = _card_of(tmp_path, name, {})
    blocks = re.findall(r"^(`{3,})python\n(.*?)^\1$", card, flags=re.S | re.M)
    assert len(blocks) == 2
    for _, code in blocks:
        tree = ast.parse(code)
        strings = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)
                   and isinstance(n.value, str)]
        assert name in strings
        calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)]
        assert all(not (isinstance(c.func, ast.Attribute) and c.func.attr == "system")
                   for c in calls)


def test_descriptions_and_factors_are_text_in_the_card(tmp_path: Path) -> None:
    card, _ = _card_of(tmp_path, "t.h5", {"description": HOSTILE_TEXT},
                       factors={"learning_rate": [1e-3], "note": ["a|b\nc <b>x</b>"]})
    html = _html(card.split("---\n", 2)[2])
    description = html.split("<h1>t</h1>", 1)[1].split("<h2>", 1)[0]
    assert set(re.findall(r"<(\w+)", description)) == {"p"}  # text, no markup of its own
    shown = html_module.unescape(re.sub(r"<[^>]+>", "", description))
    assert "<script>alert(1)</script>" in shown and "[click](javascript:alert(1))" in shown
    assert "<script" not in html and "<a " not in html and "<img" not in html
    # the grid table keeps one row per factor, with two cells each
    grid = html.split("<h2>Grid</h2>", 1)[1].split("</table>", 1)[0]
    rows = re.findall(r"<tr>(.*?)</tr>", grid, flags=re.S)
    assert len(rows) == 1 + 2  # header, learning_rate, note
    assert all(len(re.findall(r"<t[dh]", row)) == 2 for row in rows)


def test_a_fence_in_the_config_stays_inside_the_reports_code_block(tmp_path: Path) -> None:
    from zooscope.services.report import Report, render_markdown

    config = '[zoo]\nname = "t"\ndescription = """\n```\n# Injected heading\n<script>x</script>\n```\n"""\n'
    report = Report(zoo=tmp_path / "t.h5", created="today", card=[("zoo", "t | x\ny")],
                    config=config, curves=None, sections=[], skipped=[("umap", "<b>no</b>")])
    text, _ = render_markdown(report)
    html = _html(text)
    assert "<h1>Injected heading</h1>" not in html and "<script>" not in html
    code = re.search(r"<pre><code[^>]*>(.*?)</code></pre>", html, flags=re.S)
    assert code is not None and "# Injected heading" in code.group(1)
    assert html_module.unescape(code.group(1)) == config  # the whole config, verbatim
    assert "<b>" not in html


def test_a_bad_timeout_variable_in_the_environment_is_a_config_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from zooscope.environment import env_seconds

    for value in ("abc", "-1", "inf", "nan", "1e99"):
        monkeypatch.setenv("ZOOSCOPE_X", value)
        with pytest.raises(ConfigError, match=r"ZOOSCOPE_X=.* is not a number of seconds"):
            env_seconds("ZOOSCOPE_X", 5.0)
    monkeypatch.setenv("ZOOSCOPE_X", "2.5")
    assert env_seconds("ZOOSCOPE_X", 5.0) == 2.5


def test_a_killed_saves_leftover_is_removed_by_the_next_reader(tmp_path: Path) -> None:
    zoo = analysed_zoo(tmp_path)
    leftover = _store(tmp_path).with_name(".results.h5.4242.tmp")
    leftover.write_bytes(bytes(1 << 20))
    import zooscope

    with zooscope.open_zoo(zoo) as z:
        assert [a["name"] for a in z.analyses()] == ["weightstats"]
    assert not leftover.exists()
    assert _store(tmp_path).exists()
