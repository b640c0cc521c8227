"""README.md and docs/ keep up with what is installed and shipped: every generator,
analyzer and ready config is named where a new user looks."""

from __future__ import annotations

import json

from .conftest import ROOT, run_cli


def _registered() -> dict[str, set[str]]:
    result = run_cli("plugins", "--all", "--json")
    assert result.returncode == 0, result.stderr
    names: dict[str, set[str]] = {"generator": set(), "analyzer": set()}
    for row in json.loads(result.stdout):
        for kind, provided in row["provides"].items():
            names.setdefault(kind, set()).update(provided)
    return names


def test_readme_and_tour_name_every_generator_and_analyzer() -> None:
    names = _registered()
    assert names["generator"] and names["analyzer"]
    for doc in ("README.md", "docs/index.md"):
        text = (ROOT / doc).read_text()
        for kind in ("generator", "analyzer"):
            missing = sorted(n for n in names[kind] if f"`{n}`" not in text)
            assert not missing, f"{doc} does not name the {kind}s {missing}"


def test_readme_names_every_ready_config() -> None:
    text = (ROOT / "README.md").read_text()
    configs = sorted(p.name for p in (ROOT / "zoos").glob("*.toml"))
    assert len(configs) >= 10
    missing = [c for c in configs if f"`{c}`" not in text]
    assert not missing, f"README.md does not name {missing}"


def test_readme_says_how_to_reach_the_installed_command() -> None:
    text = (ROOT / "README.md").read_text()
    assert "source .venv/bin/activate" in text and ".venv/bin/zooscope" in text
    # The measured demo time, not a guess.
    assert "a few minutes" not in text


def test_example_plugin_readme_names_what_zooscope_plugins_shows() -> None:
    text = (ROOT / "examples" / "zooscope-final-metric" / "README.md").read_text()
    pyproject = (ROOT / "examples" / "zooscope-final-metric" / "pyproject.toml").read_text()
    assert 'name = "zooscope-final-metric"' in pyproject and "final_metric = " in pyproject
    assert "package zooscope-final-metric, name final_metric" in text
