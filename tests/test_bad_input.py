"""A corpus of bad inputs: each gets one `error:` line, exit 1 (2 for usage), no traceback,
never the "this is a bug" fallback, and no file that existed before is changed.

Each case runs with its working directory in a child folder of the test's folder; the
sha256 of every file in the parent (the child included) is compared before and after, so
a write outside where the user pointed shows. Cases marked ``size`` declare absurd sizes
and run in a subprocess under an address-space limit of 3 GB (``ulimit -v``).

The zoo-file blocks break the promises docs/format.md makes, one case each; the ids say
which promise: root attributes (``zooscope_format`` an integer from 1, text attributes
UTF-8, ``storage_dtype``/``compression`` known, JSON attributes objects), ``/members``
(five datasets of M rows, safe unique ids, factors JSON objects, lineage null or an
object, status 0-3, architecture -1..A-1, ``table/<factor>`` columns of M values),
``/architectures/a{k}`` (named a0, a1, ... in turn; tensor names safe; shapes declared;
``rows`` int64 (C_k, T); ``digests`` S32 (C_k, T); tensors (R, *shape) of an allowed
dtype with a known ``stored_as`` that matches it; ``files/<name>`` 1-D uint8 with safe
names), ``/checkpoints`` (index fields; rows pointing at existing members,
architectures, rows of ``rows`` and rows of each tensor; one commit per member and
epoch; metrics (≥C, K) with K names; predictions (≥C, n_test) or (≥C, n_test, 2) of
kind class or span), ``/data`` (test labels, ids, contexts and answers of one length
n_test), and that no declared size exceeds what the file holds.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from zooscope.cli import app
from zooscope.zoo import Member

from .conftest import TINY_CONFIG, cli_env
from .test_store import make_zoo

runner = CliRunner()


def config(**replace: str) -> str:
    text = TINY_CONFIG
    for old, new in replace.items():
        assert old.replace("_", " ") in text or old in text, old
        text = text.replace(old.replace("_", " ") if old.replace("_", " ") in text else old, new)
    return text


@dataclass
class Case:
    name: str
    #: Builds the files in a folder and returns the CLI arguments.
    setup: Callable[[Path], list[str]]
    message: str
    code: int = 1
    #: Declares an absurd size: runs in a subprocess under a 3 GB address-space limit.
    size: bool = False


def generate_with(text: str | bytes, *extra: str) -> Callable[[Path], list[str]]:
    def setup(tmp: Path) -> list[str]:
        path = tmp / "zoo.toml"
        (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)  # type: ignore[arg-type]
        return ["generate", str(path), "--out", str(tmp / "out.h5"), *extra]
    return setup


def with_data(content: bytes, name: str = "data.tsv") -> Callable[[Path], list[str]]:
    def setup(tmp: Path) -> list[str]:
        (tmp / name).write_bytes(content)
        text = TINY_CONFIG.replace('source = "synthetic:sentiment:400"', f'source = "./{name}"')
        (tmp / "zoo.toml").write_text(text)
        return ["generate", str(tmp / "zoo.toml"), "--out", str(tmp / "out.h5")]
    return setup


def zoo_file(make: Callable[[Path], None], *command: str) -> Callable[[Path], list[str]]:
    def setup(tmp: Path) -> list[str]:
        path = tmp / "zoo.h5"
        make(path)
        return [*command[:-1], str(path)] if command[-1] == "ZOO" else [command[0], str(path), *command[1:]]
    return setup


def good_zoo(path: Path) -> None:
    make_zoo(path, members=2, epochs=1)


def edit_zoo(edit: Callable[[h5py.File], None]) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        good_zoo(path)
        with h5py.File(path, "r+") as f:
            edit(f)
    return make


def _set(f: h5py.File, key: str, value: object) -> None:
    f.attrs[key] = value


def zoo_with_weightstats(path: Path) -> None:
    """A zoo holding a weightstats result, which predict reads."""
    good_zoo(path)
    result = runner.invoke(app, ["analyze", str(path), "--plugin", "weightstats",
                                 "--out", str(path.with_name("weightstats"))])
    assert result.exit_code == 0, result.stderr


def _nan(f: h5py.File) -> None:
    ds = f["architectures/a0/tensors/layer.weight"]
    ds[0] = np.full(ds.shape[1:], np.nan, dtype=ds.dtype)


CASES = [
    # -- configs --------------------------------------------------------------------------
    Case("toml syntax", generate_with("[zoo\nname = 'x'"), "is not valid TOML"),
    Case("unknown table", generate_with(TINY_CONFIG + "\n[zooo]\n"), "unknown table [zooo]"),
    Case("unknown key", generate_with(config(epochs="epoch")), "unknown key 'epoch' in [zoo]"),
    Case("unknown data key", generate_with(config(**{'source = "synthetic:sentiment:400"':
                                                     'source = "synthetic:sentiment:400"\n'
                                                     'text_colum = "t"'})),
         "unknown key 'text_colum' in [data] hint: did you mean 'text_column'?"),
    Case("another generator's key", generate_with(config(**{
        'source = "synthetic:sentiment:400"': 'source = "synthetic:sentiment:400"\nstride = 64'})),
         "[data] stride is a setting of the squad generator; sst2 does not use it"),
    Case("generator key of the wrong type", generate_with(config(**{
        'source = "synthetic:sentiment:400"': 'source = "synthetic:sentiment:400"\n'
                                              'train_examples = -1'})),
         "[data] train_examples must be ≥ 0, got -1"),
    Case("wrong type", generate_with(config(**{"epochs = 2": 'epochs = "2"'})),
         "[zoo] epochs must be an integer, not str"),
    Case("empty grid", generate_with(config(**{"[3e-4, 1e-3]": "[]"})),
         "[grid] learning_rate is empty"),
    Case("negative learning rate", generate_with(config(**{"3e-4": "-3e-4"})),
         "[grid] learning_rate must be positive, got -0.0003"),
    Case("zero epochs", generate_with(config(**{"epochs = 2": "epochs = 0"})),
         "[zoo] epochs must be positive, got 0"),
    Case("unknown generator", generate_with(config(**{'"sst2"': '"sst3"'})),
         "unknown generator 'sst3'"),
    Case("missing data file", generate_with(config(**{'"synthetic:sentiment:400"': '"./nope.tsv"'})),
         "[data] source: no data file at"),
    Case("missing backbone", generate_with(config(**{'backbone = "scratch"': 'backbone = "./nope"'})),
         "backbone './nope': no model directory at"),
    Case("unknown hub backbone offline", generate_with(config(**{
        'backbone = "scratch"': 'backbone = "package:not_a_real_model_pkg/model"'})),
         "the Python package 'not_a_real_model_pkg' is not installed"),
    Case("empty seeds", generate_with(config(**{"seeds = [0, 1]": "seeds = []"})),
         "[zoo] seeds is empty"),
    Case("repeated seeds", generate_with(config(**{"seeds = [0, 1]": "seeds = [1, 1]"})),
         "[zoo] seeds repeats a seed"),
    Case("seed in grid", generate_with(TINY_CONFIG.replace("[grid]\n", "[grid]\nseed = [0]\n")),
         "seeds go in [zoo] seeds"),
    Case("split sum", generate_with(TINY_CONFIG.replace(
        "[data]\n", "[data]\nsplit = { train = 0.8, validation = 0.3, test = 0.1 }\n")),
         "[data] split fractions add up to 1.2"),
    Case("dropout", generate_with(config(**{"max_seq_len = 32": "max_seq_len = 32\ndropout = 1.5"})),
         "[train] dropout must be in [0, 1)"),
    Case("no grid", generate_with(TINY_CONFIG.replace("[grid]\nlearning_rate = [3e-4, 1e-3]\n", "")),
         "has no [grid] table"),
    Case("storage dtype", generate_with(TINY_CONFIG + '\n[store]\ndtype = "float8"\n'),
         "[store] dtype = 'float8' is not one of float32, float16, bfloat16"),
    Case("not utf-8", generate_with("[zoo]\nname = 'caf\xe9'\n".encode("latin-1")), "is not UTF-8 text"),
    Case("foreign config", generate_with('{"zoo": {"name": "json"}}'), "is not valid TOML"),
    Case("missing config", lambda tmp: ["generate", str(tmp / "nope.toml")], "no config file at"),
    Case("config is a folder", lambda tmp: ["generate", str(tmp)], "is a directory, not a config file"),
    # -- data files -----------------------------------------------------------------------
    Case("wrong columns", with_data(b"a\tb\n1\thello\n0\tbye\n"), "has no text column"),
    Case("empty data", with_data(b"label\tsentence\n"), "holds no rows"),
    Case("wrong encoding", with_data(b"label\tsentence\n1\tcaf\xe9 \xff\xfe\n" * 50), "not UTF-8"),
    # -- zoo files ------------------------------------------------------------------------
    Case("empty zoo", zoo_file(lambda p: p.write_bytes(b""), "zoo", "ls", "ZOO"),
         "is not a readable HDF5 file"),
    Case("random bytes", zoo_file(lambda p: p.write_bytes(os.urandom(5000)), "zoo", "info", "ZOO"),
         "is not a readable HDF5 file"),
    Case("truncated zoo", zoo_file(lambda p: (good_zoo(p), p.write_bytes(p.read_bytes()[:3000])),
                                   "zoo", "ls", "ZOO"), "not a readable HDF5 file"),
    Case("hdf5 not a zoo", zoo_file(lambda p: h5py.File(p, "w").close(), "zoo", "ls", "ZOO"),
         "is an HDF5 file but not a zooscope zoo"),
    Case("newer format", zoo_file(edit_zoo(lambda f: _set(f, "zooscope_format", 7)), "zoo", "ls",
                                  "ZOO"), "uses zoo format 7; this zooscope reads format 1"),
    Case("missing group", zoo_file(edit_zoo(lambda f: f.__delitem__("members")), "zoo", "info", "ZOO"),
         "the group /members is missing"),
    Case("nan weights", zoo_file(edit_zoo(_nan), "zoo", "validate", "ZOO"), "problem(s) in"),
    Case("external link", zoo_file(edit_zoo(lambda f: f.__setitem__(
        "x", h5py.ExternalLink("/etc/hosts", "/y"))), "zoo", "ls", "ZOO"), "external link"),
    Case("zoo is a folder", lambda tmp: ["zoo", "ls", str(tmp)], "is a directory, not a zoo file"),
    Case("not a zoo suffix", lambda tmp: (tmp.joinpath("z.txt").write_text("x"),
                                          ["zoo", "ls", str(tmp / "z.txt")])[1], "no store reads"),
    # -- command-line misuse --------------------------------------------------------------
    Case("unknown plugin", zoo_file(good_zoo, "analyze", "--plugin", "nope"),
         "unknown analyzer 'nope'"),
    Case("set without =", zoo_file(good_zoo, "analyze", "--set", "order"), "is not NAME=VALUE"),
    Case("set unknown option", zoo_file(good_zoo, "analyze", "--set", "colour=red"),
         "analyzer 'agreement' has no option 'colour'"),
    Case("members select nothing", zoo_file(good_zoo, "analyze", "--members", "seed=9"),
         "selects no member"),
    Case("epochs not numbers", zoo_file(good_zoo, "analyze", "--epochs", "last,first"),
         "is not a list of integers"),
    Case("bad shard", generate_with(TINY_CONFIG, "--shard", "2/2"), "need 0 ≤ I < N", code=2),
    Case("resume and force", generate_with(TINY_CONFIG, "--resume", "--force"),
         "--resume and --force contradict each other"),
    # -- analyzer options: each error names the option, none blames the plugin -------------
    *[Case(f"{plugin} {setting}", zoo_file(make, "analyze", "--plugin", plugin, "--set", setting),
           message)
      for plugin, setting, message, make in [
          ("weightstats", "tensors=nomatch", "option tensors = 'nomatch' matches no tensor",
           good_zoo),
          ("weightstats", "tensors=[", "option tensors = '[' is not a regular expression",
           good_zoo),
          ("weightstats", "tensors=classifier", "option tensors = 'classifier' matches no tensor",
           good_zoo),
          ("weightstats", "color_by=colour", "option color_by = 'colour' is not a factor",
           good_zoo),
          ("weightstats", "block_mb=0", "option block_mb = 0.0 must be more than 0", good_zoo),
          ("weightstats", "near_zero=-1", "option near_zero = -1.0 must be 0 or more", good_zoo),
          ("agreement", "order=colour", "option order = 'colour': 'colour' is not a factor",
           good_zoo),
          ("predict", "target=nope", "option target = 'nope' is not a metric of this zoo",
           zoo_with_weightstats),
          ("predict", "folds=1", "option folds = 1: cross-validation needs at least 2 folds",
           zoo_with_weightstats),
          ("sparsify", "exclude=(", "option exclude = '(' is not a regular expression", good_zoo),
          ("sparsify", "sparsities=0.5,1.5", "option sparsities = '0.5,1.5' must be numbers in",
           good_zoo),
          ("sparsify", "sparsities=half", "option sparsities = 'half' must be numbers in",
           good_zoo),
          ("sparsify", "metric=nope", "option metric = 'nope' is not a metric of this zoo",
           good_zoo),
          ("sparsify", "scope=random", "option scope = 'random' is not one of global, layerwise",
           good_zoo),
          ("umap", "tensors=nomatch", "option tensors = 'nomatch' matches no tensor", good_zoo),
          ("umap", "tensors=[", "option tensors = '[' is not a regular expression", good_zoo),
          ("umap", "components=0", "option components = 0 must be 1 or more", good_zoo),
          ("umap", "color_by=colour", "option color_by = 'colour' is neither 'epoch'", good_zoo),
          ("backbones", "metric=nope", "this zoo records no 'validation_nope'", good_zoo),
          ("backbones", "select_on=test", "option select_on = 'test' is not one of", good_zoo),
          ("backbones", "bootstrap=-5", "option bootstrap = -5 must be ≥ 0", good_zoo),
          ("agreement", "bootstrap=-1", "option bootstrap = -1 must be ≥ 0", good_zoo),
          ("backbones", "bootstrap=many", "option bootstrap takes int, not 'many'", good_zoo),
      ]],
]


# ============================================================================================
# Hostile input: every class of promise zooscope makes about bad input, a block each.
# ============================================================================================
def generate_here(text: str, *extra: str) -> Callable[[Path], list[str]]:
    """``generate`` with no --out: the zoo goes to NAME.h5 in the working directory."""
    def setup(tmp: Path) -> list[str]:
        (tmp / "zoo.toml").write_text(text)
        return ["generate", str(tmp / "zoo.toml"), *extra]
    return setup


def with_side(make: Callable[[Path], None], *extra: str,
              text: str = TINY_CONFIG) -> Callable[[Path], list[str]]:
    """``generate --out out.h5`` after ``make`` has put files beside it."""
    def setup(tmp: Path) -> list[str]:
        make(tmp)
        (tmp / "zoo.toml").write_text(text)
        return ["generate", str(tmp / "zoo.toml"), "--out", str(tmp / "out.h5"), *extra]
    return setup


def _symlink(name: str, target: str, folder: bool = False) -> Callable[[Path], None]:
    def make(tmp: Path) -> None:
        if folder:
            (tmp.parent / "outside").mkdir()
        (tmp / name).symlink_to(target)
    return make


def _zoo_beside(extra: Callable[[Path], None]) -> Callable[[Path], None]:
    def make(tmp: Path) -> None:
        stored_config_zoo(TINY_CONFIG)(tmp / "out.h5")
        extra(tmp)
    return make


def stored_config_zoo(text: str, generator: str = "sst2") -> Callable[[Path], None]:
    """A small zoo that says it was made from ``text`` by ``generator``."""
    def make(path: Path) -> None:
        good_zoo(path)
        with h5py.File(path, "r+") as f:
            f.attrs["config"] = text
            f.attrs["generator"] = generator
    return make


def resume_with(stored: str, given: str, generator: str = "sst2") -> Callable[[Path], list[str]]:
    def setup(tmp: Path) -> list[str]:
        stored_config_zoo(stored, generator)(tmp / "out.h5")
        (tmp / "zoo.toml").write_text(given)
        return ["generate", str(tmp / "zoo.toml"), "--out", str(tmp / "out.h5"), "--resume"]
    return setup


def _replace(f: h5py.File, name: str, shape: tuple[int, ...], dtype: object = None,
             data: object = None, **attrs: object) -> None:
    """Put a dataset of another shape (declared, unwritten where no data) in place of one."""
    old = f[name]
    kept = dict(old.attrs)
    dtype = old.dtype if dtype is None else dtype
    del f[name]
    if data is not None:
        ds = f.create_dataset(name, data=data, dtype=dtype)
    else:
        chunks = tuple(min(d, 1 << 16) or 1 for d in shape) if shape else None
        ds = f.create_dataset(name, shape=shape, dtype=dtype, chunks=chunks,
                              maxshape=tuple(None for _ in shape))
    for key, value in {**kept, **attrs}.items():
        ds.attrs[key] = value


def _set_index(field: str, value: int, row: int = 0) -> Callable[[h5py.File], None]:
    def edit(f: h5py.File) -> None:
        index = f["checkpoints/index"][()]
        index[row][field] = value
        f["checkpoints/index"][row] = index[row]
    return edit


def _set_item(name: str, position: tuple[int, ...], value: object) -> Callable[[h5py.File], None]:
    def edit(f: h5py.File) -> None:
        f[name][position] = value
    return edit


def _text_column(name: str, values: list[str]) -> Callable[[h5py.File], None]:
    def edit(f: h5py.File) -> None:
        _replace(f, name, (len(values),), h5py.string_dtype(),
                 data=np.array(values, dtype=object))
    return edit


def _bad_utf8_attr(f: h5py.File) -> None:
    # A variable-length UTF-8 string attribute holding bytes that are not UTF-8.
    tid = h5py.h5t.TypeID.copy(h5py.h5t.C_S1)
    tid.set_size(4)
    tid.set_cset(h5py.h5t.CSET_UTF8)
    f.attrs.__delitem__("name")
    space = h5py.h5s.create(h5py.h5s.SCALAR)
    attr = h5py.h5a.create(f.id, b"name", tid, space)
    attr.write(np.frombuffer(b"\xff\xfe\xfa\xfb", dtype="S4").reshape(()), mtype=tid)


def _overwrite_metadata(path: Path) -> None:
    """Overwrite bytes inside the third object header (that of /members/id): its checksum
    fails."""
    good_zoo(path)
    data = bytearray(path.read_bytes())
    headers = [i for i in range(len(data)) if data[i:i + 4] == b"OHDR"]
    data[headers[2] + 20 : headers[2] + 24] = b"\xde\xad\xbe\xef"
    path.write_bytes(bytes(data))


def _analysis(rows: int) -> Callable[[h5py.File], None]:
    def edit(f: h5py.File) -> None:
        g = f.create_group("analyses/agreement/k0")
        g.attrs["options"] = "{}"
        table = g.create_group("tables/pairs")
        table.attrs["columns"] = json.dumps(["x"])
        if rows <= 1000:  # a real column
            table.create_dataset("x", data=np.arange(rows, dtype="f8"))
        else:  # declared, never written
            table.create_dataset("x", shape=(rows,), dtype="f8", chunks=(1 << 16,),
                                 maxshape=(None,))
        g.create_group("figures")
    return edit


def _tensor_shape(name: str, shape: tuple[int, ...]) -> Callable[[h5py.File], None]:
    """Declare a tensor of another shape, in the layout and in the dataset alike."""
    def edit(f: h5py.File) -> None:
        arch = f["architectures/a0"]
        shapes = json.loads(arch.attrs["shapes"])
        shapes[name] = list(shape)
        arch.attrs["shapes"] = json.dumps(shapes)
        rows = f[f"architectures/a0/tensors/{name}"].shape[0]
        _replace(f, f"architectures/a0/tensors/{name}", (rows, *shape))
    return edit


def export_cmd(make: Callable[[Path], None]) -> Callable[[Path], list[str]]:
    """``zoo export`` of the first member's epoch 0 (reads every tensor of it)."""
    def setup(tmp: Path) -> list[str]:
        make(tmp / "zoo.h5")
        first = Member.from_factors({"learning_rate": 1e-3, "seed": 0}).id
        return ["zoo", "export", str(tmp / "zoo.h5"), "--member", first, "--epoch", "0",
                "--out", str(tmp / "exported")]
    return setup


def zoo_out(command: str, out: str, *extra: str) -> Callable[[Path], list[str]]:
    """``zoo merge`` / ``zoo import`` / ``zoo export`` writing to ``out`` (relative to the folder
    unless absolute)."""
    def setup(tmp: Path) -> list[str]:
        good_zoo(tmp / "zoo.h5")
        (tmp / "file.txt").write_text("x")
        (tmp / "folder").mkdir()
        target = out if out.startswith("/") else str(tmp / out)
        if command == "merge":
            return ["zoo", "merge", str(tmp / "zoo.h5"), "--out", target, *extra]
        if command == "import":
            return ["zoo", "import", str(tmp / "folder"), "--out", target, *extra]
        first = Member.from_factors({"learning_rate": 1e-3, "seed": 0}).id
        return ["zoo", "export", str(tmp / "zoo.h5"), "--member", first, "--epoch", "0",
                "--out", target, *extra]
    return setup


def _mkdir(name: str) -> Callable[[Path], None]:
    return lambda tmp: (tmp / name).mkdir()


BIG_GRID = TINY_CONFIG.replace("learning_rate = [3e-4, 1e-3]\n", "learning_rate = [3e-4, 1e-3]\n"
                               + "".join(f"f{k} = {list(range(10))}\n" for k in range(6)))

PATH_CASES = [
    # -- writes outside where the user pointed -----------------------------------------------
    Case("name escapes the folder", generate_here(config(**{'name = "tiny"': 'name = "../escaped"'})),
         "[zoo] name '../escaped' may hold only letters"),
    Case("name is an absolute path", generate_here(config(**{'name = "tiny"': 'name = "/tmp/abs"'})),
         "[zoo] name '/tmp/abs' may hold only letters"),
    Case("name names a subfolder", generate_here(config(**{'name = "tiny"': 'name = "sub/zoo"'})),
         "[zoo] name 'sub/zoo' may hold only letters"),
    Case("name is dot dot", generate_here(config(**{'name = "tiny"': 'name = ".."'})),
         "[zoo] name '..' may hold only letters"),
    Case("name dry run escapes", generate_here(config(**{'name = "tiny"': 'name = "../x"'}),
                                               "--dry-run"), "[zoo] name '../x'"),
    Case("lock file is a link out", with_side(_symlink("out.h5.lock", "../victim")),
         "out.h5.lock is not a plain file"),
    Case("creating file is a link out", with_side(_symlink("out.h5.creating", "../victim.h5")),
         "out.h5.creating is not a plain file"),
    Case("state folder is a link out", with_side(
        _zoo_beside(_symlink("out.h5.state", "../outside", folder=True)), "--resume"),
         "out.h5.state is not a folder"),
    Case("state file is a link out", with_side(_zoo_beside(lambda tmp: (
        (tmp / "out.h5.state").mkdir(),
        (tmp / "out.h5.state" / "m0.e0.json").symlink_to("../../victim.json"))), "--resume"),
         "m0.e0.json is not a plain file"),
    Case("state is a file", with_side(_zoo_beside(
        lambda tmp: (tmp / "out.h5.state").write_text("x")), "--resume"),
         "out.h5.state is not a folder"),
    Case("resumed zoo is a link out", with_side(lambda tmp: (
        stored_config_zoo(TINY_CONFIG)(tmp.parent / "elsewhere.h5"),
        (tmp / "out.h5").symlink_to("../elsewhere.h5")), "--resume"),
         "out.h5 is a link to ../elsewhere.h5; resume the zoo itself"),
    Case("crafted member id resumed", with_side(_zoo_beside(lambda tmp: _edit_file(
        tmp / "out.h5", _text_column("members/id", ["../../evil", "m2"]))), "--resume"),
         "unsafe member name '../../evil'"),
    Case("crafted tensor name", zoo_file(edit_zoo(lambda f: _set(
        f["architectures/a0"], "tensor_names", json.dumps(["../../x"]))), "zoo", "ls", "ZOO"),
         "unsafe tensor name '../../x'"),
    Case("crafted model file name", export_cmd(edit_zoo(lambda f: f.create_dataset(
        "architectures/a0/files/..cfg", data=np.zeros(3, np.uint8)))), "unsafe file name '..cfg'"),
    # -- output paths -----------------------------------------------------------------------
    Case("generate out in a missing folder", lambda tmp: (
        (tmp / "zoo.toml").write_text(TINY_CONFIG),
        ["generate", str(tmp / "zoo.toml"), "--out", str(tmp / "no" / "such" / "o.h5")])[-1],
         "such does not exist"),
    Case("generate out is a folder", with_side(_mkdir("out.h5"), "--force"),
         "out.h5 is a directory, not a zoo file"),
    Case("generate out under a file", lambda tmp: (
        (tmp / "file.txt").write_text("x"), (tmp / "zoo.toml").write_text(TINY_CONFIG),
        ["generate", str(tmp / "zoo.toml"), "--out", str(tmp / "file.txt" / "o.h5")])[-1],
         "file.txt is not a folder"),
    Case("generate out unwritable", lambda tmp: (
        (tmp / "zoo.toml").write_text(TINY_CONFIG),
        ["generate", str(tmp / "zoo.toml"), "--out", "/sys/zoo.h5"])[-1],
         "cannot write in the folder /sys"),
    Case("merge out in a missing folder", zoo_out("merge", "missing/m.h5"), "does not exist"),
    Case("merge out is a folder", zoo_out("merge", "folder", "--force"),
         "is a directory, not a zoo file"),
    Case("merge out unwritable", zoo_out("merge", "/sys/m.h5"), "cannot write in the folder"),
    Case("import out in a missing folder", zoo_out("import", "missing/i.h5"), "does not exist"),
    Case("import out is a folder", zoo_out("import", "folder", "--force"),
         "is a directory, not a zoo file"),
    Case("export out is a file", zoo_out("export", "file.txt", "--force"),
         "file.txt exists and is not a directory"),
    Case("export out in a missing folder", zoo_out("export", "missing/deeper/model"),
         "does not exist"),
    Case("export out unwritable", zoo_out("export", "/sys/model"), "cannot write in the folder"),
    # -- resume with another config -----------------------------------------------------------
    Case("resume with other learning rates", resume_with(TINY_CONFIG, config(
        **{"[3e-4, 1e-3]": "[3e-4]"})), "[grid] learning_rate [0.0003, 0.001] → [0.0003]"),
    Case("resume with another batch size", resume_with(TINY_CONFIG, config(
        **{"batch_size = 32": "batch_size = 16"})), "[train] batch_size 32 → 16"),
    Case("resume with more epochs", resume_with(TINY_CONFIG, config(
        **{"epochs = 2": "epochs = 3"})), "[zoo] epochs 2 → 3"),
    Case("resume with other data", resume_with(TINY_CONFIG, config(
        **{"sentiment:400": "sentiment:500"})), "[data] source"),
    Case("resume a zoo of another generator", resume_with(TINY_CONFIG, TINY_CONFIG,
                                                          generator="squad"),
         "was made by the generator 'squad'"),
    Case("resume with stored config not toml", resume_with("[zoo", TINY_CONFIG),
         "its stored config is not valid TOML"),
]

CONFIG_VALUE_CASES = [
    # -- values that pass a type check and would crash later ---------------------------------
    Case("nul in name", generate_with(config(**{'name = "tiny"': 'name = "a\\u0000b"'})),
         "[zoo] name 'a\\x00b' may hold only letters"),
    Case("huge seed", generate_with(config(**{"seeds = [0, 1]": "seeds = [9223372036854775807]"})),
         "[zoo] seeds must be in 0 to 2**32 - 1"),
    Case("negative seed", generate_with(config(**{"seeds = [0, 1]": "seeds = [-3]"})),
         "[zoo] seeds must be in 0 to 2**32 - 1, got -3"),
    Case("date as grid value", generate_with(TINY_CONFIG.replace(
        "[grid]\n", "[grid]\nwhen = [1979-05-27]\n")), "each of [grid] when must be a number, "
         "string or true/false, not date"),
    Case("table as grid value", generate_with(TINY_CONFIG.replace(
        "[grid]\n", "[grid]\nmix = [{ a = 1 }]\n")), "not dict"),
    Case("list as grid value", generate_with(TINY_CONFIG.replace(
        "[grid]\n", "[grid]\nmix = [[1, 2]]\n")), "not list"),
    Case("grid int beyond int64", generate_with(TINY_CONFIG.replace(
        "[grid]\n", "[grid]\nbig = [99999999999999999999]\n")), "beyond a 64-bit integer"),
    Case("grid infinity", generate_with(TINY_CONFIG.replace("[grid]\n", "[grid]\nx = [inf]\n")),
         "values must be finite"),
    Case("grid factor name is a path", generate_with(TINY_CONFIG.replace(
        "[grid]\n", '[grid]\n"a/b" = [1]\n')), "[grid] factor name 'a/b'"),
    Case("grid backbone not text", generate_with(TINY_CONFIG.replace(
        "[grid]\n", "[grid]\nbackbone = [1]\n")), "each of [grid] backbone must be a string"),
    *[Case(f"search {name}", generate_with(TINY_CONFIG.replace("[grid]\n", f"[search]\n{body}\n"
                                                                 "[grid]\n")), message)
      for name, body, message in [
          ("without samples", 'weight_decay = "uniform(0, 1)"', "[search] needs samples"),
          ("zero samples", 'samples = 0\nweight_decay = "uniform(0, 1)"',
           "[search] samples must be ≥ 1, got 0"),
          ("no factor", "samples = 2", "[search] draws no factor"),
          ("unknown distribution", 'samples = 2\nwd = "normal(0, 1)"',
           "[search] wd = 'normal(0, 1)': 'normal' is not a distribution"),
          ("not a string", "samples = 2\nwd = 0.1", "[search] wd must be a distribution "
           "written as a string"),
          ("bad arguments", 'samples = 2\nwd = "uniform(0, os.system)"',
           "the arguments are not plain numbers"),
          ("arity", 'samples = 2\nwd = "uniform(0)"', "uniform takes 2 arguments"),
          ("reversed bounds", 'samples = 2\nwd = "uniform(1, 0)"',
           "the lower bound must be below the upper"),
          ("log of zero", 'samples = 2\nwd = "log_uniform(0, 1)"',
           "log_uniform needs bounds above 0"),
          ("int bounds", 'samples = 2\nsteps = "int_uniform(1.5, 4)"',
           "int_uniform's bounds must be finite integers"),
          ("empty choice", 'samples = 2\nwd = "choice([])"',
           "choice takes a non-empty list of values"),
          ("also in grid", 'samples = 2\nlearning_rate = "log_uniform(1e-4, 1e-3)"',
           "[search] learning_rate is also in [grid]"),
          ("backbone", 'samples = 2\nbackbone = "choice([\'a\', \'b\'])"',
           "[search] cannot draw the backbone"),
          ("real epochs", 'samples = 2\nepochs = "uniform(1, 3)"', "epochs takes whole numbers"),
          ("negative decay", 'samples = 2\nweight_decay = "uniform(-1, 0)"',
           "weight_decay must be ≥ 0"),
          ("same point twice", 'samples = 3\nflag = "choice([true, false])"',
           "[search] drew the same point twice"),
          ("too many members", 'samples = 100000\nwd = "uniform(0, 1)"',
           "the grid and search have 400,000 members, more than [zoo] max_members"),
      ]],
    Case("negative threads", generate_with(config(**{"num_threads = 1": "num_threads = -1"})),
         "[train] num_threads must be 0 (all cores) to 1024, got -1"),
    Case("absurd threads", generate_with(config(**{"num_threads = 1": "num_threads = 100000"})),
         "[train] num_threads must be 0 (all cores) to 1024"),
    Case("unknown device", generate_with(config(**{"num_threads = 1": 'device = "tpu"'})),
         "[train] device = 'tpu' is not one of"),
    Case("cuda without cuda", generate_with(config(**{"num_threads = 1": 'device = "cuda:7"'})),
         "[train] device = 'cuda:7': no such CUDA device"),
    Case("negative split seed", generate_with(TINY_CONFIG.replace(
        "[data]\n", "[data]\nsplit = { train = 0.8, validation = 0.1, test = 0.1, seed = -1 }\n")),
         "[data] split seed must be in 0 to 2**32 - 1, got -1"),
    Case("split seed not a number", generate_with(TINY_CONFIG.replace(
        "[data]\n", '[data]\nsplit = { train = 0.8, validation = 0.1, test = 0.1, seed = "x" }\n')),
         "[data] split seed must be an integer"),
    Case("synthetic size not a number", generate_with(config(**{
        "synthetic:sentiment:400": "synthetic:sentiment:abc"})), "N must be a whole number"),
    Case("synthetic size zero", generate_with(config(**{
        "synthetic:sentiment:400": "synthetic:sentiment:0"})), "N must be a whole number"),
    Case("unknown synthetic task", generate_with(config(**{
        "synthetic:sentiment:400": "synthetic:weather:10"})), "unknown synthetic task 'weather'"),
    Case("heads do not divide width", generate_with(config(**{
        "num_attention_heads = 2": "num_attention_heads = 5"})),
         "is not a multiple of the number of attention heads"),
    Case("unknown model type", generate_with(TINY_CONFIG.replace(
        "[scratch]\n", '[scratch]\nmodel_type = "gpt9"\n')),
         "[scratch] model_type = 'gpt9' is not one of bert, roberta, distilbert"),
    Case("negative scratch seed", generate_with(TINY_CONFIG.replace(
        "[scratch]\n", "[scratch]\nseed = -5\n")), "[scratch] seed must be in 0 to 2**32 - 1"),
    Case("nul in data source", generate_with(config(**{
        '"synthetic:sentiment:400"': '"./a\\u0000b.tsv"'})), "[data] source holds a NUL character"),
    Case("zero max members", generate_with(TINY_CONFIG.replace(
        "epochs = 2\n", "epochs = 2\nmax_members = 0\n")), "[zoo] max_members must be positive"),
    Case("split fraction nan", generate_with(TINY_CONFIG.replace(
        "[data]\n", "[data]\nsplit = { train = nan, validation = 0.1, test = 0.1 }\n")),
         "[data] split train must be ≥ 0 and finite, got nan"),
    Case("config is a device", lambda tmp: ((tmp / "zoo.toml").symlink_to("/dev/zero"),
                                            ["generate", str(tmp / "zoo.toml")])[1],
         "zoo.toml is not a regular file"),
    Case("config of 3 MiB", generate_with(TINY_CONFIG + "# padding\n" * 300_000),
         "a zoo config is at most 1,048,576"),
    Case("data file is a device", lambda tmp: (
        (tmp / "data.tsv").symlink_to("/dev/zero"),
        (tmp / "zoo.toml").write_text(TINY_CONFIG.replace(
            'source = "synthetic:sentiment:400"', 'source = "./data.tsv"')),
        ["generate", str(tmp / "zoo.toml"), "--out", str(tmp / "out.h5")])[-1],
         "/dev/zero is not a regular file"),
    Case("squad file is a device", lambda tmp: (
        (tmp / "q.json").symlink_to("/dev/zero"),
        (tmp / "zoo.toml").write_text(TINY_CONFIG.replace('"sst2"', '"squad"').replace(
            'source = "synthetic:sentiment:400"', 'source = "./q.json"\nstride = 16').replace(
            "max_seq_len = 32", "max_seq_len = 64")),
        ["generate", str(tmp / "zoo.toml"), "--out", str(tmp / "out.h5")])[-1],
         "/dev/zero is not a regular file"),
    Case("corpus file is a device", lambda tmp: (
        (tmp / "c.txt").symlink_to("/dev/zero"),
        (tmp / "zoo.toml").write_text(TINY_CONFIG.replace('"sst2"', '"mlm"').replace(
            'source = "synthetic:sentiment:400"', 'source = "./c.txt"')),
        ["generate", str(tmp / "zoo.toml"), "--out", str(tmp / "out.h5")])[-1],
         "/dev/zero is not a regular file"),
    Case("imported config is a device", lambda tmp: (
        (tmp / "model").mkdir(), (tmp / "model" / "config.json").symlink_to("/dev/zero"),
        ["zoo", "import", str(tmp / "model"), "--out", str(tmp / "imported.h5")])[-1],
         "config.json is not a model config"),
    Case("imported config of 20 MiB", lambda tmp: (
        (tmp / "model").mkdir(),
        (tmp / "model" / "config.json").write_text('{"model_type": "bert"}' + " " * 20 * 2**20),
        ["zoo", "import", str(tmp / "model"), "--out", str(tmp / "imported.h5")])[-1],
         "config.json is not a model config (a regular file of at most 16,777,216 bytes)"),
    Case("zoo is a device", lambda tmp: ((tmp / "z.h5").symlink_to("/dev/zero"),
                                         ["zoo", "ls", str(tmp / "z.h5")])[1],
         "z.h5 is not a regular file (a FIFO, a device or a socket)"),
    # -- absurd grids -------------------------------------------------------------------------
    Case("absurd grid", generate_with(BIG_GRID), "the grid has 4,000,000 members, more than "
         "[zoo] max_members = 10,000"),
    Case("absurd grid dry run", generate_with(BIG_GRID, "--dry-run"), "the grid has 4,000,000"),
    Case("grid over its own max", generate_with(TINY_CONFIG.replace(
        "epochs = 2\n", "epochs = 2\nmax_members = 3\n")), "the grid has 4 members, more than "
         "[zoo] max_members = 3"),
]

SIZE_CASES = [
    # -- declared sizes: each runs under ulimit -v 3 GB --------------------------------------
    Case("billion member ids", zoo_file(edit_zoo(lambda f: _replace(
        f, "members/id", (10**9,))), "zoo", "ls", "ZOO"), "/members/id declares", size=True),
    Case("billion factors", zoo_file(edit_zoo(lambda f: _replace(
        f, "members/factors", (10**9,))), "zoo", "ls", "ZOO"), "/members/factors", size=True),
    Case("metrics a billion wide", zoo_file(edit_zoo(lambda f: _replace(
        f, "checkpoints/metrics", (4, 10**9))), "zoo", "ls", "ZOO"),
         "/checkpoints/metrics has shape (4, 1000000000)", size=True),
    Case("hundred million index rows", zoo_file(edit_zoo(lambda f: _replace(
        f, "checkpoints/index", (10**8,))), "zoo", "ls", "ZOO"), "/checkpoints/index declares",
         size=True),
    Case("tensor of 2**31 elements", export_cmd(edit_zoo(_tensor_shape("layer.bias", (2**31,)))),
         "/architectures/a0/tensors/layer.bias declares", size=True),
    Case("tensor of 2**31 validated", zoo_file(edit_zoo(_tensor_shape("layer.bias", (2**31,))),
                                               "zoo", "validate", "ZOO"),
         "layer.bias declares", size=True),
    Case("config.json of 8 GiB", zoo_file(edit_zoo(lambda f: _replace(
        f, "architectures/a0/files/config.json", (8 * 2**30,))), "zoo", "validate", "ZOO"),
         "more than a model file holds", size=True),
    Case("config.json of 512 MiB unbacked", export_cmd(edit_zoo(lambda f: _replace(
        f, "architectures/a0/files/config.json", (2**29,)))), "config.json declares", size=True),
    Case("analysis of 2**31 rows", zoo_file(edit_zoo(_analysis(2**31)), "zoo", "validate", "ZOO"),
         "/analyses/agreement/k0/tables/pairs/x declares", size=True),
    Case("billion test labels", zoo_file(edit_zoo(lambda f: _replace(
        f, "data/test_labels", (10**9,))), "zoo", "validate", "ZOO"), "/data/test_labels declares",
         size=True),
    Case("predictions a hundred million wide", zoo_file(edit_zoo(lambda f: _replace(
        f, "checkpoints/predictions", (4, 10**8))), "zoo", "validate", "ZOO"),
         "rows of (7,) expected", size=True),
    Case("label of 10**12", with_data(b"label\tsentence\n" + b"0\tfine film\n" * 30
                                      + b"1000000000000\tgood film\n"),
         "has the label 1000000000000", size=True),
    Case("synthetic of 10**12 examples", generate_with(config(**{
        "synthetic:sentiment:400": "synthetic:sentiment:1000000000000"})),
         "N must be a whole number from 1 to 1,000,000", size=True),
    Case("sequence length beyond memory", generate_with(config(**{
        "max_seq_len = 32": "max_seq_len = 1000000000"})), "more than this machine's", size=True),
    Case("imported model beyond memory", lambda tmp: (
        (tmp / "model").mkdir(),
        (tmp / "model" / "config.json").write_text(json.dumps({
            "model_type": "bert", "hidden_size": 65536, "num_hidden_layers": 2,
            "num_attention_heads": 2, "intermediate_size": 65536, "vocab_size": 30000})),
        (tmp / "model" / "model.safetensors").write_bytes(_tiny_safetensors()),
        ["zoo", "import", str(tmp / "model"), "--out", str(tmp / "imported.h5")])[-1],
         "its config.json describes 57,835,847,680 parameters", size=True),
    Case("scratch model beyond memory", generate_with(config(**{
        "hidden_size = 32": "hidden_size = 1048576", "intermediate_size = 64":
        "intermediate_size = 1048576"})), "more than this machine's", size=True),
]

DAMAGED_CASES = [
    # -- damaged zoo files, each breaking one promise of docs/format.md ------------------------
    Case("metadata checksum", zoo_file(_overwrite_metadata, "zoo", "ls", "ZOO"),
         "cannot be read (incorrect metadata checksum"),
    Case("metadata checksum validated", zoo_file(_overwrite_metadata, "zoo", "validate", "ZOO"),
         "incorrect metadata checksum"),
    Case("rows table deleted", export_cmd(edit_zoo(lambda f: f.__delitem__(
        "architectures/a0/rows"))), "/architectures/a0/rows is missing"),
    Case("index past the rows table", export_cmd(edit_zoo(_set_index("arch_row", 99))),
         "points at row 99 of /architectures/a0/rows"),
    Case("rows past the tensor", export_cmd(edit_zoo(_set_item(
        "architectures/a0/rows", (0, 1), 50))), "points at row 50"),
    Case("rows past the tensor validated", zoo_file(edit_zoo(_set_item(
        "architectures/a0/rows", (0, 1), 50)), "zoo", "validate", "ZOO"), "points at row 50"),
    Case("negative row", export_cmd(edit_zoo(_set_item(
        "architectures/a0/rows", (0, 1), -4))), "points at row -4"),
    Case("index names architecture 7 of 1", export_cmd(edit_zoo(_set_index("architecture", 7))),
         "names architecture 7 of 1"),
    Case("index names member 9 of 2", zoo_file(edit_zoo(_set_index("member", 9)), "zoo", "ls",
                                               "ZOO"), "names member 9 of 2"),
    Case("index negative epoch", zoo_file(edit_zoo(_set_index("epoch", -1)), "zoo", "ls", "ZOO"),
         "holds a negative epoch"),
    Case("checkpoint committed twice", zoo_file(edit_zoo(_set_index("epoch", 1, row=0)), "zoo",
                                                "ls", "ZOO"), "commits a checkpoint twice"),
    Case("index without fields", zoo_file(edit_zoo(lambda f: _replace(
        f, "checkpoints/index", (4,), dtype="<i8", data=np.arange(4))), "zoo", "ls", "ZOO"),
         "/checkpoints/index lacks the fields"),
    Case("factors a json list", zoo_file(edit_zoo(_text_column(
        "members/factors", ["[1, 2]", "{}"])), "zoo", "ls", "ZOO"),
         "/members/factors holds JSON of the wrong type (list)"),
    Case("factors not json", zoo_file(edit_zoo(_text_column(
        "members/factors", ["{oops", "{}"])), "zoo", "ls", "ZOO"), "/members/factors holds '{oops'"),
    Case("lineage a number", zoo_file(edit_zoo(_text_column(
        "members/lineage", ["3", "null"])), "zoo", "ls", "ZOO"),
         "/members/lineage holds JSON of the wrong type (int)"),
    Case("factors not text", zoo_file(edit_zoo(lambda f: _replace(
        f, "members/factors", (2,), dtype="f8", data=np.zeros(2))), "zoo", "ls", "ZOO"),
         "/members/factors has the dtype float64"),
    Case("member ids repeated", zoo_file(edit_zoo(_text_column("members/id", ["m1", "m1"])),
                                         "zoo", "ls", "ZOO"), "repeats a member id"),
    Case("members of two lengths", zoo_file(edit_zoo(lambda f: _replace(
        f, "members/status", (3,), data=np.full(3, 2, np.int8))), "zoo", "ls", "ZOO"),
         "/members/status has 3 rows, /members/id 2"),
    Case("status out of range", zoo_file(edit_zoo(_set_item("members/status", (0,), 9)),
                                         "zoo", "ls", "ZOO"), "/members/status holds 9"),
    Case("member architecture out of range", zoo_file(edit_zoo(_set_item(
        "members/architecture", (1,), 5)), "zoo", "info", "ZOO"), "names architecture 5 of 1"),
    Case("architecture group misnamed", zoo_file(edit_zoo(lambda f: f.move(
        "architectures/a0", "architectures/ax")), "zoo", "ls", "ZOO"), "holds 'ax'"),
    Case("architecture is a dataset", zoo_file(edit_zoo(lambda f: (
        f.__delitem__("architectures/a0"), f.create_dataset("architectures/a0", data=[1]))),
        "zoo", "ls", "ZOO"), "/architectures/a0 is not a group"),
    Case("metrics is a group", zoo_file(edit_zoo(lambda f: (
        f.__delitem__("checkpoints/metrics"), f.create_group("checkpoints/metrics"))),
        "zoo", "ls", "ZOO"), "/checkpoints/metrics is not a dataset"),
    Case("rows of floats", export_cmd(edit_zoo(lambda f: _replace(
        f, "architectures/a0/rows", (2, 6), dtype="f8", data=np.zeros((2, 6))))),
         "/architectures/a0/rows has the dtype float64"),
    Case("digests too narrow", zoo_file(edit_zoo(lambda f: _replace(
        f, "architectures/a0/digests", (2, 3), data=np.zeros((2, 3), "S32"))), "zoo", "validate",
        "ZOO"), "/architectures/a0/digests has shape (2, 3)"),
    Case("model file of floats", zoo_file(edit_zoo(lambda f: _replace(
        f, "architectures/a0/files/config.json", (2,), dtype="f4", data=np.zeros(2))),
        "zoo", "validate", "ZOO"), "files/config.json is not a file"),
    Case("format version -1", zoo_file(edit_zoo(lambda f: _set(f, "zooscope_format", -1)),
                                       "zoo", "validate", "ZOO"), "zooscope_format is -1"),
    Case("format version text", zoo_file(edit_zoo(lambda f: _set(f, "zooscope_format", "1")),
                                         "zoo", "ls", "ZOO"), "zooscope_format is not an integer"),
    Case("attribute not utf-8", zoo_file(edit_zoo(_bad_utf8_attr), "zoo", "info", "ZOO"),
         "the attribute /:name is not UTF-8 text"),
    Case("attribute bytes not utf-8", zoo_file(edit_zoo(lambda f: _set(
        f, "generator", np.bytes_(b"\xff\xfe"))), "zoo", "info", "ZOO"),
         "the attribute /:generator is not UTF-8 text"),
    Case("versions a json list", zoo_file(edit_zoo(lambda f: _set(f, "versions", "[1]")), "zoo",
                                          "info", "ZOO"), "/:versions holds JSON of the wrong type"),
    Case("unknown storage dtype attr", zoo_file(edit_zoo(lambda f: _set(
        f, "storage_dtype", "float8")), "zoo", "ls", "ZOO"), "unknown storage_dtype 'float8'"),
    Case("unknown compression attr", zoo_file(edit_zoo(lambda f: _set(
        f, "compression", "rar")), "zoo", "ls", "ZOO"), "unknown compression 'rar'"),
    Case("unknown stored_as", zoo_file(edit_zoo(lambda f: _set(
        f["architectures/a0/tensors/layer.weight"], "stored_as", "float8")), "zoo", "validate",
        "ZOO"), "is stored_as 'float8'"),
    Case("unknown stored_as exported", export_cmd(edit_zoo(lambda f: _set(
        f["architectures/a0/tensors/layer.weight"], "stored_as", "float8"))),
         "is stored_as 'float8'"),
    Case("stored_as not its dtype", export_cmd(edit_zoo(lambda f: _set(
        f["architectures/a0/tensors/layer.weight"], "stored_as", "bfloat16"))),
         "is stored_as bfloat16 but holds float32"),
    Case("float tensor without stored_as", export_cmd(edit_zoo(lambda f: f[
        "architectures/a0/tensors/layer.bias"].attrs.__delitem__("stored_as"))),
         "a floating tensor without a stored_as attribute"),
    Case("metric columns not a list", zoo_file(edit_zoo(lambda f: _set(
        f["checkpoints/metrics"], "columns", '{"a": 1}')), "zoo", "ls", "ZOO"),
         "holds JSON of the wrong type (dict)"),
    Case("predictions too few rows", zoo_file(edit_zoo(lambda f: f[
        "checkpoints/predictions"].resize(2, axis=0)), "zoo", "validate", "ZOO"),
         "/checkpoints/predictions has 2 rows, 4 expected"),
    Case("predictions too many columns", zoo_file(edit_zoo(lambda f: _replace(
        f, "checkpoints/predictions", (4, 9), data=np.zeros((4, 9), np.int32))), "zoo",
        "validate", "ZOO"), "/checkpoints/predictions has shape (4, 9), rows of (7,) expected"),
    Case("predictions of floats", zoo_file(edit_zoo(lambda f: _replace(
        f, "checkpoints/predictions", (4, 7), dtype="f4", data=np.zeros((4, 7)))), "zoo",
        "validate", "ZOO"), "/checkpoints/predictions has the dtype float32"),
    Case("unknown prediction kind", zoo_file(edit_zoo(lambda f: _set(
        f["checkpoints/predictions"], "kind", "regression")), "zoo", "validate", "ZOO"),
         "kind is 'regression', not class or span"),
    Case("spans without pairs", zoo_file(edit_zoo(lambda f: _set(
        f["checkpoints/predictions"], "kind", "span")), "zoo", "validate", "ZOO"),
         "/checkpoints/predictions has shape (4, 7), expected 3 dimension(s)"),
    Case("test labels of the wrong length", zoo_file(edit_zoo(lambda f: _replace(
        f, "data/test_labels", (5,), data=np.zeros(5, np.int64))), "zoo", "validate", "ZOO"),
         "rows of (5,) expected"),
    Case("test ids of the wrong length", zoo_file(edit_zoo(lambda f: f.create_dataset(
        "data/test_ids", data=np.array(["a", "b"], dtype=object), dtype=h5py.string_dtype())),
        "zoo", "validate", "ZOO"), "/data/test_ids has 2 rows, the test split 7"),
    Case("test labels of text", zoo_file(edit_zoo(lambda f: _replace(
        f, "data/test_labels", (7,), dtype=h5py.string_dtype(),
        data=np.array(["x"] * 7, dtype=object))), "zoo", "validate", "ZOO"),
         "/data/test_labels has the dtype object"),
    Case("factor column of the wrong length", zoo_file(edit_zoo(lambda f: _replace(
        f, "members/table/seed", (5,), data=np.zeros(5, np.int64))), "zoo", "validate", "ZOO"),
         "/members/table/seed is not a column of 2 values"),
    Case("analysis column missing", zoo_file(edit_zoo(lambda f: (_analysis(3)(f), _set(
        f["analyses/agreement/k0/tables/pairs"], "columns", json.dumps(["x", "y"])))),
        "zoo", "validate", "ZOO"), "/analyses/agreement/k0/tables/pairs/y is missing"),
    Case("figure of floats", zoo_file(edit_zoo(lambda f: (_analysis(3)(f), f.create_dataset(
        "analyses/agreement/k0/figures/plot.png", data=np.zeros(4)))), "zoo", "validate", "ZOO"),
         "figures/plot.png has the dtype float64"),
    Case("tensor is a group", export_cmd(edit_zoo(lambda f: (
        f.__delitem__("architectures/a0/tensors/layer.bias"),
        f.create_group("architectures/a0/tensors/layer.bias")))),
         "/architectures/a0/tensors/layer.bias is not a dataset"),
    Case("negative tensor dimension", zoo_file(edit_zoo(lambda f: _set(
        f["architectures/a0"], "shapes", json.dumps({
            **json.loads(f["architectures/a0"].attrs["shapes"]), "layer.bias": [-16]}))),
        "zoo", "ls", "ZOO"), "tensor 'layer.bias' has a malformed shape [-16]"),
    Case("tensor names not a list", zoo_file(edit_zoo(lambda f: _set(
        f["architectures/a0"], "tensor_names", '"layer.bias"')), "zoo", "ls", "ZOO"),
         "has a malformed tensor layout"),
    Case("metrics fewer than checkpoints", zoo_file(edit_zoo(lambda f: f[
        "checkpoints/metrics"].resize(3, axis=0)), "zoo", "ls", "ZOO"),
         "fewer metric rows than checkpoints"),
    Case("data is a dataset", zoo_file(edit_zoo(lambda f: (
        f.__delitem__("data"), f.create_dataset("data", data=[1]))), "zoo", "validate", "ZOO"),
         "/data is not a group"),
    Case("digests deleted", zoo_file(edit_zoo(lambda f: f.__delitem__(
        "architectures/a0/digests")), "zoo", "validate", "ZOO"),
         "/architectures/a0/digests is missing"),
    Case("model files deleted", zoo_file(edit_zoo(lambda f: f.__delitem__(
        "architectures/a0/files")), "zoo", "validate", "ZOO"), "/architectures/a0/files is missing"),
    Case("analysis is a dataset", zoo_file(edit_zoo(lambda f: f.create_dataset(
        "analyses/agreement", data=[1])), "zoo", "info", "ZOO"),
         "/analyses/agreement is not a group"),
]
CASES += PATH_CASES + CONFIG_VALUE_CASES + SIZE_CASES + DAMAGED_CASES


def _tiny_safetensors() -> bytes:
    header = json.dumps({"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    return len(header).to_bytes(8, "little") + header + bytes(4)


def _edit_file(path: Path, edit: Callable[[h5py.File], None]) -> None:
    with h5py.File(path, "r+") as f:
        edit(f)



def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.is_symlink()} | {
        f"{p} -> link": os.readlink(p) for p in sorted(folder.rglob("*")) if p.is_symlink()}


#: Address-space limit for the size cases (ulimit -v 3 GB).
MEMORY_LIMIT = 3 * 2**30
#: Each case's stderr, for the check that the unexpected-error fallback never fires.
_STDERR: dict[str, str] = {}
FALLBACK = "this is a bug"


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def run_case(case: Case, parent: Path) -> tuple[int, str, str]:
    """Set the case up in a child folder of ``parent`` and run it there; returns exit code,
    stdout and stderr, after checking that nothing in ``parent`` changed."""
    folder = parent / "work"
    folder.mkdir()
    args = case.setup(folder)
    before = _snapshot(parent)
    if case.size:
        proc = subprocess.run([sys.executable, "-m", "zooscope", *args], capture_output=True,
                              text=True, cwd=folder, env={**cli_env(), "COLUMNS": "200"},
                              preexec_fn=_limit_memory, timeout=300)
        code, out, err = proc.returncode, proc.stdout, proc.stderr
    else:
        cwd = Path.cwd()
        os.chdir(folder)
        try:
            result = runner.invoke(app, args)
        finally:
            os.chdir(cwd)
        code, out, err = result.exit_code, result.stdout, result.stderr
        assert result.exception is None or isinstance(result.exception, SystemExit), \
            repr(result.exception)
    _STDERR[case.name] = err
    # Nothing that existed changed, nothing was added, here or beside the folder.
    assert _snapshot(parent) == before, (err, sorted(set(_snapshot(parent)) ^ set(before)))
    return code, out, err


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case: Case, tmp_path: Path) -> None:
    code, out, err = run_case(case, tmp_path)
    assert code == case.code, (out, err)
    assert "Traceback" not in err + out
    assert FALLBACK not in err
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")] if case.code == 1 \
        else [err]
    assert len(errors) == 1, err
    # `zoo validate` lists its findings on `bad:` lines, wrapped to the terminal's width.
    assert case.message in errors[0] or case.message in " ".join(err.split()), err


def test_corpus_is_large_enough() -> None:
    assert len(CASES) >= 120
    names = [c.name for c in CASES]
    assert len(set(names)) == len(names)
    assert sum(c.size for c in CASES) >= 8


def test_unexpected_error_fallback_never_fires(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Across the whole corpus (cases not yet run in this session are run here)."""
    for case in CASES:
        if case.name not in _STDERR:
            run_case(case, tmp_path_factory.mktemp("case"))
    fired = [name for name in (c.name for c in CASES) if FALLBACK in _STDERR[name]]
    assert fired == []


def test_bad_data_never_touches_an_existing_zoo(tmp_path: Path) -> None:
    zoo = tmp_path / "keep.h5"
    good_zoo(zoo)
    before = zoo.read_bytes()
    text = TINY_CONFIG.replace('source = "synthetic:sentiment:400"', 'source = "./empty.tsv"')
    (tmp_path / "empty.tsv").write_text("label\tsentence\n")
    (tmp_path / "zoo.toml").write_text(text)
    result = runner.invoke(app, ["generate", str(tmp_path / "zoo.toml"), "--out", str(zoo),
                                 "--force"])
    assert result.exit_code == 1 and "holds no rows" in result.stderr
    assert zoo.read_bytes() == before


def test_resume_allows_only_run_settings_to_change(tmp_path: Path) -> None:
    from zooscope.config import parse_config
    from zooscope.engine.resume import check_resumable
    from zooscope.errors import ZooFileError

    zoo = tmp_path / "out.h5"
    stored_config_zoo(TINY_CONFIG)(zoo)
    before = zoo.read_bytes()
    run_only = config(**{"num_threads = 1": 'num_threads = 2\ndevice = "cpu"'}).replace(
        "epochs = 2\n", "epochs = 2\ndescription = \"again\"\nmax_members = 50\n")
    check_resumable(parse_config(run_only), zoo)  # accepted
    changed = config(**{"num_threads = 1": "num_threads = 2\ndropout = 0.2"}).replace(
        "[3e-4, 1e-3]", "[3e-4, 2e-3]")
    with pytest.raises(ZooFileError) as info:
        check_resumable(parse_config(changed), zoo)
    assert str(info.value).endswith("[grid] learning_rate [0.0003, 0.001] → [0.0003, 0.002]; "
                                    "[train] dropout 0.1 → 0.2")
    assert zoo.read_bytes() == before


def test_max_members_allows_a_large_grid_and_its_dry_run_shows_a_part(tmp_path: Path) -> None:
    grid = "".join(f"f{k} = {list(range(10))}\n" for k in range(3))  # 1000 × 2 × 2 seeds
    text = TINY_CONFIG.replace("learning_rate = [3e-4, 1e-3]\n",
                               "learning_rate = [3e-4, 1e-3]\n" + grid)
    path = tmp_path / "big.toml"
    path.write_text(text.replace("epochs = 2\n", "epochs = 2\nmax_members = 1999\n"))
    refused = runner.invoke(app, ["generate", str(path), "--dry-run"])
    assert refused.exit_code == 1
    assert "the grid has 4,000 members, more than [zoo] max_members = 1,999" in refused.stderr
    path.write_text(text.replace("epochs = 2\n", "epochs = 2\nmax_members = 4000\n"))
    shown = runner.invoke(app, ["generate", str(path), "--dry-run"], env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.stderr
    assert "zoo 'tiny': 4000 members" in shown.stdout
    assert "... and 3,800 more members (--json lists all)" in shown.stdout
    assert "12000 checkpoints (epoch 0 included)" in shown.stdout
    listed = runner.invoke(app, ["generate", str(path), "--dry-run", "--json"])
    members = json.loads(listed.stdout)["members"]
    assert len(members) == 4000 and len({m["id"] for m in members}) == 4000
    assert {(m["f0"], m["f2"], m["seed"]) for m in members} == {
        (a, b, s) for a in range(10) for b in range(10) for s in (0, 1)}
    assert not list(tmp_path.glob("*.h5"))


def test_reading_within_the_memory_limit_refuses_what_would_not_fit(tmp_path: Path) -> None:
    """The same zoo opens under 3 GB; only the declared size decides."""
    zoo = tmp_path / "zoo.h5"
    good_zoo(zoo)
    proc = subprocess.run([sys.executable, "-m", "zooscope", "zoo", "ls", str(zoo), "--json"],
                          capture_output=True, text=True, env=cli_env(),
                          preexec_fn=_limit_memory, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads(proc.stdout)) == 2


def test_a_start_that_fails_before_any_checkpoint_leaves_no_file(register_plugin,  # type: ignore[no-untyped-def]
                                                                 tmp_path: Path) -> None:
    import zooscope
    from zooscope.errors import DataError
    from zooscope.generators.text_classification import TextClassificationGenerator

    class FailsAt(TextClassificationGenerator):
        """Fails in a member's first evaluation (``epoch`` 0: before anything is committed)."""

        def __init__(self, name: str, epoch: int) -> None:
            super().__init__(name, "fails on purpose", default_source="synthetic:sentiment:200")
            self.fail_epoch, self.calls = epoch, 0

        def evaluate(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            self.calls += 1
            if self.calls > self.fail_epoch:
                raise DataError(f"evaluation {self.calls} failed")
            return super().evaluate(*args, **kwargs)

    class Plugin:
        @zooscope.hookimpl
        def zooscope_register_generators(self, register):  # type: ignore[no-untyped-def]
            register(FailsAt("fails-first", 0))
            register(FailsAt("fails-later", 1))

    register_plugin(Plugin(), "failing-generators")
    base = TINY_CONFIG.replace('source = "synthetic:sentiment:400"\n', "").replace(
        "seeds = [0, 1]", "seeds = [0]").replace("[3e-4, 1e-3]", "[1e-3]")
    for name, kept, suffix in (("fails-first", False, ".h5"), ("fails-later", True, ".h5"),
                               ("fails-first", False, ".zoo"), ("fails-later", True, ".zoo")):
        folder = tmp_path / (name + suffix)
        folder.mkdir()
        (folder / "zoo.toml").write_text(base.replace('"sst2"', f'"{name}"'))
        out = folder / f"out{suffix}"
        result = runner.invoke(app, ["generate", str(folder / "zoo.toml"), "--out", str(out)])
        assert result.exit_code == 1
        assert [ln for ln in result.stderr.splitlines() if ln.startswith("error:")] == [
            f"error: evaluation {1 if name == 'fails-first' else 2} failed"]
        left = sorted(p.name for p in folder.iterdir())
        if kept:  # epoch 0 is committed: the zoo stays, to resume
            assert left == (["out.h5", "out.h5.lock", "out.h5.state", "zoo.toml"]
                            if suffix == ".h5" else ["out.zoo", "zoo.toml"])
            with zooscope.open_zoo(out) as zoo:
                assert [c.epoch for c in zoo.checkpoints()] == [0]
        else:  # a folder of parts goes too, with its index and locks
            assert left == ["zoo.toml"]
