"""zooscope: build and study model zoos.

The package root re-exports what plugin authors and library users need; the
heavy libraries (torch, transformers) are imported only where they are used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from zooscope.errors import (
    ConfigError,
    DataError,
    NetworkError,
    PluginError,
    ZooFileError,
    ZooscopeError,
)
from zooscope.hookspecs import hookimpl
from zooscope.version import __version__

if TYPE_CHECKING:
    from zooscope.zoo import Zoo

__all__ = [
    "ConfigError",
    "DataError",
    "NetworkError",
    "PluginError",
    "ZooFileError",
    "ZooscopeError",
    "__version__",
    "analyze",
    "hookimpl",
    "load_model",
    "open_zoo",
]


def open_zoo(path: Any, *, timeout: float | None = None) -> Zoo:
    """Open a zoo read-only: a path or a URL (``timeout``: seconds to wait on the
    network). See :func:`zooscope.access.open_zoo`."""
    from zooscope.access import open_zoo as _open_zoo

    return _open_zoo(path, timeout=timeout)


def analyze(zoo: Any, analyzer: Any, members: Any = None, epochs: Any = None,
            inputs: Any = None, **options: Any) -> Any:
    """Run an analyzer and return its tables as DataFrames and its figures, writing
    nothing; ``inputs`` feeds it results computed in this process. See
    :func:`zooscope.services.notebook.analyze`."""
    from zooscope.services.notebook import analyze as _analyze

    return _analyze(zoo, analyzer, members, epochs, inputs, **options)


def load_model(source: Any, member: str | None = None, epoch: int | None = None) -> Any:
    """The trained model and its tokenizer from a zoo or an exported directory.
    See :func:`zooscope.loader.load_model`."""
    from zooscope.loader import load_model as _load_model

    return _load_model(source, member, epoch)
