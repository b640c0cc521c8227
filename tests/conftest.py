"""Shared fixtures: tiny zoo configs, a generated tiny zoo, and test plugins."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import zooscope
from zooscope import registry

# Arrow caches of the data sets tests build (tokenised corpora) stay out of ~/.cache;
# zooscope imports `datasets` only when a generator loads data, after this line.
os.environ.setdefault("HF_DATASETS_CACHE", tempfile.mkdtemp(prefix="zooscope-datasets-"))

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("ZOOSCOPE_SHARED_DATA", ROOT.parent / "shared" / "data"))

TINY_CONFIG = """\
[zoo]
name = "tiny"
generator = "sst2"
backbone = "scratch"
seeds = [0, 1]
epochs = 2

[grid]
learning_rate = [3e-4, 1e-3]

[train]
batch_size = 32
max_seq_len = 32
num_threads = 1

[data]
source = "synthetic:sentiment:400"

[scratch]
hidden_size = 32
num_hidden_layers = 1
num_attention_heads = 2
intermediate_size = 64
vocab_size = 200
"""


def write_config(folder: Path, text: str = TINY_CONFIG, name: str = "tiny.toml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


@pytest.fixture
def tiny_config(tmp_path: Path) -> Path:
    return write_config(tmp_path)


@pytest.fixture(scope="session")
def tiny_zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-member, 2-epoch zoo generated once per test session (read-only for tests)."""
    from zooscope.config import load_config
    from zooscope.engine import build_zoo

    folder = tmp_path_factory.mktemp("tiny_zoo")
    out = folder / "tiny.h5"
    build_zoo(load_config(write_config(folder)), out)
    return out


@pytest.fixture
def zoo_copy(tiny_zoo: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny zoo that a test may modify."""
    dst = tmp_path / "copy.h5"
    shutil.copy(tiny_zoo, dst)
    return dst


@pytest.fixture
def register_plugin():
    """Register class plugins under fixed names; unregistered on teardown."""
    registry.load_plugins()
    names: list[str] = []

    def register(plugin: object, name: str) -> object:
        registry.pm.register(plugin, name=name)
        names.append(name)
        return plugin

    yield register
    for name in names:
        registry.pm.unregister(name=name)


def cli_env() -> dict[str, str]:
    """This environment without ZOOSCOPE_DEBUG, so subprocesses print errors as users see them."""
    return {k: v for k, v in os.environ.items() if k != "ZOOSCOPE_DEBUG"}


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
            timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run the real `zooscope` entry point in a subprocess."""
    full_env = {**cli_env(), **(env or {})}
    return subprocess.run([sys.executable, "-m", "zooscope", *args], capture_output=True,
                          text=True, env=full_env, cwd=cwd, timeout=timeout)


__all__ = ["ROOT", "SHARED_DATA", "TINY_CONFIG", "cli_env", "run_cli", "write_config", "zooscope"]
