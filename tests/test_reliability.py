"""Fault injection on the real `zooscope generate`, and readers that follow a running writer."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pytest

import zooscope
from zooscope.config import parse_config
from zooscope.engine import build_zoo
from zooscope.upkeep.validate import validate_zoo

from .conftest import TINY_CONFIG, cli_env, write_config
from .test_generate import assert_same_weights

KILL_CONFIG = (TINY_CONFIG.replace("epochs = 2", "epochs = 12")
               .replace("synthetic:sentiment:400", "synthetic:sentiment:250"))
TOTAL = 4 * 13  # members x checkpoints, epoch 0 included


def _fingerprints(path: Path) -> dict[tuple[str, int], str]:
    """A hash of every committed checkpoint's tensors and metrics."""
    out = {}
    with zooscope.open_zoo(path) as zoo:
        for c in zoo.checkpoints():
            h = hashlib.sha256(repr(sorted(c.metrics.items())).encode())
            for name, t in sorted(zoo.state_dict(c.member, c.epoch).items()):
                h.update(name.encode() + t.numpy().tobytes())
            out[(c.member, c.epoch)] = h.hexdigest()
    return out


def _launch(args: list[str]) -> subprocess.Popen[bytes]:
    env = cli_env()
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
                            start_new_session=True)


_FINISHED_PARTS: dict[Path, int] = {}


def _committed(path: Path) -> int:
    if path.is_dir():  # a folder: only its newest part can still grow
        try:
            names = json.loads((path / "zoo.json").read_text())["parts"]
            total = 0
            for k, name in enumerate(names):
                part = path / name
                if part in _FINISHED_PARTS:
                    total += _FINISHED_PARTS[part]
                    continue
                with h5py.File(part, "r", swmr=True) as f:
                    count = len(f["checkpoints/index"])
                if k < len(names) - 1:
                    _FINISHED_PARTS[part] = count
                total += count
            return total
        except (OSError, ValueError, KeyError):
            return -1  # not created yet, or between two writes of the index
    try:
        with zooscope.open_zoo(path) as zoo:
            return len(zoo.checkpoints())
    except zooscope.ZooFileError:
        return -1  # not created yet


def _kill_after(proc: subprocess.Popen[bytes], watch: Path, seconds: float,
                at_least: int = 0) -> bool:
    """Once the run has committed more than ``at_least`` checkpoints (it is past start-up),
    wait ``seconds`` and SIGKILL its whole process group."""
    deadline = time.time() + 180
    while proc.poll() is None and time.time() < deadline and _committed(watch) <= at_least:
        time.sleep(0.05)
    time.sleep(seconds)
    killed = proc.poll() is None
    if not killed and proc.returncode != 0:
        pytest.fail(f"generate failed on its own: {proc.stderr.read() if proc.stderr else ''}")
    if killed:
        # torchrun starts its workers in sessions of their own: kill the whole tree.
        import psutil

        tree = psutil.Process(proc.pid).children(recursive=True)
        os.killpg(proc.pid, signal.SIGKILL)
        for child in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
        psutil.wait_procs(tree, timeout=30)
    proc.wait()
    return killed


def _check_after_kill(path: Path, before: dict[tuple[str, int], str]) -> dict:
    files = [path] if path.is_file() else \
        [path / name for name in json.loads((path / "zoo.json").read_text())["parts"]]
    for file in files:
        with h5py.File(file, "r", swmr=True) as f:  # each opens with plain h5py
            assert f.attrs["zooscope_format"] == 1
    report = validate_zoo(path)
    assert report.ok, report.problems
    now = _fingerprints(path)
    for key, digest in before.items():
        assert now[key] == digest, f"committed checkpoint {key} changed"
    return now


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["killed.h5", "killed.zoo"])
def test_generate_killed_at_random_moments_resumes_to_the_same_zoo(tmp_path: Path,
                                                                   kind: str) -> None:
    """Into a zoo file, and into a folder whose parts hold about two checkpoints each,
    so that kills land while a part is being started too."""
    text = KILL_CONFIG if kind.endswith(".h5") else KILL_CONFIG.replace(
        "epochs = 12\n", 'epochs = 12\nmax_part_size = "300KB"\n')
    config = write_config(tmp_path, text, "kill.toml")
    reference = tmp_path / "reference.h5"
    start = time.perf_counter()
    build_zoo(parse_config(KILL_CONFIG), reference)
    # Kill delays are drawn in units of this machine's time per checkpoint, so that twenty
    # kills land before the zoo completes on a fast machine and a slow one alike.
    per_checkpoint = (time.perf_counter() - start) / TOTAL
    out = tmp_path / kind
    rng = random.Random(7)
    seen: dict[tuple[str, int], str] = {}
    progress = []
    kills = 0
    while kills < 20 and len(seen) < TOTAL:
        args = [sys.executable, "-m", "zooscope", "generate", str(config), "--out", str(out)]
        proc = _launch(args + (["--resume"] if out.exists() else []))
        # Past start-up, a kill lands in a training step, an evaluation or a write.
        kills += _kill_after(proc, out, rng.uniform(0.0, 0.8) * per_checkpoint, at_least=len(seen))
        seen = _check_after_kill(out, seen)
        progress.append(len(seen))
    finish = subprocess.run([sys.executable, "-m", "zooscope", "generate", str(config), "--out",
                             str(out), "--resume"], capture_output=True, text=True)
    assert finish.returncode == 0, finish.stderr
    print(f"{kills} kills; committed checkpoints after each: {progress}")
    assert kills >= 20 and len(set(progress)) >= 10, progress
    assert_same_weights(reference, out)  # bitwise: optimizer and RNG state were restored
    if kind.endswith(".zoo"):
        assert len(json.loads((out / "zoo.json").read_text())["parts"]) >= 10


@pytest.mark.slow
def test_two_process_generate_killed_during_training_or_merge(tmp_path: Path) -> None:
    config = write_config(tmp_path, KILL_CONFIG, "kill.toml")
    reference = tmp_path / "reference.h5"
    build_zoo(parse_config(KILL_CONFIG), reference)
    out = tmp_path / "two.h5"
    part = out.with_name("two.part0of2.h5")
    rng = random.Random(3)
    for _ in range(3):
        args = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m",
                "zooscope", "generate", str(config), "--out", str(out)]
        proc = _launch(args + (["--resume"] if part.exists() else []))
        _kill_after(proc, part, rng.uniform(0.0, 2.0), at_least=-1)
        if out.exists():
            break
        for p in out.parent.glob("two.part*of2.h5"):
            _check_after_kill(p, {})
    if not out.exists():
        done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node",
                               "2", "-m", "zooscope", "generate", str(config), "--out", str(out),
                               "--resume"], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
    assert_same_weights(reference, out, exact=False)
    assert not list(out.parent.glob("*.merging.h5"))


@pytest.mark.slow
def test_readers_see_only_committed_checkpoints_while_generate_runs(tmp_path: Path) -> None:
    config = write_config(tmp_path, KILL_CONFIG, "live.toml")
    out = tmp_path / "live.h5"
    proc = _launch([sys.executable, "-m", "zooscope", "generate", str(config), "--out", str(out)])
    seen: dict[tuple[str, int], str] = {}
    reads = 0
    counts = []
    try:
        while proc.poll() is None:
            if out.exists():
                try:
                    now = _fingerprints(out)
                except zooscope.ZooFileError as exc:
                    # Only the first moments of file creation may not be readable yet.
                    assert "not a readable HDF5 file" in str(exc) and not seen, exc
                    continue
                for key, digest in seen.items():
                    assert now[key] == digest
                seen = now
                counts.append(len(now))
                reads += 1
            time.sleep(0.02)
    finally:
        proc.wait()
    assert proc.returncode == 0
    assert counts == sorted(counts) and reads >= 10, counts
    assert len(set(counts)) >= 5  # the reader followed the writer through many commits
    final = _fingerprints(out)
    assert all(final[k] == v for k, v in seen.items())
    assert len(final) == TOTAL


# -- storing an analysis result -------------------------------------------------------------------
SAVE = """
import sys
from pathlib import Path
from tests.test_reliability import killtest_result
from zooscope.access import store_for

zoo, key = Path(sys.argv[1]), sys.argv[2]
tables, figures = killtest_result(key)
print("saving", flush=True)
store_for(zoo).write_analysis(zoo, "killtest", key, {"key": key}, "summary " + key, tables, figures)
print("saved", flush=True)
"""


def killtest_result(key: str) -> tuple[dict, dict]:
    """A result of a few MB whose every value follows from its key."""
    import numpy as np

    rng = np.random.default_rng(int(key[1:]))
    n = 400_000
    tables = {"stats": {"row": np.arange(n), "value": rng.standard_normal(n)},
              "labels": {"name": np.array([f"r{i}" for i in range(2000)]), "x": rng.random(2000)}}
    return tables, {"figure": rng.bytes(200_000)}


def _check_result(zoo: zooscope.Zoo, key: str) -> None:
    import numpy as np

    tables, figures = killtest_result(key)
    got = zoo.analysis_tables("killtest", key)
    assert sorted(got) == sorted(tables)
    for t, cols in tables.items():
        assert list(got[t]) == list(cols)
        for c, values in cols.items():
            assert np.array_equal(np.asarray(got[t][c]).astype(values.dtype), values), (key, t, c)
    assert zoo.analysis_figures("killtest", key) == figures


@pytest.mark.slow
def test_analysis_storing_killed_at_random_moments_never_harms_the_zoo(tiny_zoo: Path,
                                                                       tmp_path: Path) -> None:
    zoo = tmp_path / "zoo.h5"
    zoo.write_bytes(tiny_zoo.read_bytes())
    zoo.chmod(0o444)
    digest = hashlib.sha256(zoo.read_bytes()).hexdigest()
    env = cli_env()
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])

    def save(key: str, kill_after: float | None) -> tuple[bool, float]:
        proc = subprocess.Popen([sys.executable, "-c", SAVE, str(zoo), key], env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "saving", (
            proc.stderr.read() if proc.stderr else "")
        start = time.perf_counter()
        if kill_after is None:
            done = proc.stdout.readline().strip()
            took = time.perf_counter() - start
            assert proc.wait() == 0 and done == "saved", proc.stderr.read() if proc.stderr else ""
            return False, took
        time.sleep(kill_after)
        killed = proc.poll() is None
        proc.kill()
        proc.wait()
        return killed, time.perf_counter() - start

    rng = random.Random(11)
    window = save("k0", None)[1]  # the save's duration on this machine, refreshed below
    stored = {"k0"}
    kills = absent = survived = 0
    i = 0
    while kills < 24:
        i += 1
        key = f"k{i}"
        if i % 6 == 0:  # let one run through now and then: the store grows, so does the window
            window = max(window, save(key, None)[1])
            stored.add(key)
            continue
        killed, _ = save(key, rng.uniform(0.0, 1.1) * window)
        kills += killed
        # The zoo: unchanged, opened by plain h5py, valid.
        assert hashlib.sha256(zoo.read_bytes()).hexdigest() == digest
        with h5py.File(zoo, "r") as f:
            assert f.attrs["zooscope_format"] == 1
        assert validate_zoo(zoo).ok
        # The results: everything stored before is complete, this one complete or absent.
        with zooscope.open_zoo(zoo) as z:
            keys = {a["key"] for a in z.analyses()}
            assert stored <= keys, stored - keys
            for k in sorted(keys):
                _check_result(z, k)
        if key in keys:
            stored.add(key)
            survived += killed
        else:
            absent += 1
    print(f"{kills} kills; results stored {len(stored)} ({survived} of them killed after the "
          f"move), cleanly absent {absent}; save window {window:.2f} s")
    assert absent >= 10  # most kills landed inside the save
    # The next save clears what killed ones left.
    save("k999", None)
    assert sorted(p.name for p in zoo.with_name("zoo_analysis").iterdir()) == [
        "results.h5", "results.h5.lock"]


# -- kills aimed at the writes of `report` and `zoo export` --------------------------------

#: Slows every fsync and rename in the process it is imported into (through
#: sitecustomize) and marks the first of them in a file, so that a kill can be aimed at
#: the moment outputs are written.
SLOW_IO = """
import os, time

marker = os.environ.get("ZOOSCOPE_TEST_SLOW_IO")
if marker:
    real_fsync, real_replace = os.fsync, os.replace

    def _mark():
        if not os.path.exists(marker):
            with open(marker, "w"):
                pass

    def fsync(fd):
        _mark()
        time.sleep(0.05)
        return real_fsync(fd)

    def replace(src, dst, **kwargs):
        _mark()
        time.sleep(0.15)
        return real_replace(src, dst, **kwargs)

    os.fsync, os.replace = fsync, replace
"""


def _aimed_kill(args: list[str], tmp: Path, rng: random.Random, window: float) -> bool:
    """Run ``zooscope ARGS`` with slowed writes; once it starts writing, SIGKILL it after
    a random part of ``window`` seconds. Returns whether it was killed before it ended."""
    site = tmp / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(SLOW_IO)
    marker = tmp / "writing"
    marker.unlink(missing_ok=True)
    env = {**cli_env(), "ZOOSCOPE_TEST_SLOW_IO": str(marker),
           "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "zooscope", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.time() + 120
    while proc.poll() is None and not marker.exists() and time.time() < deadline:
        time.sleep(0.005)
    time.sleep(rng.uniform(0, window))
    killed = proc.poll() is None
    if killed:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    if not killed:
        assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
    return killed


@pytest.mark.slow
def test_report_killed_while_writing_leaves_the_old_page_or_the_new(tiny_zoo: Path,
                                                                   tmp_path: Path) -> None:
    import shutil

    zoo = tmp_path / "tiny.h5"
    shutil.copy(tiny_zoo, zoo)
    page = tmp_path / "tiny_analysis" / "report" / "report.html"
    done = subprocess.run([sys.executable, "-m", "zooscope", "report", str(zoo), "--no-run",
                           "--quiet"], capture_output=True, text=True, env=cli_env())
    assert done.returncode == 0, done.stderr
    rng = random.Random(7)
    kills = attempts = 0
    while kills < 10 and attempts < 40:  # a run that ends before its kill is not counted
        attempts += 1
        old = page.read_bytes()
        kills += _aimed_kill(["report", str(zoo), "--no-run", "--quiet"], tmp_path, rng, 0.3)
        now = page.read_bytes()
        assert now == old or (now.rstrip().endswith(b"</html>") and len(now) > 1000), \
            "a kill left a partial report"
        assert not [p for p in page.parent.iterdir() if p.name != "report.html"
                    and not p.name.endswith(".tmp")]
    assert kills >= 10
    # the next run clears what killed ones left
    done = subprocess.run([sys.executable, "-m", "zooscope", "report", str(zoo), "--no-run",
                           "--quiet"], capture_output=True, text=True, env=cli_env())
    assert done.returncode == 0, done.stderr
    assert [p.name for p in page.parent.iterdir()] == ["report.html"]


@pytest.mark.slow
def test_export_killed_while_writing_leaves_no_half_folder(tiny_zoo: Path,
                                                           tmp_path: Path) -> None:
    import shutil

    with zooscope.open_zoo(tiny_zoo) as zoo:
        member = zoo.members()[0].id
    reference = {}
    for epoch in (1, 2):
        out = tmp_path / f"reference-{epoch}"
        done = subprocess.run([sys.executable, "-m", "zooscope", "zoo", "export", str(tiny_zoo),
                               "--member", member, "--epoch", str(epoch), "--out", str(out)],
                              capture_output=True, text=True, env=cli_env())
        assert done.returncode == 0, done.stderr
        reference[epoch] = {p.name: p.read_bytes() for p in out.iterdir()}
    rng = random.Random(11)
    kills = 0
    target = tmp_path / "exported"

    def export(epoch: int, *extra: str) -> list[str]:
        return ["zoo", "export", str(tiny_zoo), "--member", member, "--epoch", str(epoch),
                "--out", str(target), *extra]

    attempt = 0
    while kills < 10 and attempt < 40:  # a run that ends before its kill is not counted
        attempt += 1
        # a first export into a new folder, or one with --force over an earlier one
        force = attempt % 2 == 0
        shutil.rmtree(target, ignore_errors=True)
        if force:
            done = subprocess.run([sys.executable, "-m", "zooscope", *export(1)],
                                  capture_output=True, text=True, env=cli_env())
            assert done.returncode == 0, done.stderr
        args = export(2, "--force") if force else export(1)
        kills += _aimed_kill(args, tmp_path, rng, 1.5)
        if target.exists():
            files = {p.name: p.read_bytes() for p in target.iterdir()}
            if not force:
                assert files == reference[1], "a first export left a half folder"
            else:
                assert set(files) == set(reference[1]), "files went missing"
                for name, content in files.items():  # each file whole: the old or the new
                    assert content in (reference[1][name], reference[2][name]), name
        # the same command again completes, taking over what a killed run left
        done = subprocess.run([sys.executable, "-m", "zooscope", *args], capture_output=True,
                              text=True, env=cli_env())
        if not force and done.returncode != 0:  # the killed run had finished its rename
            assert "exists and is not an empty directory" in done.stderr
        else:
            assert done.returncode == 0, done.stderr
        assert {p.name: p.read_bytes() for p in target.iterdir()} == reference[2 if force else 1]
        assert not list(tmp_path.glob(".*.exporting"))
    assert kills >= 10
