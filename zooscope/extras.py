"""Optional dependencies: which extra installs each, and one clear error where it is missing.

``pip install zooscope`` opens, lists, validates and reads zoos and runs the numpy-only
analyzers; training, the model-based analyzers and remote reading need extras.
"""

from __future__ import annotations

import importlib
from typing import Any

from zooscope.errors import ZooscopeError

#: What each extra is for (``pip install 'zooscope[EXTRA]'``).
EXTRAS = {
    "train": "training zoos and rebuilding models",
    "analysis": "figures and the model-based analyzers",
    "remote": "zoos at hf://, s3:// and other fsspec URLs",
}


#: The extra that installs each optional top-level module.
MODULES = {
    **dict.fromkeys(("torch", "transformers", "datasets", "accelerate", "tokenizers",
                     "safetensors"), "train"),
    **dict.fromkeys(("matplotlib", "sklearn", "umap", "numba", "scipy", "pynndescent"),
                    "analysis"),
    **dict.fromkeys(("fsspec", "aiohttp", "huggingface_hub"), "remote"),
}


class MissingExtra(ZooscopeError):
    """An optional dependency is not installed."""


def require(module: str, extra: str, what: str | None = None) -> Any:
    """Import ``module``, or raise one error naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = (exc.name or module).split(".")[0]
        raise MissingExtra(
            f"{what} needs {top}, which is not installed" if what else
            f"{top} is not installed, and {EXTRAS[extra]} need it",
            hint=f"pip install 'zooscope[{extra}]'") from None


def missing_extra(exc: BaseException) -> MissingExtra | None:
    """The error to show for an ImportError of an optional module, else None."""
    if not isinstance(exc, ImportError) or not exc.name:
        return None
    top = exc.name.split(".")[0]
    extra = MODULES.get(top)
    if extra is None:
        return None
    return MissingExtra(f"{top} is not installed, and {EXTRAS[extra]} need it",
                        hint=f"pip install 'zooscope[{extra}]'")
