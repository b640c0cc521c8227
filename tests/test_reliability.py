"""Fault injection on the real `zooscope generate`, and readers that follow a running writer."""

from __future__ import annotations

import contextlib
import hashlib
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
from zooscope.training import generate
from zooscope.zoofile import validate_zoo

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


def _committed(path: Path) -> int:
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
    with h5py.File(path, "r", swmr=True) as f:  # opens with plain h5py
        assert f.attrs["zooscope_format"] == 1
    report = validate_zoo(path)
    assert report.ok, report.problems
    now = _fingerprints(path)
    for key, digest in before.items():
        assert now[key] == digest, f"committed checkpoint {key} changed"
    return now


@pytest.mark.slow
def test_generate_killed_at_random_moments_resumes_to_the_same_zoo(tmp_path: Path) -> None:
    config = write_config(tmp_path, KILL_CONFIG, "kill.toml")
    reference = tmp_path / "reference.h5"
    start = time.perf_counter()
    generate(parse_config(KILL_CONFIG), reference)
    # Kill delays are drawn in units of this machine's time per checkpoint, so that twenty
    # kills land before the zoo completes on a fast machine and a slow one alike.
    per_checkpoint = (time.perf_counter() - start) / TOTAL
    out = tmp_path / "killed.h5"
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


@pytest.mark.slow
def test_two_process_generate_killed_during_training_or_merge(tmp_path: Path) -> None:
    config = write_config(tmp_path, KILL_CONFIG, "kill.toml")
    reference = tmp_path / "reference.h5"
    generate(parse_config(KILL_CONFIG), reference)
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
