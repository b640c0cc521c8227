"""A corpus of bad inputs: each gets one `error:` line, exit 1 (2 for usage), no traceback,
and no file that existed before is changed."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from zooscope.cli import app

from .conftest import TINY_CONFIG
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
      ]],
]


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case: Case, tmp_path: Path) -> None:
    args = case.setup(tmp_path)
    before = _snapshot(tmp_path)
    result = runner.invoke(app, args)
    assert result.exit_code == case.code, (result.stdout, result.stderr, result.exception)
    assert "Traceback" not in result.stderr + result.stdout
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")] if case.code == 1 \
        else [result.stderr]
    assert len(errors) == 1, result.stderr
    assert case.message in errors[0] or case.message in result.stderr, result.stderr
    assert _snapshot(tmp_path) == before  # nothing that existed changed, nothing was added


def test_corpus_is_large_enough() -> None:
    assert len(CASES) >= 30


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
