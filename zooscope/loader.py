"""One call from a zoo file or an exported directory to the trained model and its tokenizer.

Rebuilding a model from stored files lives in ``zooscope.kit.models``; writing an export
lives in ``zooscope.upkeep.export``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from zooscope.errors import ZooFileError

#: What an export holds besides the files a zoo stores for each architecture.
HEAD_WEIGHTS = "zooscope_head.safetensors"
PROVENANCE = "zooscope_export.json"


def checkpoint_digest(state: Mapping[str, Any]) -> str:
    """sha256 over every tensor in name order: name, dtype, shape, then its bytes.

    The same checkpoint gives the same digest in the zoo and in any export of it,
    wherever the files lie.
    """
    import numpy as np
    import torch

    h = hashlib.sha256()
    for name in sorted(state):
        value = state[name]
        if value.dtype == torch.bfloat16:
            value = value.float()
        array = np.ascontiguousarray(value.detach().cpu().numpy())
        h.update(f"{name}\0{array.dtype.str}\0{list(array.shape)}\0".encode())
        h.update(array.tobytes())
    return h.hexdigest()


def load_model(source: str | Path, member: str | None = None,
               epoch: int | None = None) -> tuple[Any, Any]:
    """The trained model (backbone and task head, in eval mode) and its tokenizer.

    ``source`` is a directory written by ``zooscope zoo export``, a zoo file, a zoo's
    URL or an open zoo. From
    a zoo, ``member`` may be left out where the zoo has one member, and ``epoch``
    defaults to the member's last committed epoch. The model is the one that made the
    predictions stored in the zoo: a classifier returns ``(loss, logits)``.
    """
    from zooscope.access import open_zoo
    from zooscope.extras import require
    from zooscope.remote import is_url
    from zooscope.zoo import Zoo

    for module in ("torch", "transformers", "safetensors"):
        require(module, "train", "rebuilding a model")

    if isinstance(source, Zoo):
        return _from_zoo(source, member, epoch)
    if is_url(source):
        with open_zoo(source) as zoo:
            return _from_zoo(zoo, member, epoch)
    path = Path(source)
    # A folder is an exported checkpoint, or a zoo of parts (which a store claims).
    if path.is_dir() and ((path / PROVENANCE).exists() or not _zoo_folder(path)):
        if member is not None or epoch is not None:
            raise ZooFileError(f"{path} is an exported checkpoint: it holds one member at one "
                               "epoch", hint="give member and epoch only with a zoo file")
        return _from_export(path)
    if not path.exists():
        raise ZooFileError(f"no zoo file or exported model at {path}")
    with open_zoo(path) as zoo:
        return _from_zoo(zoo, member, epoch)


def _zoo_folder(path: Path) -> bool:
    from zooscope.access import store_for

    try:
        return store_for(path).folders
    except ZooFileError:
        return False


def _from_zoo(zoo: Any, member: str | None, epoch: int | None) -> tuple[Any, Any]:
    from zooscope.kit.models import rebuild

    if member is None:
        members = zoo.members()
        if len(members) != 1:
            raise ZooFileError(f"{zoo.path} holds {len(members)} members: name one",
                               hint="`zooscope zoo ls` lists their ids")
        member = members[0].id
    epochs = [c.epoch for c in zoo.checkpoints(zoo.member(member))]
    if not epochs:
        raise ZooFileError(f"member {member} has no committed checkpoint")
    if epoch is None:
        epoch = epochs[-1]
    elif epoch not in epochs:
        raise ZooFileError(f"member {member} has no checkpoint at epoch {epoch}",
                           hint=f"its epochs: {', '.join(map(str, epochs))}")
    return rebuild(zoo, member, epoch)


def _from_export(directory: Path) -> tuple[Any, Any]:
    import torch
    from safetensors.torch import load_file

    from zooscope.kit.models import (
        HEAD_FILE,
        head_description,
        load_tokenizer,
        load_weights,
        skeleton,
    )

    if not (directory / "config.json").exists() or not (directory / "model.safetensors").exists():
        raise ZooFileError(f"{directory} is not an exported checkpoint "
                           "(no config.json or model.safetensors)")
    files = {p.name: p.read_bytes() for p in directory.iterdir()
             if p.is_file() and p.suffix in (".json", ".txt") and p.name != PROVENANCE}
    head = head_description(files, str(directory))
    state: dict[str, torch.Tensor] = {}
    if head["kind"] in ("sequence-classification", "question-answering"):
        if not (directory / HEAD_WEIGHTS).exists():
            raise ZooFileError(f"{directory} lacks {HEAD_WEIGHTS}, the trained task head")
        backbone_prefix = head.get("backbone_prefix", "backbone.")
        head_prefix = head.get("head_prefix", "head.")
        state.update({backbone_prefix + k: v
                      for k, v in load_file(directory / "model.safetensors").items()})
        state.update({head_prefix + k: v for k, v in load_file(directory / HEAD_WEIGHTS).items()})
    elif head["kind"] == "text-to-text":
        prefix = head.get("backbone_prefix", "backbone.")
        state.update({prefix + k: v for k, v in load_file(directory / "model.safetensors").items()})
    else:
        state.update(load_file(directory / "model.safetensors"))
    model = skeleton(files, str(directory))
    load_weights(model, state, str(directory))
    return model, load_tokenizer({k: v for k, v in files.items() if k != HEAD_FILE})
