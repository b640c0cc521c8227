"""The wheel installs generators/, stores/ and plugins/ as sub-packages of zooscope."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from zooscope.version import __version__

from .conftest import ROOT


def test_wheel_maps_the_top_level_folders_into_zooscope(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--no-build-isolation", "-w", str(wheels), str(ROOT)],
                   check=True, capture_output=True)
    wheel = next(wheels.glob("zooscope-*.whl"))
    assert wheel.name.startswith(f"zooscope-{__version__}-")  # one version, in zooscope.version
    names = zipfile.ZipFile(wheel).namelist()
    assert "zooscope/py.typed" in names
    assert not [n for n in names if n.split("/")[0] in ("generators", "stores", "plugins")]
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                    str(target), str(wheel)], check=True, capture_output=True)
    code = ("import zooscope, zooscope.generators.text_classification, zooscope.stores.hdf5, "
            "zooscope.plugins.agreement, zooscope.engine; print(zooscope.__file__); "
            "print(zooscope.plugins.agreement.__file__); print(zooscope.engine.__file__)")
    # Run from an empty folder with only the target on the path: the repository's
    # own folders must not be what gets imported.
    result = subprocess.run([sys.executable, "-S", "-c",
                             f"import sys; sys.path[:0] = [{str(target)!r}] + "
                             f"{[p for p in sys.path if 'site-packages' in p]!r}; {code}"],
                            capture_output=True, text=True, cwd=tmp_path, check=True)
    for line in result.stdout.splitlines():
        assert line.startswith(str(target)), line
