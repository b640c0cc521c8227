"""zooscope from Python: DataFrames of metrics and members, and analyses in memory."""

from __future__ import annotations

import csv
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

import zooscope
from zooscope.errors import ConfigError

from .conftest import ROOT, run_cli


def api_example() -> str:
    text = (ROOT / "docs" / "api.md").read_text()
    return re.search(r"```python\n(.*?)```", text, re.S).group(1)


def test_the_documented_example_runs(tiny_zoo: Path, tmp_path: Path) -> None:
    zoo_path = tmp_path / "tiny.h5"
    shutil.copy(tiny_zoo, zoo_path)
    names: dict[str, object] = {"ZOO": zoo_path, "OUT": tmp_path / "out"}
    exec(compile(api_example(), "docs/api.md", "exec"), names)
    result = names["result"]
    assert sorted(p.name for p in names["written"]) == sorted(
        [f"{t}.csv" for t in result.tables] + [f"{f}.png" for f in result.figures])
    assert "agreement_heatmap" in result.figures
    # Nothing was written beside the zoo: analyze() stores no result.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "tiny.h5"]
    final = names["final"]
    with zooscope.open_zoo(zoo_path) as zoo:
        last = max(c.epoch for c in zoo.checkpoints())
        expect = sorted(c.metrics["test_accuracy"] for c in zoo.checkpoints() if c.epoch == last)
    assert sorted(final.value.tolist()) == pytest.approx(expect)


def test_metrics_frame_holds_every_value_in_long_format(tiny_zoo: Path) -> None:
    with zooscope.open_zoo(tiny_zoo) as zoo:
        frame = zoo.metrics()
        checkpoints = zoo.checkpoints()
        members = {m.id: m for m in zoo.members()}
    assert len(frame) == sum(len(c.metrics) for c in checkpoints)
    assert {"member", "learning_rate", "seed", "epoch", "step", "split", "metric",
            "value"} <= set(frame.columns)
    assert set(frame.split) == {"train", "validation", "test"}
    for c in checkpoints:
        for name, value in c.metrics.items():
            split, _, metric = name.partition("_")
            row = frame[(frame.member == c.member) & (frame.epoch == c.epoch)
                        & (frame.split == split) & (frame.metric == metric)]
            assert len(row) == 1
            assert row.value.item() == pytest.approx(value)
            assert row.learning_rate.item() == members[c.member].factors["learning_rate"]


def test_members_frame(tiny_zoo: Path) -> None:
    with zooscope.open_zoo(tiny_zoo) as zoo:
        frame = zoo.members_frame()
        members = zoo.members()
    assert frame.member.tolist() == [m.id for m in members]
    assert frame.seed.tolist() == [m.factors["seed"] for m in members]
    assert set(frame.status) == {"complete"}
    assert set(frame.epochs) == {2}
    assert frame.parent.isna().all()


def test_analyze_equals_the_command_line(tiny_zoo: Path, tmp_path: Path) -> None:
    """The same analysis through the CLI (stored, written as CSV) and through Python."""
    zoo_path = tmp_path / "tiny.h5"
    shutil.copy(tiny_zoo, zoo_path)
    out = tmp_path / "cli"
    done = run_cli("analyze", str(zoo_path), "--plugin", "weightstats", "--members", "seed=1",
                   "--epochs", "0,2", "--set", "percentiles=false", "--out", str(out))
    assert done.returncode == 0, done.stderr
    result = zooscope.analyze(zoo_path, "weightstats", members="seed=1", epochs=[0, 2],
                              percentiles=False)
    assert result.options["percentiles"] is False
    with open(out / "stats.csv") as fh:
        rows = list(csv.DictReader(fh))
    frame = result.tables["stats"]
    assert len(frame) == len(rows)
    assert frame.tensor.tolist() == [r["tensor"] for r in rows]
    np.testing.assert_allclose(frame.l2.to_numpy(), [float(r["l2"]) for r in rows], rtol=1e-6)
    assert "p50" not in frame.columns
    html = result._repr_html_()
    assert "<table" in html and "weightstats" in html


def test_analyze_reports_bad_options_and_selections(tiny_zoo: Path) -> None:
    with pytest.raises(ConfigError, match="has no option 'bootstrp'") as exc:
        zooscope.analyze(tiny_zoo, "agreement", bootstrp=10)
    assert exc.value.hint == "did you mean 'bootstrap'?"
    assert exc.value.__notes__ == ["hint: did you mean 'bootstrap'?"]  # shown in a traceback
    with pytest.raises(ConfigError, match="the zoo has no factor 'lr'") as exc:
        zooscope.analyze(tiny_zoo, "agreement", members={"lr": 1e-3})
    assert exc.value.hint == "did you mean 'learning_rate'?"
    with pytest.raises(ConfigError, match="the zoo has no factor 'sed'"):
        zooscope.analyze(tiny_zoo, "agreement", members="sed=0")
    with pytest.raises(ConfigError, match="option bootstrap takes int"):
        zooscope.analyze(tiny_zoo, "agreement", bootstrap="many")
    with pytest.raises(ConfigError, match="selects no member"):
        zooscope.analyze(tiny_zoo, "agreement", members={"seed": 7})
    with pytest.raises(ConfigError, match="no member 'mnothere'"):
        zooscope.analyze(tiny_zoo, "agreement", members=["mnothere"])


def test_an_analysis_that_reads_another_runs_from_python(tiny_zoo: Path,
                                                         tmp_path: Path) -> None:
    """predict reads weightstats: from Python, a result computed in the same process
    feeds it, with nothing stored, and it equals the command line's stored route."""
    zoo_path = tmp_path / "tiny.h5"
    shutil.copy(tiny_zoo, zoo_path)
    with pytest.raises(zooscope.ZooscopeError, match="predict needs the weightstats result") as e:
        zooscope.analyze(zoo_path, "predict")
    assert 'inputs={"weightstats": zooscope.analyze(zoo, "weightstats")}' in e.value.hint
    stats = zooscope.analyze(zoo_path, "weightstats")
    result = zooscope.analyze(zoo_path, "predict", inputs={"weightstats": stats})
    assert not (tmp_path / "tiny_analysis").exists()  # nothing was written
    for args in (["--plugin", "weightstats"], ["--plugin", "predict", "--out",
                                                str(tmp_path / "cli")]):
        done = run_cli("analyze", str(zoo_path), *args)
        assert done.returncode == 0, done.stderr
    for name, frame in result.tables.items():
        with open(tmp_path / "cli" / f"{name}.csv") as fh:
            rows = list(csv.DictReader(fh))
        assert len(frame) == len(rows) > 0
        for column in frame.columns:
            got = [str(v) for v in frame[column]]
            if frame[column].dtype.kind == "f":
                np.testing.assert_allclose(frame[column].to_numpy(),
                                           [float(r[column]) for r in rows], rtol=1e-9)
            else:
                assert got == [r[column] for r in rows], column
    with pytest.raises(zooscope.ConfigError, match="agreement reads no result of weightstats"):
        zooscope.analyze(zoo_path, "agreement", inputs={"weightstats": stats})
