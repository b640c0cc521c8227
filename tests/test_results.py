"""Where analysis results live: the results store beside a zoo, its identity, its lock,
result folders, CSV precision, and the cache rule for analyses that read other analyses."""

from __future__ import annotations

import csv
import errno
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

import zooscope
from zooscope import registry
from zooscope.cli import app
from zooscope.services.results import run_analysis, write_csv

from .conftest import cli_env, run_cli

runner = CliRunner()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def folder_digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def analyze(zoo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("analyze", str(zoo), *args, env={"COLUMNS": "80"})


def store_of(zoo: Path) -> Path:
    return zoo.with_name(f"{zoo.stem}_analysis") / "results.h5"


# -- the zoo is only read -----------------------------------------------------------------------
def test_analyze_leaves_a_read_only_zoo_byte_for_byte_unchanged(zoo_copy: Path) -> None:
    zoo_copy.chmod(0o444)
    before = sha256(zoo_copy)
    first = analyze(zoo_copy, "--plugin", "agreement")
    assert first.returncode == 0, first.stderr
    again = analyze(zoo_copy, "--plugin", "agreement")
    weights = analyze(zoo_copy, "--plugin", "weightstats", "--set", "tensors=attention")
    assert weights.returncode == 0, weights.stderr
    assert sha256(zoo_copy) == before
    store = store_of(zoo_copy)
    assert first.stderr.strip().splitlines()[-1] == (
        f"stored in {store}; files in {zoo_copy.parent / 'copy_analysis' / 'agreement'}")
    assert again.stderr.strip().splitlines()[-1].startswith(f"reused from {store}")
    # Plain h5py reads the store with the layout zoos used inside (docs/format.md).
    # (locking=False: this process opens the store through zooscope at the same time.)
    with h5py.File(store, "r", locking=False) as f, zooscope.open_zoo(zoo_copy) as zoo:
        assert f.attrs["zooscope_results"] == 1
        assert sorted(f["analyses"]) == ["agreement", "weightstats"]
        (key,) = f["analyses/agreement"]
        g = f[f"analyses/agreement/{key}"]
        assert json.loads(g.attrs["options"]) == {"order": "", "bootstrap": 1000, "bootstrap_seed": 0}
        tables = zoo.analysis_tables("agreement", key)
        for table, columns in tables.items():
            assert json.loads(g[f"tables/{table}"].attrs["columns"]) == list(columns)
            for col, values in columns.items():
                stored = g[f"tables/{table}/{col}"]
                got = stored.asstr()[()] if stored.dtype.kind == "O" else stored[()]
                assert np.array_equal(got, values, equal_nan=values.dtype.kind == "f")
        png = bytes(g["figures/agreement_heatmap"][()].tobytes())
        assert png == (zoo_copy.parent / "copy_analysis/agreement/agreement_heatmap.png").read_bytes()
    assert sha256(zoo_copy) == before


def test_results_stored_inside_an_older_zoo_still_read(zoo_copy: Path, tmp_path: Path) -> None:
    # A zoo written before results moved out holds /analyses/NAME/KEY itself.
    with h5py.File(zoo_copy, "r+") as f:
        g = f.create_group("analyses/legacy/abc123")
        g.attrs["options"] = '{"x":1}'
        g.attrs["summary"] = "kept inside"
        g.attrs["created"] = "2025-01-01T00:00:00+00:00"
        t = g.create_group("tables/t")
        t.attrs["columns"] = '["v","name"]'
        t.create_dataset("v", data=np.array([0.1, 2.5]))
        t.create_dataset("name", data=np.array(["a", "b"], dtype=object), dtype=h5py.string_dtype())
        g.create_group("figures").create_dataset("fig", data=np.frombuffer(b"\x89PNG", np.uint8))
    assert run_analysis(zoo_copy, registry.get_analyzer("agreement"), [], None, None,
                        tmp_path / "out", False).stored
    with zooscope.open_zoo(zoo_copy) as zoo:
        listed = {(a["name"], a["key"]): a for a in zoo.analyses()}
        assert listed[("legacy", "abc123")]["summary"] == "kept inside"
        assert [n for n, _ in listed] == ["legacy", "agreement"]
        tables = zoo.analysis_tables("legacy", "abc123")
        assert tables["t"]["v"].tolist() == [0.1, 2.5] and list(tables["t"]["name"]) == ["a", "b"]
        assert zoo.analysis_figures("legacy", "abc123") == {"fig": b"\x89PNG"}
        key = next(k for n, k in listed if n == "agreement")
        assert "groups" in zoo.analysis_tables("agreement", key)


def test_results_of_a_regenerated_zoo_of_the_same_name_are_not_served(zoo_copy: Path) -> None:
    assert analyze(zoo_copy, "--plugin", "agreement").returncode == 0
    with h5py.File(zoo_copy, "r") as f:
        created = f.attrs["created"]
    # Regenerated under the same name: a new creation time (what --force gives).
    with h5py.File(zoo_copy, "r+") as f:
        f.attrs["created"] = "2030-01-01T00:00:00+00:00"
    with zooscope.open_zoo(zoo_copy) as zoo:
        assert zoo.analyses() == []
        (note,) = zoo.results_notes()
        assert note == (f"the results in {store_of(zoo_copy)} belong to an earlier zoo of this "
                        f"name (created {created}); they are not used")
    again = analyze(zoo_copy, "--plugin", "agreement")
    assert again.returncode == 0, again.stderr
    lines = again.stderr.strip().splitlines()
    notes = [line for line in lines if line.startswith("note:")]
    assert notes == [f"note: replaced the results of an earlier zoo of this name (created "
                     f"{created}) in {store_of(zoo_copy)}"], lines
    assert lines[-1].startswith("stored in")  # recomputed, not reused
    with zooscope.open_zoo(zoo_copy) as zoo:
        assert [a["name"] for a in zoo.analyses()] == ["agreement"]
        assert zoo.results_notes() == []
    third = analyze(zoo_copy, "--plugin", "agreement")
    assert not [x for x in third.stderr.splitlines() if x.startswith("note:")]
    assert third.stderr.strip().splitlines()[-1].startswith("reused")


def test_a_results_store_linking_outside_itself_is_not_read(zoo_copy: Path, tmp_path: Path) -> None:
    assert analyze(zoo_copy, "--plugin", "agreement").returncode == 0
    with h5py.File(store_of(zoo_copy), "r+") as f:
        f["analyses/elsewhere"] = h5py.ExternalLink(str(tmp_path / "secret.h5"), "/")
    with zooscope.open_zoo(zoo_copy) as zoo:
        assert zoo.analyses() == []
        assert zoo.results_notes() == [
            f"{store_of(zoo_copy)} cannot be used (it holds an external link "
            "'analyses/elsewhere'); its results are not used, and the next stored result "
            "replaces it"]


def test_an_unwritable_results_store_still_gives_the_files(zoo_copy: Path, tmp_path: Path) -> None:
    # Where the results folder should be sits a file: the store cannot be written.
    blocker = zoo_copy.with_name("copy_analysis")
    blocker.write_text("not a folder")
    out = tmp_path / "elsewhere"
    before = sha256(zoo_copy)
    result = runner.invoke(app, ["analyze", str(zoo_copy), "--plugin", "agreement", "--out",
                                 str(out)], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"not stored: {blocker} cannot be created (")
    assert last.endswith(f"; files in {out}")
    assert (out / "groups.csv").exists() and json.loads((out / "result.json").read_text())[
        "stored"] is False
    assert sha256(zoo_copy) == before and blocker.read_text() == "not a folder"


@pytest.mark.skipif(os.geteuid() == 0, reason="permissions do not bind root")
def test_a_read_only_folder_still_gives_the_files(zoo_copy: Path, tmp_path: Path) -> None:
    folder = zoo_copy.parent
    out = tmp_path.parent / f"{tmp_path.name}-out"
    folder.chmod(0o555)
    try:
        result = analyze(zoo_copy, "--plugin", "agreement", "--out", str(out))
    finally:
        folder.chmod(0o755)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("not stored: ")
    assert (out / "groups.csv").exists()


# -- the results store's lock -------------------------------------------------------------------
HOLD = """
import sys, time, filelock
lock = filelock.FileLock(sys.argv[1])
lock.acquire()
print("held", flush=True)
time.sleep(float(sys.argv[2]))
"""


def _hold_results_lock(zoo: Path, seconds: float) -> subprocess.Popen[str]:
    store = store_of(zoo)
    store.parent.mkdir(exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-c", HOLD, f"{store}.lock", str(seconds)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_storing_waits_for_another_analysis_then_stores(zoo_copy: Path) -> None:
    holder = _hold_results_lock(zoo_copy, 4)
    start = time.monotonic()
    result = analyze(zoo_copy, "--plugin", "agreement")
    holder.wait()
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("stored in")
    assert time.monotonic() - start >= 3  # it waited for the holder


def test_a_lock_held_past_the_wait_says_the_result_was_not_stored(zoo_copy: Path) -> None:
    holder = _hold_results_lock(zoo_copy, 30)
    try:
        result = run_cli("analyze", str(zoo_copy), "--plugin", "agreement",
                         env={"COLUMNS": "80", "ZOOSCOPE_RESULTS_WAIT": "1"})
    finally:
        holder.kill()
        holder.wait()
    assert result.returncode == 0, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last == (f"not stored: another analysis kept {store_of(zoo_copy)} locked for 1 s; run "
                    f"the same command again once it has finished; files in "
                    f"{zoo_copy.parent / 'copy_analysis' / 'agreement'}")
    with zooscope.open_zoo(zoo_copy) as zoo:
        assert zoo.analyses() == []
    # Run again once it has finished: stored.
    assert analyze(zoo_copy, "--plugin", "agreement").stderr.strip().splitlines()[-1].startswith(
        "stored in")


def test_two_concurrent_analyses_both_store_their_results(zoo_copy: Path) -> None:
    env = {**cli_env(), "COLUMNS": "80"}
    runs = [subprocess.Popen([sys.executable, "-m", "zooscope", "analyze", str(zoo_copy),
                              "--plugin", "agreement", *extra], env=env, text=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            for extra in ([], ["--members", "seed=0"], ["--epochs", "1"])]
    for proc in runs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0 and err.strip().splitlines()[-1].startswith("stored in"), err
    with zooscope.open_zoo(zoo_copy) as zoo:
        assert len(zoo.analyses()) == 3
    assert not list(store_of(zoo_copy).parent.glob(".results.h5.*"))  # no temporary left


# -- result folders and --out --------------------------------------------------------------------
def test_each_selection_gets_its_own_folder_with_a_record(zoo_copy: Path) -> None:
    full = analyze(zoo_copy, "--plugin", "agreement")
    part = analyze(zoo_copy, "--plugin", "agreement", "--members", "seed=0", "--epochs", "1")
    assert full.returncode == 0 and part.returncode == 0, part.stderr
    base = zoo_copy.parent / "copy_analysis"
    folders = sorted(p.name for p in base.iterdir() if p.is_dir())
    assert folders[0] == "agreement" and folders[1].startswith("agreement-") and len(folders) == 2
    whole = json.loads((base / "agreement" / "result.json").read_text())
    some = json.loads((base / folders[1] / "result.json").read_text())
    with zooscope.open_zoo(zoo_copy) as zoo:
        assert whole["members"] == sorted(m.id for m in zoo.members())
        assert some["members"] == sorted(m.id for m in zoo.members(seed=0))
    assert whole["epochs"] == "all" and some["epochs"] == [1]
    assert folders[1] == f"agreement-{some['key'][:8]}" and whole["key"] != some["key"]
    assert some["analyzer"] == "agreement"
    assert some["options"] == {"order": "", "bootstrap": 1000, "bootstrap_seed": 0}
    assert some["inputs"] == [] and some["created"] and sorted(some["files"]) == sorted(
        p.name for p in (base / folders[1]).iterdir() if p.name != "result.json")
    # The full-zoo files were not overwritten by the selection's.
    with open(base / "agreement" / "pairs.csv") as fh:
        assert len(list(csv.DictReader(fh))) > len(list(csv.DictReader(
            open(base / folders[1] / "pairs.csv"))))


def test_an_out_folder_holding_another_result_is_refused_without_force(zoo_copy: Path,
                                                                       tmp_path: Path) -> None:
    out = tmp_path / "shared"
    assert analyze(zoo_copy, "--plugin", "agreement", "--out", str(out)).returncode == 0
    before = folder_digests(out)
    refused = analyze(zoo_copy, "--plugin", "agreement", "--members", "seed=0", "--out", str(out))
    assert refused.returncode == 1
    lines = refused.stderr.strip().splitlines()
    assert lines[0].startswith(f"error: {out} holds the result of agreement (key ")
    assert lines[1] == "hint: choose another --out, or add --force to replace its files"
    assert len(lines) == 2 and folder_digests(out) == before
    forced = analyze(zoo_copy, "--plugin", "agreement", "--members", "seed=0", "--out", str(out),
                     "--force")
    assert forced.returncode == 0, forced.stderr
    record = json.loads((out / "result.json").read_text())
    with zooscope.open_zoo(zoo_copy) as zoo:
        assert record["members"] == sorted(m.id for m in zoo.members(seed=0))


@pytest.mark.parametrize("case", ["missing parent", "a file", "unwritable"])
def test_a_bad_out_is_one_error_before_any_work(zoo_copy: Path, tmp_path: Path, case: str) -> None:
    if case == "missing parent":
        out, expected = tmp_path / "nope" / "deeper", (
            f"error: --out {tmp_path / 'nope' / 'deeper'}: the folder {tmp_path / 'nope'} "
            "does not exist")
    elif case == "a file":
        out = tmp_path / "taken.txt"
        out.write_text("mine")
        expected = f"error: --out {out} is a file, not a folder"
    else:
        # /sys refuses new files even to root; elsewhere a folder without write permission.
        out = Path("/sys/zooscope-out") if os.geteuid() == 0 else tmp_path / "ro" / "out"
        if os.geteuid() != 0:
            out.parent.mkdir()
            out.parent.chmod(0o555)
        expected = f"error: --out {out} cannot be written ("
    before = folder_digests(tmp_path)
    result = analyze(zoo_copy, "--plugin", "agreement", "--out", str(out))
    assert result.returncode == 1
    assert result.stderr.startswith(expected), result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) <= 2
    assert folder_digests(tmp_path) == before and not store_of(zoo_copy).exists()


# -- CSV precision --------------------------------------------------------------------------------
def test_csv_floats_read_back_exactly(zoo_copy: Path, tmp_path: Path) -> None:
    result = run_analysis(zoo_copy, registry.get_analyzer("weightstats"), [], None, None,
                          tmp_path / "ws", False)
    stats = result.tables["stats"]
    with open(tmp_path / "ws" / "stats.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(stats["member"])
    floats = [c for c, v in stats.items() if np.asarray(v).dtype.kind == "f"]
    assert len(floats) >= 5
    for col in floats:
        want = np.asarray(stats[col], dtype=np.float64)
        got = np.array([float(r[col]) for r in rows])
        assert np.array_equal(got, want, equal_nan=True), col
    # Values that 6 significant digits would change, and the ones that are not numbers.
    odd = {"x": np.array([0.1 + 0.2, 1 / 3, 1e-300, np.float32(0.1), np.nan, -np.inf])}
    write_csv(tmp_path / "odd.csv", odd)
    back = np.loadtxt(tmp_path / "odd.csv", skiprows=1)
    assert np.array_equal(back, odd["x"].astype(np.float64), equal_nan=True)


# -- the cache rule for analyses that read other analyses ----------------------------------------
def test_predict_is_recomputed_when_the_weightstats_it_read_changes(zoo_copy: Path) -> None:
    def predict() -> dict:
        run = run_cli("analyze", str(zoo_copy), "--plugin", "predict", "--set", "folds=2", "--json")
        assert run.returncode == 0, run.stderr
        return json.loads(run.stdout)

    def features(weightstats_key: str) -> int:
        from zooscope.plugins.predict import feature_matrix

        with zooscope.open_zoo(zoo_copy) as zoo:
            return feature_matrix(zoo.analysis_tables("weightstats", weightstats_key)["stats"])[1].shape[1]

    assert analyze(zoo_copy, "--plugin", "weightstats", "--set", "tensors=attention").returncode == 0
    first = predict()
    (used,) = first["inputs"]
    narrow = features(used["key"])
    assert not first["reused"] and used["name"] == "weightstats"
    assert predict()["reused"]  # nothing changed: served from the store
    assert analyze(zoo_copy, "--plugin", "weightstats").returncode == 0
    second = predict()
    assert not second["reused"] and second["key"] != first["key"]
    (now,) = second["inputs"]
    assert now["key"] != used["key"] and features(now["key"]) > narrow
    with zooscope.open_zoo(zoo_copy) as zoo:
        stored = {a["key"]: a for a in zoo.analyses() if a["name"] == "predict"}
        assert stored[second["key"]]["inputs"] == [now]
        ws = {a["key"]: a for a in zoo.analyses() if a["name"] == "weightstats"}
        assert now["digest"] == ws[now["key"]]["digest"]
    record = json.loads((zoo_copy.parent / "copy_analysis/predict-"
                         f"{second['key'][:8]}/result.json").read_text())
    assert record["inputs"] == [now]
    # Recomputing the input itself (same key, --force) changes its digest only if its
    # content changed; the same content keeps predict's result valid.
    assert analyze(zoo_copy, "--plugin", "weightstats", "--force").returncode == 0
    assert predict()["reused"]


# -- the writer lock -----------------------------------------------------------------------------
def test_the_writer_lock_says_plainly_where_the_file_system_has_no_locks(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import fcntl

    from zooscope.stores.h5lock import WriterLock

    def no_locks(fd: int, op: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.raises(zooscope.ZooFileError) as err:
        WriterLock(tmp_path / "z.h5")
    assert str(err.value) == (f"the file system holding {tmp_path} does not support file locks "
                              "(No locks available)")
    assert "local disk" in (err.value.hint or "")


def test_the_writer_lock_tells_a_live_writer_from_a_dead_one(tmp_path: Path) -> None:
    from zooscope.stores.h5lock import WriterLock

    zoo = tmp_path / "z.h5"
    assert not WriterLock.held(zoo)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, f"{zoo}.lock", "60"],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    assert WriterLock.held(zoo)
    with pytest.raises(zooscope.ZooFileError, match="being written by another process"):
        WriterLock(zoo)
    holder.kill()
    holder.wait()
    assert not WriterLock.held(zoo)  # a killed writer's lock is free
    lock = WriterLock(zoo)
    assert WriterLock.held(zoo)
    lock.release()
    assert not WriterLock.held(zoo)


def test_force_refuses_while_a_live_writer_holds_the_zoo(zoo_copy: Path, tiny_config: Path) -> None:
    state = zoo_copy.with_name(zoo_copy.name + ".state")
    state.mkdir()
    (state / "m0.optimizer.safetensors").write_bytes(b"optimizer state")
    holder = subprocess.Popen([sys.executable, "-c", HOLD, f"{zoo_copy}.lock", "120"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        before = folder_digests(zoo_copy.parent)
        result = run_cli("generate", str(tiny_config), "--out", str(zoo_copy), "--force")
        after = folder_digests(zoo_copy.parent)
    finally:
        holder.kill()
        holder.wait()
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: {zoo_copy} is being written by another process",
        "hint: wait for it to finish, or stop it first, then --force"]
    assert after == before


def test_a_killed_merge_leaves_nothing_the_next_merge_trips_on(tiny_zoo: Path,
                                                               tmp_path: Path) -> None:
    out = tmp_path / "merged.h5"
    half = tmp_path / ".merged.h5.merging.h5"
    half.write_bytes(b"\x89HDF\r\n\x1a\n half written")
    (tmp_path / ".merged.h5.merging.h5.lock").write_bytes(b"")
    result = run_cli("zoo", "merge", str(tiny_zoo), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged.h5"]
    with zooscope.open_zoo(out) as merged, zooscope.open_zoo(tiny_zoo) as source:
        assert len(merged.checkpoints()) == len(source.checkpoints())
    # A merge that is still running (its lock held) is not disturbed.
    out = tmp_path / "again.h5"
    half = tmp_path / ".again.h5.merging.h5"
    half.write_bytes(b"in progress")
    holder = subprocess.Popen([sys.executable, "-c", HOLD, f"{half}.lock", "60"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        busy = run_cli("zoo", "merge", str(tiny_zoo), "--out", str(out))
    finally:
        holder.kill()
        holder.wait()
    assert busy.returncode == 1
    assert f"error: another merge into {out} is running\n" in busy.stderr
    assert half.read_bytes() == b"in progress"
