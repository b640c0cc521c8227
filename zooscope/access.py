"""Opening zoo files: the store that reads a path, and ``open_zoo``.

Stores are plugins, so this sits above the plugin manager; the interfaces it
returns (``zooscope.zoo.Zoo``, ``zooscope.store.Store``) sit below it.
"""

from __future__ import annotations

import re
from pathlib import Path

from zooscope.errors import ZooFileError
from zooscope.registry import stores
from zooscope.remote import URL, is_url
from zooscope.store import Store, StoredZoo
from zooscope.zoo import Zoo

_MANGLED_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:/[^/]")


def store_for(path: Path) -> Store:
    """The store whose suffixes claim the file name."""
    for store in stores().values():
        if path.suffix in store.suffixes:
            return store
    known = sorted({s for st in stores().values() for s in st.suffixes})
    raise ZooFileError(
        f"no store reads {path.name!r}", hint=f"zoos end in {', '.join(known)}"
    )


def open_zoo(path: str | Path, *, timeout: float | None = None) -> Zoo:
    """Open a zoo read-only with the store that claims its file name: a local path, or
    a URL (``https://``, ``s3://``, ``hf://``), read by fetching only what is read.
    ``timeout`` (seconds; default ``ZOOSCOPE_NETWORK_TIMEOUT`` or 30) bounds each wait
    for a connection or for the next bytes of an answer from a URL."""
    if is_url(path):
        url = URL(path)
        return store_for(Path(url.name)).open_url(url, timeout)
    path = Path(path)
    if _MANGLED_URL.match(str(path)):  # "https://x" through pathlib is "https:/x"
        raise ZooFileError(f"{str(path).replace(':/', '://', 1)} is a URL; the command line "
                           "reads local zoo files",
                           hint="download it, or open it from Python: zooscope.open_zoo(url)")
    if not path.exists():
        raise ZooFileError(f"no zoo file at {path}")
    store = store_for(path) if path.suffix else None
    if path.is_dir() and (store is None or not store.folders):
        raise ZooFileError(f"{path} is a directory, not a zoo file",
                           hint="a zoo is a file (NAME.h5) or a folder of parts (NAME.zoo)")
    if store is not None and store.folders and not path.is_dir():
        raise ZooFileError(f"{path} is not a folder; a {store.name} zoo is a folder")
    if not path.is_dir() and not path.is_file():  # a FIFO would wait for a writer forever
        raise ZooFileError(f"{path} is not a regular file (a FIFO, a device or a socket)",
                           hint="zoo files are regular files")
    return (store or store_for(path)).open(path)


def open_stored(path: str | Path) -> StoredZoo:
    """``open_zoo`` for upkeep (merging, validating, checking a parent checkpoint): the
    zoo with the store-side methods (``header``, ``check_tensor``) beyond the reader's."""
    zoo = open_zoo(path)
    if not isinstance(zoo, StoredZoo):
        zoo.close()
        raise ZooFileError(f"the store for {Path(path).name!r} offers no upkeep of its zoos")
    return zoo
