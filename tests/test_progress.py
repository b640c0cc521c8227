"""What a person watching a run sees: progress lines in logs, bars in a terminal, and how a
run that stopped (Ctrl-C, a full disk) is recorded and reported."""

from __future__ import annotations

import io
import os
import re
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rich.console import Console
from typer.testing import CliRunner

import zooscope
from zooscope import progress
from zooscope.cli import app
from zooscope.config import load_config
from zooscope.engine import Interrupted, build_zoo

from .conftest import TINY_CONFIG, run_cli, write_config

runner = CliRunner()

ONE_LR = TINY_CONFIG.replace("learning_rate = [3e-4, 1e-3]", "learning_rate = [1e-3]")
LINE = re.compile(r"^member (\d)/(\d) (m[0-9a-f]{11}) epoch (\d)/2 validation_loss=\S+ "
                  r"validation_accuracy=\S+ elapsed \d+:\d\d:\d\d zoo ETA (\d+:\d\d:\d\d|-)$")


def test_a_log_gets_one_line_per_member_epoch(tmp_path: Path) -> None:
    config = write_config(tmp_path, ONE_LR)
    out = tmp_path / "z.h5"
    result = run_cli("generate", str(config), "--out", str(out))  # stderr is a pipe
    assert result.returncode == 0, result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("member ")]
    assert len(lines) == 2 * 2, result.stderr  # two members, two epochs each
    parsed = [LINE.match(ln) for ln in lines]
    assert all(parsed), lines
    with zooscope.open_zoo(out) as zoo:
        ids = [m.id for m in zoo.members()]
    seen = [(m.group(3), int(m.group(4))) for m in parsed if m]
    assert seen == [(ids[0], 1), (ids[0], 2), (ids[1], 1), (ids[1], 2)]
    assert all(m.group(5) != "-" for m in parsed if m)  # a zoo ETA from the first epoch on
    assert parsed[-1] and parsed[-1].group(5) == "0:00:00"

    again = run_cli("generate", str(config), "--out", str(out), "--resume", "--quiet")
    assert again.returncode == 0 and again.stderr == ""
    assert "mean test_accuracy" in again.stdout


def test_bars_start_again_for_every_member(tmp_path: Path) -> None:
    """In a terminal each member's epoch and step bars restart (their own elapsed time)
    and end full, and the zoo's remaining time exists after the first epoch."""
    console = Console(file=io.StringIO(), force_terminal=True, width=100)
    reporter = progress.BarReporter(console)
    snapshots: list[dict[str, Any]] = []
    original = reporter.member_done

    def member_done(member: Any, skipped: bool = False) -> None:
        tasks = {t.description.split(" (")[0].split(" ")[0]: t for t in reporter.progress.tasks}
        epochs = reporter.progress.tasks[reporter._epochs]
        steps = reporter.progress.tasks[reporter._steps]
        snapshots.append({"epochs": (epochs.completed, epochs.total),
                          "steps": (steps.completed, steps.total), "started": epochs.start_time,
                          "zoo_remaining": tasks["zoo"].time_remaining})
        original(member, skipped)

    reporter.member_done = member_done  # type: ignore[method-assign]
    with progress.reporting(reporter):
        build_zoo(load_config(write_config(tmp_path, ONE_LR)), tmp_path / "z.h5", progress=reporter)
    assert len(snapshots) == 2
    for snap in snapshots:
        assert snap["epochs"] == (2, 2)
        assert snap["steps"][0] == snap["steps"][1] and snap["steps"][0] > 0
    assert snapshots[1]["started"] > snapshots[0]["started"]
    assert snapshots[0]["zoo_remaining"] is not None
    assert snapshots[1]["zoo_remaining"] == 0


def test_analysis_tasks_print_at_most_eleven_lines() -> None:
    stream = io.StringIO()
    with progress.reporting(progress.LineReporter(stream)):
        assert sum(progress.track(range(1000), "reading tensors")) == sum(range(1000))
    lines = stream.getvalue().splitlines()
    assert len(lines) == 11  # the first step (work has begun), then each tenth
    assert lines[0].startswith("reading tensors: 1/1000 elapsed ")
    assert lines[-1].startswith("reading tensors: 1000/1000 elapsed ")
    assert re.match(r"^reading tensors: 100/1000 elapsed \d+:\d\d:\d\d ETA \d+:\d\d:\d\d$",
                    lines[1])


def test_ctrl_c_records_the_member_as_interrupted(tmp_path: Path) -> None:
    class CtrlC(progress.Reporter):
        def step(self, n: int) -> None:
            os.kill(os.getpid(), signal.SIGINT)  # what a terminal sends on Ctrl-C

    config = write_config(tmp_path, ONE_LR)
    out = tmp_path / "z.h5"
    with pytest.raises(Interrupted):
        build_zoo(load_config(config), out, progress=CtrlC())
    with zooscope.open_zoo(out) as zoo:
        assert [m.status for m in zoo.members()] == ["interrupted", "pending"]
    result = runner.invoke(app, ["zoo", "validate", str(out)])
    assert result.exit_code == 0, result.stderr
    first = zooscope.open_zoo(out).members()[0].id
    text = " ".join(result.stdout.split())  # Rich wraps at the terminal's width
    assert f"note: member {first} was interrupted; `zooscope generate --resume` continues it" in text
    assert "is running" not in text and "being trained" not in text


def test_a_member_left_running_without_a_writer_reads_as_interrupted(zoo_copy: Path) -> None:
    import h5py

    from zooscope.access import store_for

    with h5py.File(zoo_copy, "r+") as f:
        f["members/status"][0] = 1  # "running", as a killed writer leaves it
    result = runner.invoke(app, ["zoo", "validate", str(zoo_copy)])
    assert result.exit_code == 0
    assert "was interrupted (no process is writing the zoo)" in " ".join(result.stdout.split())
    store = store_for(zoo_copy)
    assert not store.being_written(zoo_copy)
    with store.resume(zoo_copy):
        assert store.being_written(zoo_copy)


def test_a_full_disk_says_so_and_resume_completes(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from zooscope.stores.h5writer import HDF5Writer

    real = HDF5Writer.write_checkpoint
    calls = {"n": 0}

    def fills_up(self: Any, *args: Any, **kwargs: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 4:  # member 2's epoch 0: member 1 is complete by then
            # The text h5py gives when HDF5's write fails, errno not set on the exception.
            raise OSError("Can't synchronously write data (file write failed: errno = 28, "
                          "error message = 'No space left on device')")
        real(self, *args, **kwargs)

    monkeypatch.setattr(HDF5Writer, "write_checkpoint", fills_up)
    config = write_config(tmp_path, ONE_LR)
    out = tmp_path / "z.h5"
    result = runner.invoke(app, ["generate", str(config), "--out", str(out), "--quiet"])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2, result.stderr
    assert lines[0].startswith(f"error: the disk holding {out} is full (no space left on device)")
    assert lines[1] == (f"hint: free some space, then continue with: zooscope generate {config} "
                        f"--out {out} --resume")
    with zooscope.open_zoo(out) as zoo:
        assert [m.status for m in zoo.members()] == ["complete", "interrupted"]
        assert len(zoo.checkpoints()) == 3
    monkeypatch.setattr(HDF5Writer, "write_checkpoint", real)
    resumed = runner.invoke(app, ["generate", str(config), "--out", str(out), "--resume",
                                  "--quiet"])
    assert resumed.exit_code == 0, resumed.stderr
    with zooscope.open_zoo(out) as zoo:
        assert [m.status for m in zoo.members()] == ["complete", "complete"]
        assert [c.epoch for c in zoo.checkpoints()] == [0, 1, 2, 0, 1, 2]
        assert np.isfinite(zoo.predictions()).all()


def test_an_epoch_line_shows_the_split_the_run_is_judged_on(tmp_path: Path) -> None:
    """Validation metrics by default; the overfit check judges training accuracy, and its
    epoch lines show that."""
    from zooscope.progress import _metric_text

    metrics = {"train_loss": 0.1, "train_accuracy": 1.0, "validation_accuracy": 0.5,
               "test_accuracy": 0.4}
    assert _metric_text(metrics) == "validation_accuracy=0.5"
    assert _metric_text(metrics, "train") == "train_loss=0.1 train_accuracy=1"
    assert _metric_text({"test_loss": 0.5}) == "test_loss=0.5"
    from .conftest import run_cli, write_config

    done = run_cli("generate", str(write_config(tmp_path)), "--overfit")
    lines = [ln for ln in done.stderr.splitlines() if " epoch " in ln]
    assert lines and all("train_accuracy=" in ln and "validation_" not in ln for ln in lines)
