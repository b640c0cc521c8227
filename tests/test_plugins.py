"""The plugin core: built-ins, registration, clashes, entry points and the allow-list."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import zooscope
from zooscope import registry
from zooscope.analysis import AnalysisResult, Analyzer
from zooscope.errors import PluginError

from .conftest import ROOT, run_cli

EXAMPLE = ROOT / "examples" / "zooscope-final-metric"


class ToyAnalyzer(Analyzer):
    name = "toy"

    def analyze(self, zoo, options, selection):  # type: ignore[no-untyped-def]
        return AnalysisResult(tables={"t": {"n": [len(selection.members)]}}, summary="toy")


class ToyPlugin:
    __name__ = "toy-plugin"

    @zooscope.hookimpl
    def zooscope_register_analyzers(self, register):  # type: ignore[no-untyped-def]
        register(ToyAnalyzer())


def test_builtins_are_listed_with_kind_version_and_hooks() -> None:
    rows = {r["name"]: r for r in registry.plugin_table(include_builtins=True)}
    assert rows["zooscope.stores.hdf5"]["kind"] == "store"
    assert rows["zooscope.stores.hdf5"]["provides"] == {"store": ["hdf5", "hdf5-parts"]}
    assert rows["zooscope.generators.text_classification"]["provides"]["generator"] == [
        "sst2", "text-classification", "boolq"]
    assert rows["zooscope.generators.squad"]["provides"] == {"generator": ["squad"]}
    assert rows["zooscope.generators.mlm"]["provides"] == {"generator": ["mlm"]}
    assert rows["zooscope.plugins.agreement"]["hooks"] == ["zooscope_register_analyzers"]
    assert all(r["version"] == zooscope.__version__ for r in rows.values() if r["builtin"])
    # Without --all, built-ins are hidden.
    assert not [r for r in registry.plugin_table() if r["builtin"]]


def test_registered_plugin_appears_and_goes(register_plugin) -> None:  # type: ignore[no-untyped-def]
    register_plugin(ToyPlugin(), "toy-plugin")
    assert isinstance(registry.get_analyzer("toy"), ToyAnalyzer)
    rows = {r["name"]: r for r in registry.plugin_table()}
    assert rows["toy-plugin"]["provides"] == {"analyzer": ["toy"]}
    registry.pm.unregister(name="toy-plugin")
    with pytest.raises(PluginError, match="unknown analyzer 'toy'"):
        registry.get_analyzer("toy")
    registry.pm.register(ToyPlugin(), name="toy-plugin")  # the fixture unregisters it


def test_name_clash_names_both_plugins(register_plugin) -> None:  # type: ignore[no-untyped-def]
    class Clash:
        @zooscope.hookimpl
        def zooscope_register_analyzers(self, register):  # type: ignore[no-untyped-def]
            agreement = ToyAnalyzer()
            agreement.name = "agreement"
            register(agreement)

    register_plugin(Clash(), "clashing-plugin")
    with pytest.raises(PluginError) as info:
        registry.analyzers()
    text = str(info.value)
    assert "two plugins register the analyzer 'agreement'" in text
    assert "'zooscope.plugins.agreement'" in text and "'clashing-plugin'" in text


def test_unknown_plugin_suggests_the_closest() -> None:
    with pytest.raises(PluginError) as info:
        registry.get_analyzer("agreemnt")
    assert info.value.hint == "did you mean 'agreement'?"


def test_plugins_lists_the_keys_a_generator_declares() -> None:
    run = run_cli("plugins", "--keys", "squad", "--json")
    assert run.returncode == 0, run.stderr
    declared = registry.get_generator("squad").config_keys["data"]["stride"]
    assert json.loads(run.stdout) == [{"key": "[data] stride", "type": "an integer",
                                       "default": 128, "help": declared.help}]
    keys = json.loads(run_cli("plugins", "--keys", "sst2", "--json").stdout)
    assert [k["key"] for k in keys] == ["[data] text_column", "[data] label_column",
                                        "[data] text_pair_column", "[data] train_examples",
                                        "[train] t5"]
    wrong = run_cli("plugins", "--keys", "sqaud")
    assert wrong.returncode == 1
    assert wrong.stderr.splitlines() == ["error: unknown generator 'sqaud'",
                                         "hint: did you mean 'squad'?"]


@pytest.fixture(scope="module")
def example_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example plugin package, pip-installed into its own target folder."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                    "--no-build-isolation", "--target", str(target), str(EXAMPLE)],
                   check=True, capture_output=True)
    return target


def test_out_of_tree_plugin_is_discovered_through_its_entry_point(example_site: Path) -> None:
    env = {"PYTHONPATH": str(example_site)}
    result = run_cli("plugins", "--json", env=env)
    assert result.returncode == 0, result.stderr
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert rows["final_metric"]["version"] == "0.2.0"
    assert rows["final_metric"]["provides"] == {"analyzer": ["final-metric"]}
    assert rows["final_metric"]["builtin"] is False
    # The package name, which ZOOSCOPE_LOAD_PLUGINS takes, shown beside the entry point.
    assert rows["final_metric"]["distribution"] == "zooscope-final-metric"
    table = run_cli("plugins", env={**env, "COLUMNS": "80"})
    assert table.returncode == 0 and table.stderr == ""
    line = next(ln for ln in table.stdout.splitlines() if "final_metric" in ln)
    assert "zooscope-final-metric" in line and "analyzer final-metric" in line


def test_allow_list_controls_entry_point_plugins(example_site: Path) -> None:
    none = run_cli("plugins", "--json", env={"PYTHONPATH": str(example_site),
                                             "ZOOSCOPE_LOAD_PLUGINS": ""})
    assert json.loads(none.stdout) == []
    allowed = run_cli("plugins", "--json", env={"PYTHONPATH": str(example_site),
                                                "ZOOSCOPE_LOAD_PLUGINS": "zooscope-final-metric"})
    assert [r["name"] for r in json.loads(allowed.stdout)] == ["final_metric"]
    assert allowed.stderr == ""
    # pip's spelling rules: case, '_' and '.' are the same as '-'.
    same = run_cli("plugins", "--json", env={"PYTHONPATH": str(example_site),
                                             "ZOOSCOPE_LOAD_PLUGINS": "Zooscope_Final.Metric"})
    assert [r["name"] for r in json.loads(same.stdout)] == ["final_metric"]
    typo = run_cli("plugins", "--json", env={"PYTHONPATH": str(example_site),
                                             "ZOOSCOPE_LOAD_PLUGINS": "zooscope-final-metrc"})
    assert json.loads(typo.stdout) == []
    assert typo.stderr.splitlines() == [
        "warning: ZOOSCOPE_LOAD_PLUGINS names 'zooscope-final-metrc', which no installed "
        "plugin package provides (installed: zooscope-final-metric)"]


def test_example_analyzer_runs_on_a_zoo(example_site: Path, zoo_copy: Path,
                                        tmp_path: Path) -> None:
    from zooscope.access import open_zoo

    out = tmp_path / "final"
    result = run_cli("analyze", str(zoo_copy), "--plugin", "final-metric", "--out", str(out),
                     "--json", env={"PYTHONPATH": str(example_site)})
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    with open_zoo(zoo_copy) as zoo:
        expected = {m.id: zoo.checkpoints(m)[-1].metrics["test_accuracy"] for m in zoo.members()}
    got = dict(zip(data["tables"]["final"]["member"], data["tables"]["final"]["test_accuracy"],
                   strict=True))
    assert got == pytest.approx(expected)
    assert (out / "final.csv").exists() and (out / "final.png").read_bytes()[:4] == b"\x89PNG"


def test_hooks_are_called_through_pluggy_so_wrappers_apply(
        register_plugin) -> None:  # type: ignore[no-untyped-def]
    """A plugin's hook wrapper runs around the registration hook, the manager's call
    monitoring sees the call, and a failing observer is named even when it fails in a
    helper of its own."""
    import zooscope
    from zooscope import registry
    from zooscope.errors import PluginError

    calls: list[str] = []

    class Watcher:
        @zooscope.hookimpl(wrapper=True)
        def zooscope_register_analyzers(self, register):  # type: ignore[no-untyped-def]
            calls.append("before")
            result = yield
            calls.append("after")
            return result

        @zooscope.hookimpl(tryfirst=True)
        def zooscope_member_finished(self, zoo, member):  # type: ignore[no-untyped-def]
            def helper() -> None:
                raise RuntimeError("observer broke")
            helper()

    register_plugin(Watcher(), "watcher")
    monitored: list[str] = []
    undo = registry.pm.add_hookcall_monitoring(
        lambda name, impls, kwargs: monitored.append(name),
        lambda outcome, name, impls, kwargs: None)
    try:
        assert "agreement" in registry.analyzers()
    finally:
        undo()
    assert calls == ["before", "after"]
    assert monitored == ["zooscope_register_analyzers"]
    with pytest.raises(PluginError, match="plugin 'watcher' failed in zooscope_member_finished: "
                                          "RuntimeError: observer broke"):
        registry.notify("zooscope_member_finished", zoo="z.h5", member=None)
