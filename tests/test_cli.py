"""The CLI boundary: help, version, exit codes and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

import zooscope
from zooscope.cli import app

from .conftest import run_cli

runner = CliRunner()


def test_version_and_help() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.strip() == f"zooscope {zooscope.__version__}"
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("generate", "analyze", "plugins", "zoo"):
        assert command in result.stdout


def test_help_texts_carry_an_example() -> None:
    for args in (["generate", "--help"], ["analyze", "--help"], ["plugins", "--help"],
                 ["zoo", "ls", "--help"], ["zoo", "validate", "--help"],
                 ["zoo", "export", "--help"], ["zoo", "merge", "--help"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0
        assert "Example: zooscope" in result.stdout, args


def test_plugins_json_lists_builtins_with_all() -> None:
    result = runner.invoke(app, ["plugins", "--all", "--json"])
    assert result.exit_code == 0
    kinds = {r["name"]: r["kind"] for r in json.loads(result.stdout)}
    assert kinds["zooscope.plugins.agreement"] == "analyzer"
    assert kinds["zooscope.generators.text_classification"] == "generator"
    assert kinds["zooscope.stores.hdf5"] == "store"


def test_unknown_analyzer_is_one_error_line_with_a_hint(tiny_zoo: Path) -> None:
    result = runner.invoke(app, ["analyze", str(tiny_zoo), "--plugin", "agreemnt"])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert lines == ["error: unknown analyzer 'agreemnt'", "hint: did you mean 'agreement'?"]


def test_missing_zoo_file(tmp_path: Path) -> None:
    result = runner.invoke(app, ["zoo", "ls", str(tmp_path / "nope.h5")])
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: no zoo file at {tmp_path / 'nope.h5'}")


def test_usage_errors_exit_2(tiny_config: Path) -> None:
    result = runner.invoke(app, ["generate", str(tiny_config), "--shard", "3"])
    assert result.exit_code == 2
    assert "'3' is not I/N" in result.stderr
    result = runner.invoke(app, ["generate", str(tiny_config), "--shard", "4/4"])
    assert result.exit_code == 2
    result = runner.invoke(app, ["zoo", "frobnicate"])
    assert result.exit_code == 2


def test_no_traceback_without_debug_and_one_with_it(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[zoo\nname = 1")
    quiet = run_cli("generate", str(bad))
    assert quiet.returncode == 1
    assert quiet.stderr.startswith("error: the config")
    assert "Traceback" not in quiet.stderr
    loud = run_cli("generate", str(bad), env={"ZOOSCOPE_DEBUG": "1"})
    assert loud.returncode == 1
    assert "Traceback" in loud.stderr and "ConfigError" in loud.stderr
