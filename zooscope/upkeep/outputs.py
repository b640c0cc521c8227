"""Output paths checked before any work: a missing or unwritable folder, or an existing
path of the wrong kind.

They read through the ``Zoo`` interface and write through a store's writer; the
file format is the store's business.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from zooscope.errors import ZooFileError


def check_output_path(out: Path, directory: bool = False) -> None:
    """Refuse an output path that cannot work, before any work: a missing or unwritable
    folder, or an existing path of the wrong kind (a folder where a zoo file goes, a file
    where an export directory goes). Whether an existing file may be replaced is the
    caller's business (``--force``, ``--resume``)."""
    out = Path(out)
    parent = out.parent
    if directory and out.exists() and not out.is_dir():
        raise ZooFileError(f"{out} exists and is not a directory",
                           hint="give --out a new directory")
    if not directory and out.is_dir():
        raise ZooFileError(f"{out} is a directory, not a zoo file",
                           hint="give --out a file name ending in .h5")
    if not directory and out.exists() and not out.is_file():
        raise ZooFileError(f"{out} exists and is not a regular file")
    if not parent.exists():
        raise ZooFileError(f"the folder {parent} does not exist", hint=f"create it first: "
                           f"mkdir -p {parent}")
    if not parent.is_dir():
        raise ZooFileError(f"{parent} is not a folder, so {out.name} cannot go there")
    if directory and out.is_dir():
        return
    # Only creating a file proves a folder writable (root passes every access() check).
    try:
        with tempfile.TemporaryFile(dir=parent, prefix=".zooscope-write-test-"):
            pass
    except OSError as exc:
        raise ZooFileError(f"cannot write in the folder {parent}: {exc.strerror or exc}",
                           hint="choose another --out") from None
