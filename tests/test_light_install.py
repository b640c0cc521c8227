"""`pip install zooscope` without extras opens, lists, validates and reads zoos and runs
the numpy-only analyzers; what needs an extra says which one, in one error line."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from .conftest import ROOT
from .rangeserver import RangeServer

pytestmark = pytest.mark.slow

READ = """
import sys
import numpy as np
import zooscope
for heavy in ("torch", "transformers", "matplotlib", "sklearn"):
    try:
        __import__(heavy)
    except ImportError:
        pass
    else:
        sys.exit(f"{heavy} is installed in the light environment")
with zooscope.open_zoo(sys.argv[1]) as zoo:
    name = zoo.tensor_names()[0]
    stack = zoo.tensor(name)
    frame = zoo.metrics()
    print(len(zoo.members()), stack.shape, len(frame), float(np.abs(stack).sum()))
result = zooscope.analyze(sys.argv[1], "agreement", bootstrap=50)
try:
    zooscope.load_model(sys.argv[1], member=zooscope.open_zoo(sys.argv[1]).members()[0].id)
except zooscope.ZooscopeError as exc:
    print(f"load_model: {exc} | {exc.hint}")
print(sorted(result.tables), sorted(result.figures))
"""


# http(s) URLs need no extra: the standard library reads them.
READ_URL = """
import sys
import numpy as np
import zooscope
try:
    import fsspec
except ImportError:
    pass
else:
    sys.exit("fsspec is installed in the light environment")
with zooscope.open_zoo(sys.argv[1]) as remote, zooscope.open_zoo(sys.argv[2]) as local:
    for name in remote.tensor_names():
        assert np.array_equal(remote.tensor(name), local.tensor(name)), name
    print(len(remote.tensor_names()), "tensors equal")
"""


@pytest.fixture(scope="module")
def light_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment with zooscope's wheel and no extras."""
    where = tmp_path_factory.mktemp("light")
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(where / "dist"), str(ROOT)], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    wheel = next((where / "dist").glob("zooscope-*.whl"))
    venv.create(where / "env", with_pip=True)
    python = where / "env" / "bin" / "python"
    installed = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "-c", str(ROOT / "constraints.txt"),
         str(wheel)], capture_output=True, text=True)
    if installed.returncode != 0 and "No matching distribution" in installed.stderr:
        pytest.skip(f"the package index is out of reach: {installed.stderr.strip()[-200:]}")
    assert installed.returncode == 0, installed.stderr
    return where / "env" / "bin"


def run(bin_dir: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["COLUMNS"] = "80"
    return subprocess.run([str(bin_dir / args[0]), *args[1:]], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=600)


def test_the_light_install_reads_zoos(light_env: Path, tiny_zoo: Path, tmp_path: Path) -> None:
    zoo = tmp_path / "tiny.h5"
    shutil.copy(tiny_zoo, zoo)
    done = run(light_env, "python", "-c", READ, str(zoo), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    first, loading, second = done.stdout.splitlines()[-3:]
    assert loading == ("load_model: rebuilding a model needs torch, which is not installed | "
                       "pip install 'zooscope[train]'")
    assert first.startswith("4 (12, ")  # 4 members, 12 checkpoints of the first tensor
    assert second == "['groups', 'matrix', 'members', 'pairs', 'seed_pairs'] []"
    with RangeServer(tmp_path) as server:
        done = run(light_env, "python", "-c", READ_URL, f"{server.url}/tiny.h5", str(zoo),
                   cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[1:] == ["tensors", "equal"]
    for args in (("zoo", "ls", str(zoo)), ("zoo", "validate", str(zoo)),
                 ("analyze", str(zoo), "--plugin", "agreement", "--set", "bootstrap=50"),
                 ("analyze", str(zoo), "--plugin", "weightstats")):
        done = run(light_env, "zooscope", *args, cwd=tmp_path)
        assert done.returncode == 0, (args, done.stderr)
        assert "Traceback" not in done.stderr
    done = run(light_env, "zooscope", "zoo", "validate", str(zoo), cwd=tmp_path)
    assert "needs torch (pip install 'zooscope[train]')" in " ".join(
        (done.stdout + done.stderr).split())
    assert (tmp_path / "tiny_analysis" / "weightstats" / "stats.csv").exists()


@pytest.mark.parametrize(("args", "extra"), [
    (("generate", "CONFIG", "--out", "new.h5"), "train"),
    (("analyze", "ZOO", "--plugin", "umap"), "analysis"),
    (("report", "ZOO"), "analysis"),
    (("zoo", "export", "ZOO", "--member", "MEMBER", "--epoch", "1", "--out", "exported"), "train"),
])
def test_what_needs_an_extra_names_it(light_env: Path, tiny_zoo: Path, tmp_path: Path,
                                      args: tuple[str, ...], extra: str) -> None:
    from zooscope import open_zoo

    from .conftest import write_config

    zoo = tmp_path / "tiny.h5"
    shutil.copy(tiny_zoo, zoo)
    with open_zoo(zoo) as z:
        member = z.members()[0].id
    names = {"CONFIG": str(write_config(tmp_path)), "ZOO": str(zoo), "MEMBER": member}
    done = run(light_env, "zooscope", *(names.get(a, a) for a in args), cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines[-2].startswith("error: ") and "is not installed" in lines[-2], done.stderr
    assert lines[-1] == f"hint: pip install 'zooscope[{extra}]'"
    assert not (tmp_path / "new.h5").exists()
